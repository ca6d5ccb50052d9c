"""One submission graded on a grading host (a Dask worker): data in, data out.

Trusted code. It runs on every grading host, the grader's own machine included (the embedded
LocalCluster), and shares no disk with the batch:

    the batch (grade_submissions.py)               a grading host (a Dask worker process)
    ------------------------------------------     ------------------------------------------------
    stages submitted/<student>/<assignment>/
    request: the staged files, as JSON    ------>  grade_submission(request)
                                                     a throw-away course folder: the files under
                                                     submitted/, a fresh copy of the assignment's
                                                     gradebook (an SQLite file of its own)
                                                     nbgrader's autograde, in this worker's grading
                                                     process: same sandbox, caps and time limits as
                                                     on any host
    apply_results.py, one writer          <------  result: the autograded notebooks, every grade
      into the course's gradebook                    and comment, the flags and the log, as JSON

Requests and results are JSON text (`encode_request`, `read_result`): nothing a student controls
is ever unpickled by the batch, and the batch checks every value it applies.

The grading process is a child of the Dask worker, kept between submissions (it imports nbgrader
and torch once), one per worker thread. It grades one submission at a time and tells the worker
on a private channel (a copy of its stdout that no kernel inherits) when it starts and ends one.
A submission gets SUBMISSION_TIMEOUT_S (+ SUBMISSION_GRACE_S) of wall clock; past it the process
is killed with its sandboxes, and what was finished is returned ("stopped": never graded again).
A process that dies under a submission is replaced and the submission graded once more in it;
twice is "crashed".
"""
import base64
import copy
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import course_config

from .nbgrader_cli import nbgrader_env, validate_metadata_against_a_checked_schema
from .safe_text import one_line
from .sandbox import TASK_PREFIX, close_next_template, grading_submission, start_next_template

ROOT = course_config.COURSE_ROOT
log = logging.getLogger("attention_surgeon.grading_task")


def submission_key(assignment, student):
    """One submission, as the batch names it: 'assignment/student' (a folder name holds no '/')."""
    return f"{assignment}/{student}"


def parse_key(key):
    assignment, _, student = key.partition("/")
    return assignment, student


# ----------------------------------------------------------------------------- the wire


def encode_request(key, grader, files):
    """The task's input: the submission's key, the grader's package digest (a host with another
    package refuses), and {file name: bytes} of what was staged."""
    return json.dumps({"key": key, "grader": grader,
                       "files": {name: base64.b64encode(data).decode() for name, data in files.items()}})


def _decode_request(text):
    request = json.loads(text)
    files = {name: base64.b64decode(data) for name, data in request["files"].items()}
    for name in files:
        if "/" in name or name in ("", ".", "..") or "\0" in name:
            raise ValueError(f"not a file name: {name!r}")
    return request["key"], request["grader"], files


RESULT_FIELDS = {"key": str, "ok": bool, "stopped": bool, "crashed": bool, "out_of_time": bool, "seconds": (int, float),
                 "error": (str, type(None)), "notebooks": dict, "grades": dict, "comments": dict,
                 "flags": list, "log": str, "host": str}


def failed_result(key, error, seconds=0.0, crashed=True):
    """A result for a submission no host could grade (its notebooks then score 0)."""
    return {"key": key, "ok": False, "stopped": False, "crashed": crashed, "out_of_time": False, "seconds": float(seconds),
            "error": error, "notebooks": {}, "grades": {}, "comments": {}, "flags": [], "log": "", "host": ""}


def read_result(text, key):
    """The result of `key`'s task, checked field by field; ValueError if it is anything else."""
    result = json.loads(text)
    if not isinstance(result, dict) or set(result) != set(RESULT_FIELDS):
        raise ValueError("a grading result without the expected fields")
    for name, kind in RESULT_FIELDS.items():
        if not isinstance(result[name], kind) or (kind is not bool and isinstance(result[name], bool)):
            raise ValueError(f"a grading result whose {name} is a {type(result[name]).__name__}")
    if result["key"] != key:
        raise ValueError("a grading result for another submission")
    if not all(isinstance(n, str) and isinstance(t, str) for n, t in result["notebooks"].items()):
        raise ValueError("a grading result with a notebook that is not text")
    for table in ("grades", "comments"):
        for notebook, rows in result[table].items():
            if not isinstance(rows, dict):
                raise ValueError(f"a grading result whose {table} of {notebook!r} is not a table")
            for value in rows.values():
                if table == "comments" and not isinstance(value, (str, type(None))):
                    raise ValueError("a grading result with a comment that is not text")
                if table == "grades" and not (isinstance(value, dict) and set(value) == {"auto_score", "needs_manual_grade"}
                                              and isinstance(value["needs_manual_grade"], bool)
                                              and (value["auto_score"] is None or type(value["auto_score"]) in (int, float))):
                    raise ValueError("a grading result with a grade that is not a score")
    if not all(isinstance(line, str) for line in result["flags"]):
        raise ValueError("a grading result with a flag that is not text")
    return result


# ----------------------------------------------------------------------------- the grading host


def package_digest():
    """What a host grades with: its autograder/, source/, pinned packages and resolved policy (the same
    digest on every host of a batch, or the host refuses)."""
    from .grade_submissions import grader_digest

    return grader_digest(with_gradebook=False)


_digest = None
_local = threading.local()


def grade_submission(request):
    """The Dask task: grade one submission (`encode_request`'s JSON) here; return `read_result`'s JSON."""
    global _digest
    key = "?"
    try:
        key = str(json.loads(request).get("key", "?"))
        key, grader, files = _decode_request(request)
        _digest = _digest or package_digest()
        if grader != _digest:
            return json.dumps(failed_result(key, f"the grading host {os.uname().nodename} has another version of "
                                                 f"the course package (autograder/, source/, requirements.lock or "
                                                 f"policy)"))
        process = getattr(_local, "process", None)
        if process is None:
            process = _local.process = GradingProcess()
        return json.dumps(process.grade(key, files))
    except Exception:  # noqa: BLE001 - the batch gets a result, never a pickled exception
        log.exception("grading %s failed on %s", key, os.uname().nodename)
        return json.dumps(failed_result(key, f"the grading host {os.uname().nodename} failed while grading it"))


def start_grading_process():
    """A Dask task the batch sends each worker as the cluster starts: this worker thread's grading process
    starts now (its imports, the assignments' template gradebooks) while the batch is still preparing,
    not when the first submission comes. Returns at once."""
    process = getattr(_local, "process", None)
    if process is None:
        process = _local.process = GradingProcess()
    process.ensure_started()
    return os.getpid()


def stop_grading_processes():
    """Run on each worker (Dask's client.run) as the batch's embedded cluster closes: each grading process
    is told there is nothing more (its stdin ends), so it ends the kernel template it started for a next
    submission before it exits, rather than being killed with the worker (which would leave that
    template's cgroup behind). Returns how many stopped."""
    stopping = list(_processes)
    for process in stopping:
        process.close()
    return len(stopping)


_processes = weakref.WeakSet()  # this worker's grading processes


class GradingProcess:
    """This worker thread's grading process (`python -m autograder.grading_task`) and its folder."""

    CLOSE_TIMEOUT_S = 30  # to end the template it started for a next submission

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix=f"{TASK_PREFIX}{os.getpid()}-"))
        self.process = None
        self.count = 0
        self.busy = False  # grading a submission
        weakref.finalize(self, _remove, self.folder, [None])
        _processes.add(self)

    def close(self):
        """End the grading process in order: its stdin ends, it stops what it started; killed if it
        has not exited within CLOSE_TIMEOUT_S, or at once while it grades a submission (the batch that
        sent it is stopping)."""
        if self.process is not None and self.process.poll() is None and not self.busy:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=self.CLOSE_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._stop()

    def _start(self):
        log_file = open(self.folder / "grading.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autograder.grading_task", str(self.folder)], cwd=ROOT, env=nbgrader_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, preexec_fn=die_with_parent)
        log_file.close()

    def _stop(self):
        if self.process is not None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass
            self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            self.process = None

    def grade(self, key, files):
        """Grade one submission; its result (a dict of RESULT_FIELDS)."""
        self.busy = True
        try:
            return self._grade(key, files, time.monotonic())
        finally:
            self.busy = False

    def _grade(self, key, files, started):
        assignment, student = parse_key(key)
        first = None
        for attempt in range(2):  # a process that died under the submission: once more in a fresh one
            self.count += 1
            root = self.folder / f"submission-{self.count}"
            target = root / "submitted" / student / assignment
            target.mkdir(parents=True)
            for name, data in files.items():
                (target / name).write_bytes(data)
            try:
                status, seconds = self._run(key, root)
                result = self._collect(key, root, status, seconds)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if status != "died":
                return result
            first = first or result
        first.update(crashed=True, ok=False, seconds=time.monotonic() - started,
                     error="grading crashed twice on this submission")
        return first

    def ensure_started(self):
        if self.process is None or self.process.poll() is not None:
            self._stop()
            self._start()

    def _run(self, key, root):
        """('done'|'stopped'|'died', seconds) of the grading process's run of `key` in `root`."""
        self.ensure_started()
        hard_limit = course_config.SUBMISSION_TIMEOUT_S + course_config.SUBMISSION_GRACE_S
        since = time.monotonic()
        state = {"since": since, "started": False}
        try:
            self.process.stdin.write((json.dumps({"key": key, "root": str(root)}) + "\n").encode())
            self.process.stdin.flush()
            for line in _lines(self.process, lambda: state["since"] + hard_limit):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                if record.get("started") == key and not state["started"]:
                    state.update(started=True, since=time.monotonic())
                elif record.get("finished") == key and state["started"] and type(record.get("ok")) is bool:
                    (root / "ok").write_text(json.dumps([record["ok"], record.get("out_of_time") is True]))
                    return "done", time.monotonic() - state["since"]
        except TimeoutError:
            self._stop()
            return ("stopped" if state["started"] else "died"), time.monotonic() - state["since"]
        except (BrokenPipeError, OSError):
            pass
        self._stop()
        return "died", time.monotonic() - state["since"]

    def _collect(self, key, root, status, seconds):
        """What the run left in `root`: autograded notebooks, their rows of the throw-away gradebook."""
        from nbgrader.api import Gradebook, MissingEntry

        assignment, student = parse_key(key)
        result = failed_result(key, None, seconds, crashed=status == "died")
        ok, out_of_time = json.loads((root / "ok").read_text()) if status == "done" else (False, False)
        result.update(stopped=status == "stopped", host=os.uname().nodename, ok=ok,
                      out_of_time=out_of_time or status == "stopped")
        graded = root / "autograded" / student / assignment
        written = {p.stem: p for p in sorted(graded.glob("*.ipynb"))} if graded.is_dir() else {}
        if written:
            with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
                try:
                    submission = gradebook.find_submission(assignment, student)
                except MissingEntry:
                    submission = None
                for notebook in submission.notebooks if submission else []:
                    # nbgrader writes a notebook before it runs it: one whose every grade is not yet
                    # scored or marked for a TA was still running when the process stopped.
                    if notebook.name not in written or not all(g.auto_score is not None or g.needs_manual_grade
                                                               for g in notebook.grades):
                        continue
                    result["notebooks"][notebook.name] = written[notebook.name].read_text()
                    result["grades"][notebook.name] = {
                        g.name: {"auto_score": g.auto_score, "needs_manual_grade": bool(g.needs_manual_grade)}
                        for g in notebook.grades}
                    result["comments"][notebook.name] = {c.name: c.auto_comment for c in notebook.comments}
        flags = root / "flags" / f"{student}.txt"
        result["flags"] = flags.read_text(errors="replace").splitlines() if flags.exists() else []
        text = root / "log.txt"
        result["log"] = text.read_text(errors="replace") if text.exists() else ""
        if status != "done":  # why the grading process ended: the end of its own log
            tail = (self.folder / "grading.log").read_text(errors="replace")[-4000:]
            result["log"] += "\n[the grading process]\n" + "\n".join(one_line(line, 2000) for line in tail.splitlines())
        return result


def die_with_parent():
    """In a child, before exec: the kernel sends it SIGKILL when its parent dies (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _remove(folder, _):
    shutil.rmtree(folder, ignore_errors=True)


def _lines(process, deadline):
    """The process's stdout, line by line, until it ends or `deadline()` (re-read each time) passes."""
    buffer = b""
    while True:
        left = deadline() - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if not select.select([process.stdout], [], [], min(left, 1.0))[0]:
            continue
        chunk = os.read(process.stdout.fileno(), 1 << 16)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            yield line


# ----------------------------------------------------------------------------- the grading process


def course_directory(root, db_url):
    """The course configuration with its folders in `root` (source/ stays the package's own)."""
    config = copy.deepcopy(course_config.c)  # Config.copy() is shallow: the course's own would change
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.source_directory = str(ROOT / "source")
    config.CourseDirectory.db_url = db_url
    return config


TEMPLATES = ROOT / ".grading" / "templates"  # <package digest>/gradebook-<assignment>.db, on this host


def host_folder(found=[]):  # noqa: B006 - one per process
    """.grading/templates/<package digest>/: what this host computed once for this version of the course
    package (the assignments' template gradebooks, the checks' reference statistics); only the grader
    writes there, and a new version's folder replaces the older ones."""
    if not found:
        found.append(TEMPLATES / package_digest()[:16])
    return found[0]


def assignment_gradebook(assignment, folder, templates={}, remove_older=True):  # noqa: B006 - one cache per process
    """An SQLite gradebook that knows `assignment` (its notebooks, cells and points): made by nbgrader's
    generate_assignment from source/ once per version of the course package on this host (kept in
    .grading/templates/<package digest>/, which only the grader writes), and read from there after.
    A grading process that makes one removes the folders of other versions (`remove_older`)."""
    from nbgrader.apps import NbGraderAPI

    if assignment not in templates:
        path = host_folder() / f"gradebook-{assignment}.db"
        if not path.exists():
            made = folder / f"gradebook-{assignment}.db"
            made.unlink(missing_ok=True)
            (folder / "template").mkdir(exist_ok=True)
            config = course_directory(folder / "template", f"sqlite:///{made}")
            result = NbGraderAPI(config=config).generate_assignment(assignment, force=True, create=True)
            if not result["success"]:
                raise RuntimeError(f"generate_assignment {assignment} failed: {result.get('error')}")
            for older in TEMPLATES.glob("*") if TEMPLATES.is_dir() and remove_older else []:  # earlier versions
                if older != path.parent:
                    shutil.rmtree(older, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            shutil.copyfile(made, partial)
            os.replace(partial, path)  # whole or not at all, whichever process of this host made it first
        templates[assignment] = path
    return templates[assignment]


def prepare_host(folder, remove_older=True):
    """What every submission's grading needs from this version of the course package, made once on this
    host, in host_folder(), or read from there: the assignments' template gradebooks and the hidden
    checks' own references (checks.prepare). A grading process does it before its first submission, and
    `make release` does it too (`remove_older` False: a batch may be grading with another version), so
    that the first batch after a release does not wait for it (8.9 s before the first submission
    started, in a batch on 2 cores). `folder`: a scratch folder of this process. Each part is tried; the
    first failure is raised at the end (what failed is made again where it is needed)."""
    from . import checks

    failures = []

    def attempt(make, *args, **kwargs):
        try:
            make(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the other parts are still made
            failures.append(err)

    for assignment in course_config.ASSIGNMENTS:
        attempt(assignment_gradebook, assignment, folder, remove_older=remove_older)
    attempt(checks.prepare, host_folder())
    if failures:
        raise failures[0]


def grading_process(folder):
    """Grade what the worker asks for, one submission per line of stdin ({"key", "root"}). The kernel template
    of the next submission starts before anything else (sandbox.start_next_template), so its imports are
    made while this process makes its own, and each submission's while the one before is graded."""
    # The worker hears from this process on a private copy of stdout (os.dup makes it close-on-exec);
    # fd 1 itself goes to the log, so a student's kernel (or template), which inherits it, can never forge
    # a record. So this comes before any sandbox starts.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    start_next_template(folder)
    validate_metadata_against_a_checked_schema()
    try:
        _grade_requests(Path(folder), channel)
    finally:
        close_next_template()


def _grade_requests(folder, channel):
    from nbgrader.apps import NbGraderAPI

    from . import time_budget

    try:
        prepare_host(folder)  # before the first submission comes (read, where make release made it)
    except Exception:  # noqa: BLE001 - made again by the submission or check that needs it, which reports it
        log.exception("preparing this grading host")
    from .pipeline import grading_on_cuda

    grading_on_cuda()  # on a CUDA host, the probe of CUDA in the sandbox: before any submission's clock runs
    for line in sys.stdin:
        request = json.loads(line)
        key, root = request["key"], Path(request["root"])
        assignment, student = parse_key(key)
        shutil.copyfile(assignment_gradebook(assignment, folder), root / "gradebook.db")
        config = course_directory(root, f"sqlite:///{root / 'gradebook.db'}")
        config.TrustedChecks.flags_directory = str(root / "flags")
        print(json.dumps({"started": key}), file=channel, flush=True)
        time_budget.start_submission()
        # its notebooks' kernel template (started ahead, with the submission's files now), and the next's
        with grading_submission(root / "submitted" / student / assignment, scratch=folder):
            result = NbGraderAPI(config=config).autograde(assignment, student, force=True, create=True)
        text = (result.get("log") or "") + "\n" + (result.get("error") or "")
        (root / "log.txt").write_text("\n".join(one_line(line, 20_000) for line in text.splitlines()) + "\n",
                                      errors="backslashreplace")
        clock = time_budget.submission_deadline()
        print(json.dumps({"finished": key, "ok": bool(result["success"]), "out_of_time": clock.remaining() <= 0}),
              file=channel, flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    grading_process(sys.argv[1])
