"""`make autograde` (entry point: autograde.py): grade every submission, then feedback and grades.csv.

    submitted/<student>/<assignment>/      as `nbgrader collect` leaves it; only ever read
        | stage: copy; a notebook that cannot be read is replaced by the blank
        |        release version, and the reason is kept for the feedback
    .grading/submitted/<student>/<assignment>/
        | one Dask task per submission (cluster.py): the staged files go to a grading host as
        | data, nbgrader's autograde runs there in a throw-away course (grading_task.py; hidden
        | checks: pipeline.py), the autograded notebooks and grades come back as JSON. Each
        | submission has SUBMISSION_TIMEOUT_S of wall clock (time_budget.py); past it (and a
        | grace) its grading is stopped for good.
        | apply_results.py: this process, the one writer, applies each result as it comes
    gradebook (SQLite or PostgreSQL), autograded/
        | feedback.py's feedback process makes that submission's pages while the batch goes on
        | (nbgrader's generate_feedback for one student); at the end, nbgrader's export plugin here
    feedback/<student>/<assignment>/*.html, grades.csv

The batch's own steps overlap where they can: the Dask cluster starts and the sandbox is checked
(preflight.py) while this process stages the submissions; the first submissions are sent to be graded
before the gradebook learns the assignments (nbgrader's generate_assignment, in this process), but no
result is written, no report or flag of an earlier batch removed, until that and the sandbox check have
succeeded (`prepared`; else the batch stops, its tasks cancelled, and nothing of the course has changed).
Their seconds are printed ("time by step") and kept in .grading/logs/batch_steps.json.

Both assignments are graded: the main one and the bonus (Notebook 4), each submission on its own
(a submission is one student's folder of one assignment), each into its own rows of grades.csv.
Safe to re-run: a submission graded before, unchanged since, by the same grader (`grader_digest`) is
not graded again (--force grades it again); every other one is graded from a fresh copy.
One submission that crashes, hangs or is not even JSON never stops the batch.
"""
import argparse
import copy
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

import nbformat
from nbgrader.utils import is_grade, is_locked, is_solution, is_task

import course_config

from .apply_results import apply_result
from .cluster import grading_client, refusals
from .export import write_grades_csv
from .course_lock import close_in_child
from .feedback import FLAGS, FeedbackPages, drop_flags, load_reports, save_reports, write_problem_notes
from .grading_task import (encode_request, failed_result, grade_submission, package_digest, parse_key, read_result,
                           start_grading_process, submission_key)
from .nbgrader_cli import validate_metadata_against_a_checked_schema
from .safe_text import one_line
from .sandbox import SandboxUnavailable, sweep_leftovers

log = logging.getLogger("attention_surgeon.grade_submissions")
IN_FLIGHT_PER_WORKER = 2  # submissions sent ahead to each worker thread of the cluster
# course_config's settings that decide no grade: where things are on this host, how the batch runs,
# what the report shows. The grader's digest leaves them out, so a grading host with its course
# folder elsewhere grades with the same digest, and a new similarity threshold grades nobody again.
NOT_GRADING_POLICY = ("COURSE_ROOT", "BWRAP", "GRADEBOOK_URL", "DASK_SCHEDULER", "GRADING_PARALLELISM",
                      "SIMILARITY_THRESHOLD", "SIMILARITY_MIN_TOKENS", "STUDENT_GROUP", "ASSIGNMENTS")

ROOT = course_config.COURSE_ROOT
ASSIGNMENT = course_config.ASSIGNMENT
STAGING = ROOT / ".grading"


@dataclass
class SubmissionReport:
    student: str
    assignment: str = ASSIGNMENT
    seconds: float = 0.0
    ok: bool = True
    problems: list = field(default_factory=list)  # shown to the student in their feedback
    staged: str = ""  # digest of what was staged for grading
    checks: str = ""  # digest of the grader (autograder/, source/, course_config.py) that graded it
    out_of_time: bool = False  # its grading ran out of the submission's time (stopped, or its clock ended)

    @property
    def key(self):
        return submission_key(self.assignment, self.student)


def release_notebooks(assignment=ASSIGNMENT):
    return sorted((ROOT / "release" / assignment).glob("*.ipynb"))


def read_problem(nb):
    """Why nbgrader could not use this notebook (a NotebookNode or a path), or None if it reads fine."""
    try:
        if not isinstance(nb, nbformat.NotebookNode):
            nb = nbformat.read(nb, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - any reason to refuse it is reported, none crashes us
        return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    if not isinstance(nb.get("cells"), list):
        return "it has no cells"
    return None


def role(cell):
    """What nbgrader makes of a cell: its type and its nbgrader flags (nbgrader's own helpers)."""
    return (cell.cell_type, is_grade(cell), is_solution(cell), is_locked(cell), is_task(cell))


def source_grade_cells(name, assignment=ASSIGNMENT):
    """{grade_id: cell} of the instructor's notebook `name`: what each grade id must be."""
    nb = nbformat.read(ROOT / "source" / assignment / name, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id")}


def repair_grade_ids(nb, name, assignment=ASSIGNMENT):
    """Cells whose nbgrader metadata nbgrader 0.9 cannot grade (it crashes, and every notebook scores 0):
    a grade id that is not the assignment's, a second cell with the same id, a cell whose role was
    changed (a hidden-check cell turned into a solution cell). Each grade id keeps one cell, the first
    whose role is the instructor's (else the first, given its role back); every other claim becomes an
    ordinary cell. Returns the notes for the student."""
    expected = source_grade_cells(name, assignment)
    claims = {}
    problems = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            continue
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if grade_id not in expected:
            del cell.metadata["nbgrader"]
            problems.append(f"{name}: a cell claimed the grade id {str(grade_id)[:60]!r}, which is not one of this "
                            f"assignment's; it was graded as an ordinary cell." if grade_id else
                            f"{name}: a cell had broken nbgrader metadata; it was graded as an ordinary cell.")
            continue
        claims.setdefault(grade_id, []).append(cell)
    for grade_id, cells in claims.items():
        original = expected[grade_id]
        keep = next((c for c in cells if role(c) == role(original)), cells[0])
        if role(keep) != role(original):
            keep.metadata["nbgrader"] = dict(original.metadata["nbgrader"])
            if keep.cell_type != original.cell_type:
                keep.cell_type = original.cell_type
                if keep.cell_type == "code":
                    keep.outputs, keep.execution_count = [], None
                else:
                    keep.pop("outputs", None)
                    keep.pop("execution_count", None)
            problems.append(f"{name}: the cell '{grade_id}' had been changed into another kind of cell; it was "
                            f"given its role back.")
        for cell in cells:
            if cell is not keep:
                del cell.metadata["nbgrader"]
                problems.append(f"{name}: a second cell claimed to be '{grade_id}'; it was graded as an ordinary cell.")
    return problems


def clear_outputs(nb):
    """Stored outputs are never graded (nbgrader clears them before running): they are not staged."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None


def pick_notebooks(notebooks, released):
    """({release name: submitted path}, notes): a notebook submitted under another name
    ('01_attention_from_scratch-Copy1.ipynb') stands for its release name when it is the only one.
    A release name with several such candidates gets none (and a note)."""
    chosen, notes = {}, []
    by_name = {p.name: p for p in notebooks}
    others = [p for p in notebooks if p.name not in released]
    for name in released:
        if name in by_name:
            chosen[name] = by_name[name]
            continue
        stem = name[:-len(".ipynb")]
        candidates = [p for p in others if p.stem.startswith(stem)]
        if len(candidates) == 1:
            chosen[name] = candidates[0]
            notes.append(f"{candidates[0].name} was graded as {name} (no notebook named {name} was submitted; "
                         f"next time keep the name).")
        elif candidates:
            chosen[name] = None
            notes.append(f"several notebooks could be {name} ({', '.join(p.name for p in candidates)}); none was "
                         f"graded as it, so it was graded as an unanswered notebook: submit exactly one notebook "
                         f"named {name}.")
    used = set(chosen.values()) - {None}
    for path in others:
        if path not in used and not any(path.stem.startswith(n[:-len(".ipynb")]) for n in released):
            notes.append(f"{path.name} is not one of this assignment's notebooks; it was not graded.")
    return chosen, notes


class StagingBudget:
    """What of a submission may still be staged: SUBMISSION_MAX_FILES files, SUBMISSION_MAX_MB in all."""

    def __init__(self):
        self.files, self.bytes = course_config.SUBMISSION_MAX_FILES, course_config.SUBMISSION_MAX_MB << 20
        self.left_out = []

    def take(self, path, size):
        if self.files >= 1 and size <= self.bytes:
            self.files, self.bytes = self.files - 1, self.bytes - size
            return True
        self.left_out.append((path, size))
        return False

    def note(self):
        if not self.left_out:
            return None
        size_mb = sum(size for _, size in self.left_out) / 2**20
        names = ", ".join(p.name for p, _ in self.left_out[:5]) + (", ..." if len(self.left_out) > 5 else "")
        return (f"{len(self.left_out)} file(s) ({size_mb:.1f} MB: {names}) were not graded: a submission may hold "
                f"at most {course_config.SUBMISSION_MAX_FILES} files and {course_config.SUBMISSION_MAX_MB} MB in all. "
                f"Submit only the notebooks and the files they need.")


class OverBudget(Exception):
    """Reading a notebook needed more memory or time than the course allows (NOTEBOOK_PARSE_*)."""


def _vm_size_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) << 10
    return 0


def within_limits(function, *args, memory_mb=None, timeout_s=None):
    """`function(*args)` (JSON in, JSON out) in a forked child whose address space may grow by
    `memory_mb` (NOTEBOOK_PARSE_MEMORY_MB) and which is killed after `timeout_s`
    (NOTEBOOK_PARSE_TIMEOUT_S). Raises OverBudget past either; the exception of `function` as
    ValueError. Whatever a student's notebook costs to read, it costs it there, not in the grader."""
    import resource

    memory = (memory_mb or course_config.NOTEBOOK_PARSE_MEMORY_MB) << 20
    timeout = timeout_s or course_config.NOTEBOOK_PARSE_TIMEOUT_S
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            close_in_child()  # the course's lock stays the batch's alone
            os.close(read_end)
            limit = _vm_size_bytes() + memory
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                reply = {"value": function(*args)}
            except MemoryError:
                reply = {"over": "memory"}
            except RecursionError:
                reply = {"error": "RecursionError: nested too deeply"}
            except Exception as err:  # noqa: BLE001 - a student's file: any failure is a reason to report
                reply = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
            data = json.dumps(reply).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view):]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise OverBudget(f"more than {timeout} s")
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:  # the child died without a word: killed by the memory cap, in C code
        raise OverBudget(f"more than {memory >> 20} MB of memory") from None
    if "over" in reply:
        raise OverBudget(f"more than {memory >> 20} MB of memory")
    if "error" in reply:
        raise ValueError(reply["error"])
    return reply["value"]


def _read_and_clean(path, name, assignment):
    """In the bounded child: the notebook as text to grade (outputs cleared, grade ids repaired), and notes."""
    nb = nbformat.read(path, as_version=4)
    problem = read_problem(nb)
    if problem:
        raise ValueError(problem)
    clear_outputs(nb)
    notes = repair_grade_ids(nb, name, assignment)
    return nbformat.writes(nb), notes


def stage_notebook(path, name, budget, assignment=ASSIGNMENT):
    """The notebook to grade as `name` (outputs cleared, grade ids repaired) and notes; None when it
    cannot be used (the caller stages the blank release version instead). It is read in a child within
    the course's limits (`within_limits`)."""
    size = path.stat().st_size
    if size > course_config.NOTEBOOK_READ_MAX_MB << 20:
        return None, [f"{path.name} is {size / 2**20:.0f} MB; the grader reads notebooks of at most "
                      f"{course_config.NOTEBOOK_READ_MAX_MB} MB, so it was graded as an unanswered notebook."]
    try:
        text, notes = within_limits(_read_and_clean, str(path), name, assignment)
    except OverBudget as over:
        return None, [f"{name} could not be read: reading it took {over} (a notebook of this size needs far "
                      f"less; its JSON holds something else), so it was graded as an unanswered notebook."]
    except ValueError as problem:
        return None, [f"{name} could not be read ({problem}); it was graded as an unanswered notebook."]
    if not budget.take(path, len(text.encode())):
        return None, []  # the budget's note says so
    return text, notes


def stage(student, assignment=ASSIGNMENT):
    """Copy one submission into .grading/: its notebooks (under their release names, outputs cleared,
    grade ids repaired), then its other files, within the limits. What could not be used is replaced
    by the blank release version, and the reason is kept for the student's grading notes."""
    report = SubmissionReport(student, assignment)
    source = ROOT / "submitted" / student / assignment
    target = STAGING / "submitted" / student / assignment
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    files = [p for p in sorted(source.iterdir()) if p.is_file() and not p.is_symlink()]
    released = {r.name: r for r in release_notebooks(assignment)}
    chosen, notes = pick_notebooks([p for p in files if p.suffix == ".ipynb"], released)
    report.problems += notes
    budget = StagingBudget()
    for name, release in released.items():
        text, notes = stage_notebook(chosen[name], name, budget, assignment) if chosen.get(name) else (None, [])
        report.problems += notes
        if text is None:
            shutil.copyfile(release, target / name)  # graded as blank: every answer scores 0
            if name not in chosen:
                report.problems.append(f"{name} was not submitted; it was graded as an unanswered notebook.")
        else:
            (target / name).write_text(text)
    for path in files:
        if path.suffix != ".ipynb" and budget.take(path, path.stat().st_size):
            shutil.copyfile(path, target / path.name)
    if budget.note():
        report.problems.append(budget.note())
    return report


def folder_digest(*paths, root=ROOT, pattern="*", extra="", everything=False):
    """sha256 of every file matching `pattern` under `paths` (names relative to `root`, and contents),
    and of `extra`; hidden files and folders (.ipynb_checkpoints, an editor's) and caches are left out
    unless `everything` (what was staged for grading counts whole)."""
    digest = hashlib.sha256(extra.encode())
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob(pattern))
                   if f.is_file() and (everything or not any(part.startswith(".") or part == "__pycache__"
                                                             for part in f.relative_to(root).parts)))
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def grader_digest(with_gradebook=True):
    """What decides a grade besides the submission: the grader's code, the source notebooks, the pinned
    packages, and the course's policy as this run resolved it (environment overrides included), and
    (`with_gradebook`) the gradebook's URL: a new gradebook holds no grade yet. Every grading host of a
    batch must have the same digest without the URL (grading_task.package_digest)."""
    policy = {name: repr(getattr(course_config, name)) for name in dir(course_config)
              if name.isupper() and not name.startswith("_") and name not in NOT_GRADING_POLICY}
    if with_gradebook:
        policy["db_url"] = course_config.c.CourseDirectory.db_url
    code = folder_digest(ROOT / "autograder", pattern="*.py", extra=json.dumps(policy, sort_keys=True))
    return folder_digest(ROOT / "source", ROOT / "course_config.py", ROOT / "requirements.lock", extra=code)


def already_graded(report, previous):
    """The earlier report of this very submission, graded by this very grader, finished, with its
    autograded notebooks still there: grading it again would change nothing."""
    before = previous.get(report.key)
    return (before is not None and before.get("ok") and before.get("staged") == report.staged
            and before.get("checks") == report.checks
            and (ROOT / "autograded" / report.student / report.assignment).is_dir())


class StepTimes:
    """Wall seconds of each step of the batch, in order ({step: seconds}); `make autograde` prints them
    and keeps them in .grading/logs/batch_steps.json (benchmarks/grading_time.py reads them)."""

    def __init__(self):
        self.seconds = {}

    @contextmanager
    def step(self, name):
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started

    def line(self):
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())

    def save(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.seconds, indent=1))


class BatchStopped(Exception):
    """The batch may not write what it graded (the sandbox does not work on this host, or the gradebook
    could not learn the assignments): `message` for the summary (None when the log said it), and
    make autograde's exit status."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.message, self.status = message, status


class Progress:
    """One plain line per finished submission (no terminal control codes, so a log reads the same):
    done of total, how many did not finish and how many were flagged so far, and the time left at
    the pace so far."""

    def __init__(self, total):
        self.total, self.done, self.unfinished = total, 0, 0
        self.applying = 0.0  # seconds the batch's one writer spent writing results into the gradebook
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def finished(self, key, ok, seconds):
        with self.lock:
            self.done += 1
            self.unfinished += not ok
            elapsed = time.monotonic() - self.started
            left = elapsed / self.done * (self.total - self.done)
            flagged = len(list(FLAGS.glob("*.txt"))) if FLAGS.is_dir() else 0  # students with a flag
            assignment, student = parse_key(key)
            print(f"  [{self.done}/{self.total}] {one_line(student, 40)} {one_line(assignment, 40)} "
                  f"{'ok' if ok else 'NOT FINISHED'} {seconds:.0f} s; so far {self.unfinished} not finished, "
                  f"{flagged} student(s) flagged; about {left:.0f} s left", flush=True)


def forget_flags(assignment, student):
    """Remove what an earlier batch flagged in this submission's notebooks (.grading/flags/<student>.txt
    holds one line per check, starting with its notebook); the student's other assignment keeps its own."""
    drop_flags(student, [f"{nb.stem}: " for nb in release_notebooks(assignment)])


def staged_files(key):
    """{file name: bytes} of what was staged for submission `key`."""
    assignment, student = parse_key(key)
    staged = STAGING / "submitted" / student / assignment
    return {p.name: p.read_bytes() for p in sorted(staged.iterdir()) if p.is_file() and not p.is_symlink()}


# The sandbox check imports torch and starts a sandbox (about 4 s of CPU) while the cluster and the first
# grading process start; at this CPU priority (nice) they come first, and it takes what they leave.
PREFLIGHT_NICENESS = 10


def preflight_here():
    """None when the sandbox works on this host (preflight.py), else the exit status: for the embedded
    cluster only (a cluster of other hosts is asked before it gets a task). In a process of its own, at
    PREFLIGHT_NICENESS, which dies with this one; this process never imports torch. What it finds (the
    process cap, or why grading is refused) goes to stderr, as the other commands' preflight does."""
    if course_config.DASK_SCHEDULER:
        return None
    checked = subprocess.run(["nice", "-n", str(PREFLIGHT_NICENESS), sys.executable, "-m", "autograder.preflight",
                              str(os.getpid())], cwd=ROOT, stdin=subprocess.DEVNULL)
    if checked.returncode == 0:
        return None
    if checked.returncode != 2:  # not its refusal (which says why): it crashed, or was killed
        print(f"GRADING FAILED: the sandbox check (python -m autograder.preflight) ended with status "
              f"{checked.returncode}; its error is above")
    return 2


def start_cluster(stack):
    """grading_client's Dask client, entered into `stack`; every worker's grading process starts at once
    (grading_task.start_grading_process), so that it is ready when the first submission comes."""
    from distributed import fire_and_forget

    client = stack.enter_context(grading_client())
    for address in client.scheduler_info()["workers"]:
        fire_and_forget(client.submit(start_grading_process, key=f"start-grading-process-{uuid.uuid4().hex}",
                                      workers=[address], allow_other_workers=False, pure=False))
    return client


def grade_on_cluster(keys, progress, client, feedback, ready=lambda: None):
    """{key: result} (grading_task.read_result's dicts) for the submissions `keys`, graded by Dask tasks
    on `client`'s cluster; each result is applied to the gradebook (`apply`) as it comes, one at a time,
    by this process, and its feedback pages are made (`feedback`) while the others are graded.
    `ready()` runs once the first submissions are on their way and before any result is applied: what
    the batch must do before it writes (it raises BatchStopped, and then every task is cancelled)."""
    from distributed import as_completed

    grader = package_digest()
    results, waiting = {}, list(keys)
    refused = refusals(client, grader) if course_config.DASK_SCHEDULER else []
    if refused:
        raise SandboxUnavailable("; ".join(refused))
    # A few submissions per worker in flight, the next one sent as one ends: the staged files of a
    # whole course never sit in this process (or the scheduler) at once.
    futures, done = {}, as_completed(loop=client.loop)

    def room():  # asked again as workers join or leave
        return len(futures) < IN_FLIGHT_PER_WORKER * max(1, sum(client.nthreads().values()))

    def submit_next():
        key = waiting.pop(0)
        future = client.submit(grade_submission, encode_request(key, grader, staged_files(key)),
                               key=f"grade-submission-{uuid.uuid4().hex}", pure=False)
        futures[future] = key
        done.add(future)

    while waiting and room():
        submit_next()
    try:
        ready()
    except BaseException:
        client.cancel(list(futures))
        raise
    for future in done:
        key = futures.pop(future)
        try:
            result = read_result(future.result(), key)
        except Exception as err:  # a task that failed on every try (its workers died), or a bad result
            log.error("%s: %s", one_line(key), one_line(f"{type(err).__name__}: {err}", 2000))
            result = failed_result(key, "its grading host stopped working while grading it")
        future.release()
        while waiting and room():
            submit_next()
        results[key] = result
        applying = time.monotonic()
        if apply(key, result):
            feedback.add(*parse_key(key))
        progress.applying += time.monotonic() - applying
        progress.finished(key, result["ok"], result["seconds"])
    return results


def log_path(assignment, student):
    """The grading log of one submission: .grading/logs/<assignment>/<student>.log."""
    return STAGING / "logs" / assignment / f"{student}.log"


def apply(key, result):
    """One submission's result into the gradebook and autograded/, its flags and its log; True when its
    grades were written. A result with no graded notebook (no host could grade it) changes no grade:
    the earlier rows, if any, stay, and the report says why. Nothing that goes wrong here stops the batch."""
    assignment, student = parse_key(key)
    try:
        path = log_path(assignment, student)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result["log"], errors="backslashreplace")
        if not result["notebooks"]:
            result.update(ok=False)
            return False
        if result["flags"]:
            FLAGS.mkdir(parents=True, exist_ok=True)
            with open(FLAGS / f"{student}.txt", "a") as out:
                out.writelines(one_line(line, 2000) + "\n" for line in result["flags"])
        problem = apply_result(result, STAGING / "submitted" / student / assignment, STAGING / "returned")
    except Exception as err:  # noqa: BLE001 - one submission's write must not stop the batch
        log.error("applying %s: %s", one_line(key), one_line(f"{type(err).__name__}: {err}", 2000))
        problem = "its grades could not be written to the gradebook"
    if problem:
        result.update(ok=False, error=problem)
    return not problem


def autograde_all(submissions, steps, cluster, feedback, prepared=lambda: None, force=False):
    """Grade the submissions [(assignment, student)] that changed (all of them with `force`) on the
    cluster (`cluster`: a future of grading_client's Dask client), their feedback pages made as they
    come (`feedback`); return (every report, the keys of those left as they were). `prepared()` finishes
    what must be done before anything is written (it raises BatchStopped): the submissions are already
    being graded meanwhile, and nothing of the course changes before it returns. A submission whose grading
    process died under it was graded once more on its host, and one whose worker died once more on
    another; one that used its whole time limit is not (a second try would only double it)."""
    checks = grader_digest()
    previous = {submission_key(r.get("assignment", ASSIGNMENT), r["student"]): r for r in load_reports()}
    reports = {}
    with steps.step("staging"):
        for assignment, student in submissions:
            report = stage(student, assignment)
            staged = STAGING / "submitted" / student / assignment
            report.staged, report.checks = folder_digest(staged, root=staged, everything=True), checks
            reports[report.key] = report
    unchanged = [] if force else [key for key, report in reports.items() if already_graded(report, previous)]
    fields = set(SubmissionReport.__dataclass_fields__)
    for key in unchanged:  # what was graded before, with its notes
        reports[key] = SubmissionReport(**{k: v for k, v in previous[key].items() if k in fields})
    keys = [key for key in reports if key not in unchanged]

    def ready():
        prepared()
        # Their earlier reports go before the first result is written: a batch killed half-way through
        # one leaves no report saying it was graded, so the next batch grades it again.
        save_reports([r for key, r in previous.items() if key not in keys])
        for key in keys:  # this batch's flags only: a skipped submission keeps its own
            forget_flags(*parse_key(key))
        for key in unchanged:
            assignment, student = parse_key(key)
            if not (ROOT / "feedback" / student / assignment).is_dir():  # its pages were removed since
                feedback.add(assignment, student)

    (STAGING / "logs").mkdir(parents=True, exist_ok=True)
    progress = Progress(len(keys))
    results = {}
    if keys:
        with steps.step("starting the cluster (beyond the steps above)"):
            client = cluster.result()
        with steps.step("grading"):
            results = grade_on_cluster(keys, progress, client, feedback, ready)
    else:
        ready()
    for key in keys:
        report, result = reports[key], results[key]
        report.ok, report.seconds, report.out_of_time = result["ok"], result["seconds"], result["out_of_time"]
        if not result["notebooks"] and not result["stopped"]:
            report.problems.append(f"{result['error'] or 'it could not be graded'}; no grade was written for it "
                                   f"(an earlier one stays) and a TA will look at it.")
        elif result["stopped"]:
            report.problems.append(
                f"grading was stopped after {result['seconds']:.0f} s: a submission may take at most "
                f"{course_config.SUBMISSION_TIMEOUT_S} s to grade (your functions or cells were too slow). "
                f"The notebooks graded before that keep their scores; a TA will look at it.")
        elif result["crashed"]:
            report.problems.append(f"{result['error'] or 'grading crashed'}; a TA will look at it.")
        elif not result["ok"]:
            report.problems.append("the autograder could not finish grading this submission"
                                   + (f" ({result['error']})" if result["error"] else "") + "; a TA will look at it.")
    return list(reports.values()), unchanged, progress.applying


def students(assignment=ASSIGNMENT):
    """Every student with a submitted/<student>/<assignment>/ folder: real folders only. A link there
    (to a classmate's folder, say) is never followed; `linked_submissions` names it for the grader."""
    submitted = ROOT / "submitted"
    if not submitted.is_dir():
        return []
    return sorted(p.name for p in submitted.iterdir() if not p.name.startswith(".") and not p.is_symlink()
                  and one_line(p.name) == p.name and (p / assignment).is_dir() and not (p / assignment).is_symlink())


def ungradable_submissions():
    """[(folder, why)] for what under submitted/ is never graded: a link (a student folder, or its
    assignment folder, pointing at a classmate's, say), or a student id no account can have (it holds
    control characters: nbgrader cannot grade it, and it could forge lines in this summary)."""
    submitted = ROOT / "submitted"
    found = []
    for p in sorted(submitted.iterdir()) if submitted.is_dir() else []:
        if p.is_symlink():
            found.append((f"submitted/{p.name}", "is a symbolic link, not a submission (links are never followed)"))
        elif p.is_dir() and one_line(p.name) != p.name:
            found.append((f"submitted/{p.name}", "is not a student id: it holds control characters (or a backslash)"))
        elif p.is_dir():
            found += [(f"submitted/{p.name}/{a}", "is a symbolic link, not a submission (links are never followed)")
                      for a in course_config.ASSIGNMENTS if (p / a).is_symlink()]
    return found


def submissions():
    """[(assignment, student)] for every submitted/<student>/<assignment>/ of the course's assignments."""
    return [(assignment, student) for assignment in course_config.ASSIGNMENTS for student in students(assignment)]


def generate_assignments(assignments):
    """The gradebook learns each assignment (its notebooks, cells, points and checksums) from source/, as
    `nbgrader generate_assignment --force` teaches it, in this process (nbgrader's log goes to
    .grading/logs/generate_assignment.log). None, or why nbgrader failed."""
    from nbgrader.apps import NbGraderAPI

    from .apply_results import nbgrader_log

    config = copy.deepcopy(course_config.c)  # Config.copy() is shallow: the course's own would change
    config.CourseDirectory.release_directory = str(STAGING / "release")
    (STAGING / "logs").mkdir(parents=True, exist_ok=True)
    with open(STAGING / "logs" / "generate_assignment.log", "w") as log_file:
        for assignment in assignments:
            result = NbGraderAPI(config=config, log=nbgrader_log).generate_assignment(assignment, force=True, create=True)
            log_file.write((result.get("log") or "") + (result.get("error") or ""))
            if not result["success"]:
                return (f"nbgrader generate_assignment {assignment} failed (.grading/logs/generate_assignment.log "
                        f"says why)")
    return None


def arguments(argv):
    parser = argparse.ArgumentParser(prog="make autograde", description="Grade the submissions under submitted/.")
    parser.add_argument("--student", default="", help="only these students (comma-separated ids)")
    parser.add_argument("--assignment", default="", help="only this assignment")
    parser.add_argument("--force", action="store_true", help="grade again what was graded, unchanged, before")
    return parser.parse_args(argv)


def main(argv=()):
    args = arguments(list(argv))
    started = time.monotonic()
    validate_metadata_against_a_checked_schema()  # nbgrader's, as it writes each result (apply_results.py)
    for folder, why in ungradable_submissions():
        print(f"  NOT GRADED: {one_line(folder)} {why}")
    if args.assignment and args.assignment not in course_config.ASSIGNMENTS:
        print(f"no assignment {one_line(args.assignment)!r}: the course has {', '.join(course_config.ASSIGNMENTS)}")
        return 2
    wanted = {s.strip() for s in args.student.split(",") if s.strip()}
    found = submissions()
    for student in sorted(wanted - {s for _, s in found}):
        print(f"  NOT GRADED: {one_line(student)} has no submitted/<student>/<assignment>/ folder")
    everyone = [(a, s) for a, s in found if (not wanted or s in wanted)
                and (not args.assignment or a == args.assignment)]
    if not everyone:
        print(f"nothing to grade: no submitted/<student>/<assignment>/ folders for "
              f"{', '.join(course_config.ASSIGNMENTS)}" + (f" of {one_line(args.student)}" if wanted else ""))
        return 0 if not wanted else 2
    assignments = sorted({assignment for assignment, _ in everyone}, key=course_config.ASSIGNMENTS.index)
    swept = sweep_leftovers()
    if swept:
        print(f"removed {swept} leftover sandbox folder(s) and cgroup(s) of an earlier, interrupted batch")
    steps, clusters = StepTimes(), ExitStack()
    feedback = stopping = None
    with ThreadPoolExecutor(max_workers=3) as pool:
        try:
            # The cluster starts (its workers import the grader) and the sandbox is checked, here for the
            # embedded cluster (a cluster of other hosts is asked before it gets a task), while this
            # process stages the submissions; the feedback process starts with the first page (feedback.py).
            cluster = pool.submit(start_cluster, clusters)
            sandbox_works = pool.submit(preflight_here)
            feedback = FeedbackPages(STAGING / "logs" / "feedback.log")

            def prepared():
                """Once the first submissions are being graded: the gradebook learns the assignments and
                the sandbox check is awaited. Nothing is written before both succeeded."""
                with steps.step("the gradebook learns the assignments, the sandbox checked (beside grading)"):
                    generated = generate_assignments(assignments)
                    refused = sandbox_works.result()
                if generated:
                    raise BatchStopped(f"GRADING FAILED: {one_line(generated, 4000)}")
                if refused:
                    raise BatchStopped(None, refused)  # the preflight's log said why

            try:
                reports, unchanged, applying = autograde_all(everyone, steps, cluster, feedback, prepared,
                                                             force=args.force)
            except BatchStopped as stop:
                if stop.message:
                    print(stop.message)
                return stop.status
            except SandboxUnavailable as err:
                print(f"GRADING REFUSED: {one_line(str(err), 4000)}")
                return 2
            except (OSError, TimeoutError) as err:  # the course's Dask scheduler cannot be reached
                print(f"GRADING FAILED: the Dask cluster could not be used: "
                      f"{one_line(f'{type(err).__name__}: {err}', 2000)}")
                return 2
            cluster.exception()  # it has started (or failed to): nothing is left starting behind us
            stopping = pool.submit(clusters.close)  # while the last pages are made
            graded = {r.key for r in reports}
            save_reports([r for r in load_reports()  # earlier reports of submissions not in this batch stay
                          if submission_key(r.get("assignment", ASSIGNMENT), r["student"]) not in graded]
                         + [asdict(r) for r in reports])
            with steps.step("feedback pages (after the last result)"):
                no_pages = feedback.finish()
                write_problem_notes(load_reports())
            with steps.step("grades.csv"):
                write_grades_csv()
            with steps.step("stopping the cluster (beyond the steps above)"):
                stopping.result()
        finally:
            if not cluster.cancel():
                cluster.exception()
            sandbox_works.cancel() or sandbox_works.exception()
            if stopping is not None:
                stopping.exception()
            else:
                clusters.close()
            if feedback is not None:
                feedback.close()
    elapsed = time.monotonic() - started
    # One line per submission: a student id, a file name or a note a student's code chose is shown inert
    # (control characters written out), so none can forge a line or reach the terminal as a command.
    for r in reports:
        status = "unchanged" if r.key in unchanged else "ok" if r.ok else "NOT FINISHED"
        notes = one_line(" ".join(r.problems), limit=2000)
        print(f"  {one_line(r.student, 60):24s} {r.assignment:24s} {status:12s} {r.seconds:6.1f} s  {notes}")
    for flags in sorted(FLAGS.glob("*.txt")) if FLAGS.is_dir() else []:
        for line in flags.read_text().splitlines():
            print(f"  FLAGGED for a TA: {one_line(flags.stem, 60)}: {one_line(line, 1000)}")
    if unchanged:
        print(f"  {len(unchanged)} submission(s) unchanged since they were graded by this same grader: not graded "
              f"again (FORCE=1 grades them again)")
    where = (f"on the cluster at {course_config.DASK_SCHEDULER}" if course_config.DASK_SCHEDULER else
             f"with {course_config.GRADING_PARALLELISM} at a time")
    for assignment, student in no_pages:
        print(f"  NO FEEDBACK PAGE: {one_line(student, 60)} {one_line(assignment, 40)}: its pages could not be made "
              f"(.grading/logs/feedback.log says why); make feedback makes everyone's again")
    steps.save(STAGING / "logs" / "batch_steps.json")
    print(f"  time by step: {steps.line()}")
    print(f"graded {len(reports) - len(unchanged)} submission(s) in {elapsed:.1f} s {where} (writing them into "
          f"the gradebook took {applying:.1f} s); grades.csv and feedback/ are written")
    print("what the class got wrong, what waits for a TA, which submissions look alike: make report "
          "(report/index.html)")
    return 0


if __name__ == "__main__":  # `make autograde` runs autograder.autograde, which Dask's workers import cheaply
    from .autograde import run

    sys.exit(run(sys.argv[1:]))
