"""nbgrader preprocessors that move the hidden checks out of the student's kernel.

Trusted code. course_config.py puts them into nbgrader's autograde pipeline:

    SandboxedExecute     run the notebook in the student's (sandboxed) kernel,
                         with every hidden-check call left out
    TrustedChecks        decide each hidden check here, against the student's
                         code in a sandboxed worker; the verdict becomes the
                         cell's output (an error output = no points)
    SaveAutoGrades       nbgrader's own: scores from outputs into the gradebook
    RecordPendingChecks  checks that could not be decided here (GPU checks on a
                         host without CUDA) become "needs manual grade"

Plain nbgrader would run the hidden tests inside the student's kernel, where
one student cell can rewrite them. Here that kernel never sees them.
"""
import re

from nbformat.v4 import new_output
from nbgrader.api import Gradebook
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Bool

from .checks import REGISTRY, run_check
from .student import SandboxedStudent

HIDDEN_CHECK_CALL = re.compile(r"""hidden_check\(\s*["']([\w\-]+)["']\s*\)""")
SKIP_TAG = "grader-skip"  # a read-only cell the worker need not run (a slow demo, say)
GPU_TAG = "gpu"


def is_test_cell(cell):
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def hidden_check_name(cell):
    """The check a hidden-check cell names, or None for any other cell."""
    if not is_test_cell(cell):
        return None
    match = HIDDEN_CHECK_CALL.search(cell.source)
    return match.group(1) if match else None


def student_code(nb):
    """The code the worker loads: every code cell but the test cells, in notebook order."""
    return [cell.source for cell in nb.cells
            if cell.cell_type == "code" and not is_test_cell(cell)
            and SKIP_TAG not in cell.metadata.get("tags", [])]


def student_written_code(nb):
    """The cells a student could write in: what the static scan reads."""
    return [cell.source for cell in nb.cells
            if cell.cell_type == "code" and not is_test_cell(cell)
            and not cell.metadata.get("nbgrader", {}).get("locked")]


class SandboxedExecute(Execute):
    """nbgrader's Execute, but hidden-check calls are not run in the student's kernel.

    Their cells run as a comment there; TrustedChecks writes their outputs.
    """

    def preprocess(self, nb, resources):
        originals = {}
        for index, cell in enumerate(nb.cells):
            name = hidden_check_name(cell)
            if name:
                originals[index] = cell.source
                cell.source = f"# hidden check {name!r}: decided by the autograder, outside this kernel"
        try:
            nb, resources = super().preprocess(nb, resources)
        finally:
            for index, source in originals.items():
                nb.cells[index].source = source
        return nb, resources


class TrustedChecks(NbGraderPreprocessor):
    """Decide every hidden check of the notebook outside the student's kernel."""

    cuda_available = Bool(None, allow_none=True, help="Override CUDA detection (None: ask torch).").tag(config=True)

    def preprocess(self, nb, resources):
        calls = [(cell, hidden_check_name(cell)) for cell in nb.cells if hidden_check_name(cell)]
        pending = resources.setdefault("nbgrader", {}).setdefault("pending_checks", {})
        if not calls:
            return nb, resources
        cuda = self.cuda_available
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        with SandboxedStudent(student_code(nb), sources=student_written_code(nb)) as student:
            for cell, name in calls:
                verdict = run_check(name, student, cuda_available=cuda)
                self.log.info("hidden check %s: %s", name, verdict.status)
                cell.outputs = verdict_outputs(name, verdict)
                if verdict.status == "pending":
                    pending[cell.metadata["nbgrader"]["grade_id"]] = verdict.message
        return nb, resources


def verdict_outputs(name, verdict):
    """The cell outputs nbgrader scores: an error output means no points."""
    if verdict.status == "passed":
        return [new_output("stream", name="stdout", text=f"✓ hidden check {name}: passed\n")]
    if verdict.status == "pending":
        return [new_output("stream", name="stdout", text=f"… hidden check {name}: pending. {verdict.message}\n")]
    lines = verdict.message.splitlines() or ["failed"]
    return [new_output("error", ename="HiddenCheckFailed", evalue=f"{name}: {lines[0]}",
                       traceback=[f"HiddenCheckFailed: {name}"] + lines)]


class RecordPendingChecks(NbGraderPreprocessor):
    """Mark undecided checks in the gradebook as needing a grade: neither passed nor failed."""

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        pending = info.get("pending_checks", {})
        if not pending:
            return nb, resources
        with Gradebook(info["db_url"]) as gradebook:
            for grade_id in pending:
                grade = gradebook.find_grade(grade_id, info["notebook"], info["assignment"], info["student"])
                grade.auto_score = None
                grade.needs_manual_grade = True
            gradebook.db.commit()
        return nb, resources


def registered_checks():
    """Every registered check name (used by tests to match notebooks and registry)."""
    return sorted(REGISTRY)
