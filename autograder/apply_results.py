"""The batch's one writer: a graded submission, as its grading host returned it, into the gradebook.

Trusted code, run by the batch (grade_submissions.py) in its own process, one submission at a time,
so two writes to one student's rows never overlap, whatever the gradebook (SQLite or PostgreSQL).

    .grading/returned/<student>/<assignment>/   the returned autograded notebooks (those the host
        |                                        finished; for the others the staged notebook) and
        |                                        the staged files beside them (timestamp.txt included)
        | nbgrader's Autograde converter, without running anything:
        |   sanitize  nbgrader's steps but ClearOutput (the outputs are the verdicts), when a
        |             notebook is the staged one (the host sanitized those it returns)
        |   autograde ApplyReturnedGrades, then nbgrader's AssignLatePenalties
    gradebook (course_config.GRADEBOOK_URL), autograded/<student>/<assignment>/

Applying the same result again writes the same rows (nbgrader's update_or_create_* and the
autograded folder, replaced whole): a task Dask ran twice is applied once, and a batch killed
while applying leaves a submission with no finished report, which the next batch grades again.
"""
import copy
import logging
import shutil
import warnings
from pathlib import Path

from nbgrader.api import Gradebook
from nbgrader.preprocessors import NbGraderPreprocessor
from sqlalchemy.exc import SAWarning
from traitlets import Dict

import course_config

from .safe_text import one_line

log = logging.getLogger("attention_surgeon.apply_results")
# nbgrader's own chatter while applying (every cell it checks) stays out of the batch's output.
nbgrader_log = logging.getLogger("attention_surgeon.apply_results.nbgrader")
nbgrader_log.propagate = False
nbgrader_log.addHandler(logging.NullHandler())

SANITIZE = [
    "nbgrader.preprocessors.DeduplicateIds",
    "nbgrader.preprocessors.OverwriteKernelspec",
    "nbgrader.preprocessors.OverwriteCells",
    "nbgrader.preprocessors.CheckCellMetadata",
]
APPLY = ["autograder.apply_results.ApplyReturnedGrades", "nbgrader.preprocessors.AssignLatePenalties"]


class ApplyReturnedGrades(NbGraderPreprocessor):
    """Each grade and comment of this notebook as the grading host decided it. A score is taken only
    for a grade of this notebook and within its points; a notebook the host did not finish scores 0
    (as nbgrader scores a notebook that was not submitted). A grade a TA has already scored by hand
    keeps asking for a look, as nbgrader's SaveAutoGrades does. A written answer (a markdown grade cell)
    of a notebook the host did not finish waits for a TA instead of scoring 0."""

    grades = Dict(help="{notebook: {grade name: {'auto_score': float or None, 'needs_manual_grade': bool}}}, "
                       "as the grading host returned them.").tag(config=True)
    comments = Dict(help="{notebook: {comment name: text or None}}, as the grading host returned them.").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        name = info["notebook"]
        returned, comments = self.grades.get(name), self.comments.get(name, {})
        with Gradebook(info["db_url"]) as gradebook:
            submitted = gradebook.find_submission_notebook(name, info["assignment"], info["student"])
            for grade in submitted.grades:
                row = (returned or {}).get(grade.name)
                if row is None and grade.cell.cell_type == "markdown":  # a written answer: a TA grades it
                    row = {"auto_score": None, "needs_manual_grade": True}
                score = row["auto_score"] if row else 0.0
                if score is not None and not 0 <= score <= grade.max_score:
                    log.error("%s: a score of %s for %s, which is worth %s points: applied as 0",
                              name, score, grade.name, grade.max_score)
                    score = 0.0
                grade.auto_score = score
                grade.needs_manual_grade = bool(row and row["needs_manual_grade"]) or grade.manual_score is not None
            for comment in submitted.comments:
                if comment.name in comments:
                    comment.auto_comment = comments[comment.name]
            gradebook.db.commit()
        return nb, resources


def apply_result(result, staged, returned_root):
    """Write `result` (grading_task.read_result's dict) for the submission staged in `staged`
    (<...>/<student>/<assignment>/) into the gradebook and autograded/. Returns None when it is
    written, else the reason it is not."""
    from nbgrader.apps import NbGraderAPI

    student, assignment = staged.parent.name, staged.name
    folder = Path(returned_root) / student / assignment
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in sorted(staged.iterdir()):
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, folder / path.name)
    staged_notebooks = {path.stem for path in folder.glob("*.ipynb")}
    for name, text in result["notebooks"].items():
        if name in staged_notebooks:  # only the notebooks the course has
            (folder / f"{name}.ipynb").write_text(text)
    config = copy.deepcopy(course_config.c)  # Config.copy() is shallow: the course's own would change
    config.CourseDirectory.submitted_directory = str(returned_root)
    # The grading host sanitized what it returns (nbgrader's own steps, in its autograde); a staged
    # notebook it did not finish is sanitized here. Skipping the step halves the writer's time.
    config.Autograde.sanitize_preprocessors = [] if staged_notebooks <= set(result["notebooks"]) else SANITIZE
    config.Autograde.autograde_preprocessors = APPLY
    config.ApplyReturnedGrades.grades = {k: v for k, v in result["grades"].items() if k in result["notebooks"]}
    config.ApplyReturnedGrades.comments = result["comments"]
    try:
        with warnings.catch_warnings():  # nbgrader's SQLAlchemy warns when it makes a new submission's rows
            warnings.simplefilter("ignore", SAWarning)
            outcome = NbGraderAPI(config=config, log=nbgrader_log).autograde(assignment, student, force=True, create=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not outcome["success"]:
        log.error("applying %s failed:\n%s", one_line(f"{assignment}/{student}"),
                  one_line(outcome.get("error") or outcome.get("log") or "", 20_000))
        return "its grades could not be written to the gradebook"
    return None
