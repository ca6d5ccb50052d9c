"""`make autograde`: grade every submission, then feedback and grades.csv.

    submitted/<student>/<assignment>/      as `nbgrader collect` leaves it; only ever read
        | stage: copy; a notebook that cannot be read is replaced by the blank
        |        release version, and the reason is kept for the feedback
    .grading/submitted/<student>/<assignment>/
        | nbgrader autograde --student <student>   (one process per student, in parallel;
        |                                           hidden checks: autograder/pipeline.py)
    gradebook.db, autograded/
        | nbgrader generate_feedback, nbgrader export
    feedback/<student>/<assignment>/*.html, grades.csv

Safe to re-run: each student is regraded from a fresh copy (--force).
One submission that crashes, hangs or is not even JSON never stops the batch.
"""
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path

import nbformat

import course_config

from .nbgrader_cli import nbgrader_command, nbgrader_env, run_nbgrader

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


def stage(student):
    """Copy one submission into .grading/, repairing what nbgrader could not read."""
    report = SubmissionReport(student)
    source = ROOT / "submitted" / student / ASSIGNMENT
    target = STAGING / "submitted" / student / ASSIGNMENT
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, target / path.name)
    for release in release_notebooks():
        staged = target / release.name
        if not staged.exists():
            report.problems.append(f"{release.name} was not submitted: it scores 0.")
            continue
        problem = read_problem(staged)
        if problem:
            shutil.copyfile(release, staged)  # graded as blank: every answer scores 0
            report.problems.append(f"{release.name} could not be read ({problem}); it was graded as an "
                                   f"unanswered notebook.")
    return report


def autograde_one(student):
    report = stage(student)
    log_path = STAGING / "logs" / f"{student}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    command = nbgrader_command("autograde", ASSIGNMENT, f"--student={student}", "--force",
                               f"--CourseDirectory.submitted_directory={STAGING / 'submitted'}")
    with open(log_path, "wb") as log:
        try:
            result = subprocess.run(command, cwd=ROOT, env=nbgrader_env(), stdout=log, stderr=subprocess.STDOUT,
                                    timeout=course_config.SUBMISSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
            report.ok = result.returncode == 0
            if not report.ok:
                report.problems.append("the autograder could not finish grading this submission; a TA will "
                                       "look at it (see the grading log).")
        except subprocess.TimeoutExpired:
            report.ok = False
            report.problems.append(f"grading took longer than {course_config.SUBMISSION_TIMEOUT_S} s and was "
                                   f"stopped; a TA will look at it.")
    report.seconds = time.monotonic() - started
    return report


def write_problem_notes(reports):
    """A short page beside each student's feedback that says what went wrong, if anything did."""
    for report in reports:
        note = ROOT / "feedback" / report.student / ASSIGNMENT / "grading_notes.html"
        if report.problems:
            note.parent.mkdir(parents=True, exist_ok=True)
            items = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
            note.write_text(f"<html><body><h2>Grading notes for {escape(report.student)}</h2>"
                            f"<ul>{items}</ul></body></html>\n")
        elif note.exists():
            note.unlink()


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
    # The gradebook learns the assignment (its cells, points, checksums) from source/.
    run_nbgrader("generate_assignment", ASSIGNMENT, "--force",
                 f"--CourseDirectory.release_directory={STAGING / 'release'}", stdout=subprocess.DEVNULL)
    with ThreadPoolExecutor(max_workers=course_config.GRADING_PARALLELISM) as pool:
        reports = list(pool.map(autograde_one, everyone))
    run_nbgrader("generate_feedback", ASSIGNMENT, "--force", check=False,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    write_problem_notes(reports)
    run_nbgrader("export", "--to=grades.csv", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (STAGING / "report.json").write_text(json.dumps([asdict(r) for r in reports], indent=1))
    elapsed = time.monotonic() - started
    for r in reports:
        status = "ok" if r.ok else "NOT FINISHED"
        print(f"  {r.student:24s} {status:12s} {r.seconds:6.1f} s  {' '.join(r.problems)}")
    print(f"graded {len(reports)} submission(s) in {elapsed:.1f} s with {course_config.GRADING_PARALLELISM} "
          f"at a time; grades.csv and feedback/ are written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
