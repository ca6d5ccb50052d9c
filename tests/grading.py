"""Grade a notebook's hidden checks the way TrustedChecks does (without the kernel run)."""
import re

from autograder.checks import run_checks
from autograder.pipeline import graded_answers, hidden_check_name, student_code, student_written_code
from autograder.student import SandboxedStudent
from tests.students import NB1, source_notebook


def check_points(name=NB1):
    """{check name: points} from the source notebook's hidden-check cells."""
    return {hidden_check_name(c): float(c.metadata.nbgrader.points)
            for c in source_notebook(name).cells if hidden_check_name(c)}


def gpu_checks(name=None):
    """The GPU-tagged checks (of notebook `name`, or of every notebook)."""
    from autograder.checks import REGISTRY

    return {check for check, c in REGISTRY.items() if c.gpu and name in (None, c.notebook)}


def cuda_available():
    import torch

    return torch.cuda.is_available()


def decidable_points(name=NB1):
    """{check: points} for the checks this host can decide (GPU checks only with CUDA)."""
    return {c: p for c, p in check_points(name).items() if cuda_available() or c not in gpu_checks()}


def grade_checks(nb, name=NB1, only=None):
    """{check name: Verdict} for every hidden check of notebook `name` (or those in `only`), against `nb`'s code."""
    names = [c for c in check_points(name) if only is None or c in only]
    with SandboxedStudent(student_code(nb), sources=student_written_code(nb), answers=graded_answers(nb)) as student:
        return run_checks(names, student)


def score(verdicts, name=NB1):
    points = check_points(name)
    return sum(points[c] for c, v in verdicts.items() if v.status == "passed")


def replace_in(grade_id, old, new, count=1):
    """A mutation: in the answer of `grade_id`, replace `old` by `new` (which must be there)."""
    def mutate(answers):
        code = answers[grade_id]
        assert old in code, f"{old!r} is not in the answer {grade_id}"
        answers[grade_id] = code.replace(old, new) if count is None else code.replace(old, new, count)
        return answers
    return mutate


def rewrite(grade_id, code):
    """A mutation or variant: the whole answer of `grade_id` is `code`."""
    def mutate(answers):
        answers[grade_id] = code
        return answers
    return mutate


def regex_in(grade_id, pattern, new):
    def mutate(answers):
        code, n = re.subn(pattern, new, answers[grade_id])
        assert n, f"{pattern!r} is not in the answer {grade_id}"
        answers[grade_id] = code
        return answers
    return mutate


def public_test_failure(name, answers, test_id):
    """None when the public test cell `test_id` of notebook `name` passes with `answers` in the solution
    cells, run as a student runs it (the setup, helper and answer cells before it, in order); else what
    it says. Other public tests, hidden cells and cells tagged grader-skip are not run."""
    from tests.students import student_notebook

    namespace = {}
    for cell in student_notebook(answers, name=name).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or "grader-skip" in cell.metadata.get("tags", []):
            continue
        target = meta.get("grade_id") == test_id
        if meta.get("grade") and not meta.get("solution") and not target:
            continue
        try:
            exec(compile(cell.source, meta.get("grade_id", "cell"), "exec"), namespace)  # noqa: S102 - test answers
        except Exception as err:  # noqa: BLE001 - what the student would see
            if target:
                return f"{type(err).__name__}: {err}"
            raise
        if target:
            return None
    raise ValueError(f"{name} has no public test {test_id!r}")
