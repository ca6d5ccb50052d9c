"""Decide some hidden checks again, for every graded submission, without running its notebooks again:
the student's code cells from autograded/ are loaded into a sandboxed worker and only the chosen checks
run. The verdicts go into the autograded notebook and the gradebook; every other grade, and every grade
a TA entered by hand, is left as it is. Then feedback (with the grading notes) and grades.csv again.

    make autograde-gpu           fill_gpu_checks.py: the GPU checks left pending on a host without CUDA
    make regrade CHECK=<name>    regrade.py: one check, after its code was fixed mid-term
"""
import logging
import os
import stat

import nbformat
from nbgrader.api import Gradebook, MissingEntry

import course_config

from .feedback import drop_flags, generate_feedback
from .nbgrader_cli import run_nbgrader
from .checks import REGISTRY
from .pipeline import (ChecksPlan, graded_answers, hidden_check_name, record_flags, student_code,
                       student_written_code, verdict_outputs)
from .safe_text import one_line

log = logging.getLogger(__name__)


def autograded_notebooks():
    """(student, assignment, notebook name, path) of every autograded notebook of the course."""
    autograded = course_config.COURSE_ROOT / "autograded"
    for path in sorted(p for a in course_config.ASSIGNMENTS for p in autograded.glob(f"*/{a}/*.ipynb")):
        yield path.parent.parent.name, path.parent.name, path.stem, path


def with_their_families(nb, names):
    """`names` and every other check of the notebook in a family of one of them: a family is decided
    together (a shortcut found by one check fails, or flags for a TA, every check of its family), so one
    check decided alone could pass where the batch had failed or flagged it. Only `names` are written."""
    families = {REGISTRY[n].family for n in names if n in REGISTRY and REGISTRY[n].family}
    kin = [hidden_check_name(c) for c in nb.cells if hidden_check_name(c) in REGISTRY
           and REGISTRY[hidden_check_name(c)].family in families]
    return list(dict.fromkeys([*names, *kin]))


def redecide(choose, cuda_available):
    """For each autograded notebook, `choose(nb, grades)` -> [(cell, check name, grade)] to decide again
    (grades: {grade id: nbgrader Grade}); returns (decided, still pending, the lines flagged for a TA)."""
    decided = pending = 0
    flagged = []
    with Gradebook(course_config.c.CourseDirectory.db_url) as gradebook:
        for student, assignment, notebook, path in autograded_notebooks():
            try:
                grades = {g.name: g for g in gradebook.find_submission_notebook(notebook, assignment, student).grades}
            except MissingEntry:  # autograded/ holds it, this gradebook does not (another db_url, a removed student)
                log.warning("not in the gradebook, left as it is: %s", one_line(f"{student}/{assignment}/{notebook}"))
                continue
            nb = nbformat.read(path, as_version=4)
            chosen = choose(nb, grades)
            if not chosen:
                continue
            plan = ChecksPlan(with_their_families(nb, [name for _, name, _ in chosen]), student_code(nb),
                              student_written_code(nb), graded_answers(nb), cuda_available)
            verdicts = plan.decide(log)  # no kernel: a worker loads the graded notebook's code
            drop_flags(student, [f"{notebook}: {name}: " for _, name, _ in chosen])  # decided again below
            record_flags({"student": student, "notebook": notebook},
                         {name: verdicts[name].message for _, name, _ in chosen if verdicts[name].flagged})
            for cell, name, grade in chosen:
                verdict = verdicts[name]
                if verdict.flagged:
                    flagged.append(f"{student}: {notebook}: {name}: {verdict.message}")
                cell.outputs = verdict_outputs(name, verdict)
                if verdict.status == "pending":
                    grade.auto_score, grade.needs_manual_grade = None, True
                    pending += 1
                    continue
                grade.auto_score = grade.max_score if verdict.status == "passed" else 0.0
                grade.needs_manual_grade = False
                decided += 1
            gradebook.db.commit()
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
            nbformat.write(nb, path)
            os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # nbgrader leaves it read-only
    generate_feedback(list(course_config.ASSIGNMENTS), quiet=False)  # the grading notes are written back too
    run_nbgrader("export", "--to=grades.csv")
    return decided, pending, flagged
