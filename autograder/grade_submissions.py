"""`make autograde`: grade every submission, then feedback and grades.csv.

    submitted/<student>/<assignment>/      as `nbgrader collect` leaves it; only ever read
        | stage: copy; a notebook that cannot be read is replaced by the blank
        |        release version, and the reason is kept for the feedback
    .grading/submitted/<student>/<assignment>/
        | nbgrader's autograde (NbGraderAPI), students split into one shard per core,
        | each shard one trusted process; hidden checks: autograder/pipeline.py.
        | Each student has SUBMISSION_TIMEOUT_S of wall clock (time_budget.py); past it
        | (and a grace) their grading is stopped for good. A student whose shard
        | died under them is regraded alone, once.
    gradebook.db, autograded/
        | nbgrader generate_feedback, nbgrader export
    feedback/<student>/<assignment>/*.html, grades.csv

Safe to re-run: each student is regraded from a fresh copy (--force).
One submission that crashes, hangs or is not even JSON never stops the batch.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

import course_config

from .feedback import generate_feedback, save_reports
from .nbgrader_cli import nbgrader_env, run_nbgrader
from . import time_budget
from .sandbox import refuse_unless_sandbox_works

ROOT = course_config.COURSE_ROOT
ASSIGNMENT = course_config.ASSIGNMENT
STAGING = ROOT / ".grading"


@dataclass
class SubmissionReport:
    student: str
    seconds: float = 0.0
    ok: bool = True
    problems: list = field(default_factory=list)  # shown to the student in their feedback


def release_notebooks():
    return sorted((ROOT / "release" / ASSIGNMENT).glob("*.ipynb"))


def read_problem(path):
    """Why nbgrader could not use this notebook, or None if it reads fine."""
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - any reason to refuse it is reported, none crashes us
        return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    if not isinstance(nb.get("cells"), list):
        return "it has no cells"
    return None


def repair_grade_ids(path):
    """Duplicated or missing grade_ids crash nbgrader 0.9's OverwriteCells (a KeyError after
    DeduplicateIds): the first cell with a grade_id keeps it, later copies become ordinary cells."""
    nb = nbformat.read(path, as_version=4)
    seen, problems = set(), []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            continue
        grade_id = meta.get("grade_id")
        if not grade_id or grade_id in seen:
            del cell.metadata["nbgrader"]
            problems.append(f"{path.name}: a second cell claimed to be '{grade_id}'; it was graded as an "
                            f"ordinary cell." if grade_id else f"{path.name}: a cell had broken nbgrader metadata; "
                            f"it was graded as an ordinary cell.")
        else:
            seen.add(grade_id)
    if problems:
        nbformat.write(nb, path)
    return problems


def staged_files(source):
    """(files to stage, note or None): notebooks first, then the rest by name, within the course's limits.
    Only plain files at the top of the submission are ever staged (no folders, no links)."""
    limit_bytes = course_config.SUBMISSION_MAX_MB << 20
    files = [p for p in sorted(source.iterdir()) if p.is_file() and not p.is_symlink()]
    files.sort(key=lambda p: p.suffix != ".ipynb")  # stable: notebooks first, each group by name
    chosen, left_out, used = [], [], 0
    for path in files:
        size = path.stat().st_size
        if len(chosen) < course_config.SUBMISSION_MAX_FILES and used + size <= limit_bytes:
            chosen.append(path)
            used += size
        else:
            left_out.append(path)
    if not left_out:
        return chosen, None
    size_mb = sum(p.stat().st_size for p in left_out) / 2**20
    names = ", ".join(p.name for p in left_out[:5]) + (", ..." if len(left_out) > 5 else "")
    return chosen, (f"{len(left_out)} file(s) ({size_mb:.1f} MB: {names}) were not graded: a submission may hold "
                    f"at most {course_config.SUBMISSION_MAX_FILES} files and {course_config.SUBMISSION_MAX_MB} MB "
                    f"in all. Submit only the notebooks and the files they need.")


def stage(student):
    """Copy one submission into .grading/, within the limits, repairing what nbgrader could not read."""
    report = SubmissionReport(student)
    source = ROOT / "submitted" / student / ASSIGNMENT
    target = STAGING / "submitted" / student / ASSIGNMENT
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    files, note = staged_files(source)
    for path in files:
        shutil.copyfile(path, target / path.name)
    if note:
        report.problems.append(note)
    for release in release_notebooks():
        staged = target / release.name
        if not staged.exists():
            shutil.copyfile(release, staged)  # graded as blank: every answer scores 0
            if (source / release.name).exists():
                continue  # left out above, and the note says why
            report.problems.append(f"{release.name} was not submitted; it was graded as an unanswered notebook.")
            continue
        problem = read_problem(staged)
        if problem:
            shutil.copyfile(release, staged)  # graded as blank: every answer scores 0
            report.problems.append(f"{release.name} could not be read ({problem}); it was graded as an "
                                   f"unanswered notebook.")
        else:
            report.problems += repair_grade_ids(staged)
    return report


def grade_shard(students):
    """In this process: nbgrader's autograde for each student, each on its own clock.
    Writes one JSON line when a student starts and one with the result when they are done."""
    from nbgrader.apps import NbGraderAPI

    config = course_config.c.copy()
    config.CourseDirectory.submitted_directory = str(STAGING / "submitted")
    api = NbGraderAPI(config=config)
    for student in students:
        print(json.dumps({"started": student}), flush=True)
        time_budget.start_submission()
        started = time.monotonic()
        result = api.autograde(ASSIGNMENT, student, force=True, create=True)
        log = (STAGING / "logs" / f"{student}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text((result.get("log") or "") + "\n" + (result.get("error") or ""))
        print(json.dumps({"student": student, "ok": bool(result["success"]),
                          "seconds": time.monotonic() - started}), flush=True)


@dataclass
class ShardResult:
    done: dict = field(default_factory=dict)  # student -> (ok, seconds)
    stopped: dict = field(default_factory=dict)  # student -> seconds: used their whole limit, stopped for good


def _lines(process, deadline):
    """The shard's stdout, line by line, until it ends or `deadline()` (re-read each time) passes."""
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


def run_shard(students, log_name):
    """Grade `students` in child processes, each student within SUBMISSION_TIMEOUT_S (+ grace) of wall
    clock. A student past it is stopped, and the shard goes on with the others in a fresh process."""
    result = ShardResult()
    hard_limit = course_config.SUBMISSION_TIMEOUT_S + course_config.SUBMISSION_GRACE_S
    queue = list(students)
    while queue:
        current = {"student": None, "since": time.monotonic()}
        log = open(STAGING / "logs" / f"{log_name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "autograder.grade_submissions", "--shard", *queue],
                                   cwd=ROOT, env=nbgrader_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=log, start_new_session=True)
        try:
            for line in _lines(process, lambda: current["since"] + hard_limit):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "started" in record:
                    current.update(student=record["started"], since=time.monotonic())
                elif "student" in record:
                    result.done[record["student"]] = (bool(record["ok"]), float(record["seconds"]))
                    current["student"] = None
        except TimeoutError:
            if current["student"] is not None:
                result.stopped[current["student"]] = time.monotonic() - current["since"]
        finally:
            _stop(process)
            log.close()
        ended = set(result.done) | set(result.stopped)
        if current["student"] is not None and current["student"] not in ended:
            ended.add(current["student"])  # the process died under this student: graded alone later
        queue = [s for s in queue if s not in ended]
    return result


def _stop(process):
    """End a shard process and everything it started (sandboxes die with their parent)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    process.stdout.close()


def autograde_all(students):
    """Grade everyone, one shard per core. A student whose shard died under them is regraded alone,
    once; a student who used their whole time limit is not (a second try would only double it)."""
    reports = {s: stage(s) for s in students}
    (STAGING / "logs").mkdir(parents=True, exist_ok=True)
    parallel = course_config.GRADING_PARALLELISM
    shards = [students[i::parallel] for i in range(parallel)]
    done, stopped = {}, {}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for result in pool.map(run_shard, [s for s in shards if s], [f"shard-{i}" for i in range(parallel)]):
            done.update(result.done)
            stopped.update(result.stopped)
        crashed = [s for s in students if s not in done and s not in stopped]
        for result in pool.map(run_shard, [[s] for s in crashed], [f"alone-{s}" for s in crashed]):
            done.update(result.done)
            stopped.update(result.stopped)
    for student, report in reports.items():
        ok, seconds = done.get(student, (False, stopped.get(student, 0.0)))
        report.ok, report.seconds = ok, seconds
        if student in stopped:
            report.problems.append(
                f"grading was stopped after {seconds:.0f} s: a submission may take at most "
                f"{course_config.SUBMISSION_TIMEOUT_S} s to grade (your functions or cells were too slow). "
                f"The notebooks graded before that keep their scores; a TA will look at it.")
        elif student not in done:
            report.problems.append("grading crashed twice on this submission; a TA will look at it.")
        elif not ok:
            report.problems.append("the autograder could not finish grading this submission; a TA will look at it.")
    return [reports[s] for s in students]


def students():
    submitted = ROOT / "submitted"
    if not submitted.is_dir():
        return []
    return sorted(p.name for p in submitted.iterdir() if (p / ASSIGNMENT).is_dir() and not p.name.startswith("."))


def main():
    started = time.monotonic()
    everyone = students()
    if not everyone:
        print(f"nothing to grade: no submitted/<student>/{ASSIGNMENT}/ folders")
        return 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        sandbox_works = pool.submit(refuse_unless_sandbox_works)  # meanwhile:
        # the gradebook learns the assignment (its cells, points, checksums) from source/.
        (STAGING / "logs").mkdir(parents=True, exist_ok=True)
        with open(STAGING / "logs" / "generate_assignment.log", "wb") as log:  # nbgrader's chatter stays here
            run_nbgrader("generate_assignment", ASSIGNMENT, "--force",
                         f"--CourseDirectory.release_directory={STAGING / 'release'}", stdout=log, stderr=log)
        refused = sandbox_works.result()
    if refused:
        return refused
    reports = autograde_all(everyone)
    save_reports([asdict(r) for r in reports])
    generate_feedback()
    run_nbgrader("export", "--to=grades.csv", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    for r in reports:
        status = "ok" if r.ok else "NOT FINISHED"
        print(f"  {r.student:24s} {status:12s} {r.seconds:6.1f} s  {' '.join(r.problems)}")
    print(f"graded {len(reports)} submission(s) in {elapsed:.1f} s with {course_config.GRADING_PARALLELISM} "
          f"at a time; grades.csv and feedback/ are written")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--shard"]:
        grade_shard(sys.argv[2:])
    else:
        sys.exit(main())
