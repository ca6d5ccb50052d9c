"""`make feedback`: nbgrader's feedback pages, and beside each the student's grading notes.

nbgrader's generate_feedback --force rewrites feedback/<student>/<assignment>/ from scratch, so
the notes that say why a student got 0 (a notebook that could not be read, a batch that ran out
of time, files left out) would vanish at the next `make feedback`. `make autograde` keeps the
notes in .grading/report.json; every feedback run writes them back.
"""
import json
import logging
import os
import subprocess
import sys
from html import escape

from nbgrader.preprocessors import GetGrades

import course_config

from .nbgrader_cli import run_nbgrader

log = logging.getLogger("attention_surgeon.feedback")
REPORTS = course_config.COURSE_ROOT / ".grading" / "report.json"
FLAGS = course_config.COURSE_ROOT / ".grading" / "flags"  # <student>.txt: checks a TA must decide (pipeline.py)
NOTES_NAME = "grading_notes.html"


def drop_flags(student, prefixes):
    """Remove the lines of .grading/flags/<student>.txt ("<notebook>: <check>: why") that start with one
    of `prefixes`; the file goes when no line is left."""
    path = FLAGS / f"{student}.txt"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if not line.startswith(tuple(prefixes))]
    if kept:
        path.write_text("\n".join(kept) + "\n")
    else:
        path.unlink()


def pending_reason(cell):
    """Why a grade is not decided yet, in the student's words."""
    if cell.cell_type == "markdown" or cell.metadata.nbgrader.get("solution"):
        return "a TA grades it"
    said = " ".join(str(output.get("text", "")) for output in cell.get("outputs", []))
    return "it runs on a grader with CUDA" if "CUDA device" in said else "a TA decides it"


class GetGradesAndPending(GetGrades):
    """nbgrader's GetGrades, and for each grade nobody has decided yet (a written answer before a TA
    grades it, a GPU check on a host without CUDA) `pending` in the cell's nbgrader metadata and its
    points in resources["nbgrader"]["pending_points"]: the feedback page says "pending", not "0 / 4"."""

    def preprocess(self, nb, resources):
        resources.setdefault("nbgrader", {})["pending_points"] = 0.0
        return super().preprocess(nb, resources)

    def _get_score(self, cell, resources):
        super()._get_score(cell, resources)
        grade = self.gradebook.find_grade(cell.metadata["nbgrader"]["grade_id"], self.notebook_id,
                                          self.assignment_id, self.student_id)
        if grade.needs_manual_grade and grade.manual_score is None and grade.auto_score is None:
            cell.metadata.nbgrader["pending"] = pending_reason(cell)
            resources["nbgrader"]["pending_points"] += grade.max_score or 0.0


def save_reports(reports):
    """[{student, problems, ...}] of the last `make autograde`, for every later feedback run."""
    REPORTS.parent.mkdir(parents=True, exist_ok=True)
    partial = REPORTS.with_suffix(".partial")
    partial.write_text(json.dumps(reports, indent=1))
    os.replace(partial, REPORTS)  # whole or not at all: a batch killed while writing leaves the old file


def load_reports():
    try:
        return json.loads(REPORTS.read_text())
    except (OSError, ValueError):
        return []


def write_problem_notes(reports):
    """A short page beside each student's feedback that says what went wrong, if anything did.
    The text is the grader's, but it names the student's files: it is escaped."""
    for report in reports:
        assignment = report.get("assignment", course_config.ASSIGNMENT)
        note = course_config.COURSE_ROOT / "feedback" / report["student"] / assignment / NOTES_NAME
        if report["problems"]:
            note.parent.mkdir(parents=True, exist_ok=True)
            items = "".join(f"<li>{escape(p)}</li>" for p in report["problems"])
            note.write_text(f"<html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'\">"
                            f"</head><body><h2>Grading notes for {escape(report['student'])}</h2>"
                            f"<ul>{items}</ul></body></html>\n")
        elif note.exists():
            note.unlink()


def generate_feedback(assignments=None, quiet=True):
    """nbgrader's feedback for everyone graded in `assignments` (default: those the last `make autograde`
    graded, else the main one), then the notes; the worst exit status of nbgrader."""
    output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if quiet else {}
    reports = load_reports()
    if assignments is None:
        graded = {r.get("assignment", course_config.ASSIGNMENT) for r in reports}
        assignments = [a for a in course_config.ASSIGNMENTS if a in graded] or [course_config.ASSIGNMENT]
    status = 0
    for assignment in assignments:
        result = run_nbgrader("generate_feedback", assignment, "--force", check=False, **output)
        status = status or result.returncode
    write_problem_notes(reports)
    return status


if __name__ == "__main__":
    sys.exit(generate_feedback(quiet=False))
