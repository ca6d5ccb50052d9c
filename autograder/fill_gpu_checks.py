"""`make autograde-gpu`: on a CUDA host, decide the GPU checks that an earlier `make autograde`
left pending, and nothing else.

For every autograded notebook whose GPU-check grades are still pending (no score, flagged
"needs manual grade", no manual score), it runs just those checks against the student's code (in
the sandboxed worker, on CUDA), writes their verdicts into the autograded notebook and the
gradebook, then regenerates feedback (with each student's grading notes, as `make feedback` does) and
grades.csv. Every other grade, and every manual grade,
is left as it is.
"""
import logging
import os
import stat
import sys

import nbformat
import torch
from nbgrader.api import Gradebook

import course_config

from .checks import REGISTRY
from .nbgrader_cli import run_nbgrader
from .feedback import generate_feedback
from .pipeline import (decide_checks, graded_answers, hidden_check_name, student_code, student_written_code,
                       verdict_outputs)
from .preflight import refuse_unless_sandbox_works


log = logging.getLogger(__name__)


def pending_gpu_cells(nb, grades):
    """(cell, check name, grade) for GPU checks whose grade is still pending."""
    found = []
    for cell in nb.cells:
        name = hidden_check_name(cell)
        if not name or name not in REGISTRY or not REGISTRY[name].gpu:
            continue
        grade = grades.get(cell.metadata["nbgrader"]["grade_id"])
        if grade is not None and grade.auto_score is None and grade.manual_score is None:
            found.append((cell, name, grade))
    return found


def main():
    if not torch.cuda.is_available() or course_config.GRADE_ON_CUDA == "off":
        print("no CUDA on this host: the pending GPU checks stay pending; nothing was changed")
        return 0
    refused = refuse_unless_sandbox_works()
    if refused:
        return refused
    filled = 0
    autograded = course_config.COURSE_ROOT / "autograded"
    with Gradebook(course_config.c.CourseDirectory.db_url) as gradebook:
        for path in sorted(p for a in course_config.ASSIGNMENTS for p in autograded.glob(f"*/{a}/*.ipynb")):
            student, assignment, notebook = path.parent.parent.name, path.parent.name, path.stem
            grades = {g.name: g for g in gradebook.find_submission_notebook(notebook, assignment, student).grades}
            nb = nbformat.read(path, as_version=4)
            pending = pending_gpu_cells(nb, grades)
            if not pending:
                continue
            verdicts = decide_checks(student_code(nb), student_written_code(nb), graded_answers(nb),
                                     [n for _, n, _ in pending], True, log)
            for cell, name, grade in pending:
                verdict = verdicts[name]
                if verdict.status == "pending":
                    continue
                cell.outputs = verdict_outputs(name, verdict)
                grade.auto_score = grade.max_score if verdict.status == "passed" else 0.0
                grade.needs_manual_grade = False
                filled += 1
            gradebook.db.commit()
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
            nbformat.write(nb, path)
            os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # nbgrader leaves it read-only
    generate_feedback(list(course_config.ASSIGNMENTS), quiet=False)  # the grading notes are written back too
    run_nbgrader("export", "--to=grades.csv")
    print(f"filled in {filled} pending GPU check(s)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the preflight says which process cap holds
    sys.exit(main())
