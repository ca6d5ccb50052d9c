"""End to end, as users do it: `make release`, students fill in the release notebook, `make autograde`.

One batch holds honest, buggy, blank and broken submissions and one that patches
the comparison functions (the other attacks are in test_hostile.py); grades.csv
must hold the expected scores and every feedback page must show verdicts, never
check code.
"""
import re
from html import unescape

import pytest
from nbgrader.api import Gradebook

from tests.conftest import copy_course, make, read_grades, tree_digest
from tests.grading import check_points, cuda_available, decidable_points, gpu_checks
from tests.students import NB1, reference_answers, student_notebook, write_submission

NO_SCALE = ("scores = scores / math.sqrt(Q.shape[-1])", "scores = scores")
CHEAT_PATCHES = """
import numpy, torch, torch.testing
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
numpy.allclose = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)
"""
# The checks a missing 1/sqrt(d_k) fails (every check that compares values against the reference).
NO_SCALE_FAILS = ["attention_matches_reference", "attention_bool_masks", "attention_float_masks",
                  "attention_fully_masked_rows", "attention_empty_sequences", "attention_keeps_dtype_and_inputs",
                  "attention_gradients"]


def submissions():
    answers = reference_answers()
    no_scale = student_notebook(answers, mutate=lambda code: code.replace(*NO_SCALE))
    patched = student_notebook(answers, mutate=lambda code: code.replace(*NO_SCALE),
                               extra_cells=[("setup", CHEAT_PATCHES)])
    return {
        "correct": student_notebook(answers),
        "no_scale": no_scale,
        "blank": student_notebook({}),
        "broken_json": '{"cells": [ this is not json',
        "patches_comparisons": patched,
    }


@pytest.fixture(scope="module")
def graded_course(tmp_path_factory):
    root = copy_course(tmp_path_factory.mktemp("e2e"))
    make(root, "release")
    for student, nb in submissions().items():
        write_submission(root, student, {NB1: nb})
    before = tree_digest(root / "submitted")
    first = make(root, "autograde")
    return root, before, first


def test_grades_csv_holds_the_expected_scores(graded_course):
    root, _, _ = graded_course
    full = sum(decidable_points().values())
    no_scale = full - sum(check_points()[c] for c in NO_SCALE_FAILS)
    assert read_grades(root) == {
        "correct": full,
        "no_scale": no_scale,
        "blank": 0.0,
        "broken_json": 0.0,
        "patches_comparisons": no_scale,  # patching comparisons changes nothing: no_scale's score exactly
    }


def test_every_check_is_recorded_in_the_gradebook(graded_course):
    root, _, _ = graded_course
    points = check_points()
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        notebook = gb.find_submission_notebook(NB1, "attention_surgeon", "correct")
        scores = {g.name: g.auto_score for g in notebook.grades}
        failed = {g.name: g.auto_score for g in gb.find_submission_notebook(NB1, "attention_surgeon", "no_scale").grades}
    for check, worth in decidable_points().items():
        assert scores[f"check_{check}"] == worth
        assert failed[f"check_{check}"] == (0.0 if check in NO_SCALE_FAILS else worth)


@pytest.mark.skipif(cuda_available(), reason="the pending path is for graders without CUDA")
def test_gpu_checks_are_pending_without_cuda(graded_course):
    """Neither passed nor failed: no score, flagged for grading, and the feedback says why."""
    root, _, _ = graded_course
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for student in ("correct", "no_scale"):
            grades = {g.name: g for g in gb.find_submission_notebook(NB1, "attention_surgeon", student).grades}
            for check in gpu_checks():
                grade = grades[f"check_{check}"]
                assert grade.auto_score is None and grade.manual_score is None and grade.needs_manual_grade
    _, text = feedback_text(root, "correct")
    for check in gpu_checks():
        assert f"hidden check {check}: pending" in text
    assert "needs a CUDA device" in text


def feedback_text(root, student):
    html = (root / "feedback" / student / "attention_surgeon" / f"{NB1}.html").read_text()
    return html, unescape(re.sub(r"<[^>]+>", "", html))


def test_feedback_shows_counterexamples_and_no_check_code(graded_course):
    root, _, _ = graded_course
    html, text = feedback_text(root, "no_scale")
    assert "HiddenCheckFailed: attention_matches_reference" in text
    assert re.search(r"attention\(Q\[\d+(, \d+)*\], K\[", text), "the failing input, in the student's terms"
    assert re.search(r"returned weights\[[\d, ]+\] = [-\d.e]+; expected", text)
    check_sources = [p.read_text() for p in (root / "autograder" / "checks").glob("*.py")]
    public = (root / "release" / "attention_surgeon" / f"{NB1}.ipynb").read_text()  # students have these lines
    for source in check_sources:
        for line in source.splitlines():
            line = line.strip()
            if (len(line) > 30 and not line.startswith(("#", '"', "'")) and "hidden_check(" not in line
                    and line not in public):
                assert line not in text, f"check code in feedback: {line}"
    grader_only = ("reference_with_grads", "expect_matches_reference", "given_cases", "refuse_ready_made_attention",
                   "def attention_gradients", "tolerance_for(")
    for student in ("correct", "patches_comparisons", "no_scale"):
        _, text = feedback_text(root, student)
        assert not [name for name in grader_only if name in text]


def test_broken_notebook_gets_a_clear_note(graded_course):
    root, _, _ = graded_course
    note = (root / "feedback" / "broken_json" / "attention_surgeon" / "grading_notes.html").read_text()
    assert "could not be read" in note and "NotJSONError" in note


def test_rerun_is_safe_and_submitted_is_never_touched(graded_course):
    root, before, _ = graded_course
    grades = read_grades(root)
    assert tree_digest(root / "submitted") == before
    make(root, "autograde")
    assert read_grades(root) == grades
    assert tree_digest(root / "submitted") == before
