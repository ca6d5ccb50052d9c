"""End to end, as users do it: `make release`, students fill in the release notebook, `make autograde`.

One batch holds honest, buggy, blank and broken submissions and one that patches
the comparison functions (the other attacks are in test_hostile.py); grades.csv
must hold the expected scores and every feedback page must show verdicts, never
check code.
"""
import json
import re
from html import unescape

import nbformat
import pytest
from nbgrader.api import Gradebook

import course_config
from autograder.checks import REGISTRY

from tests.conftest import copy_course, grade_rows, make, read_grades, tree_digest
from tests.grading import check_points, cuda_available, decidable_points, gpu_checks
from tests.students import (BONUS, NB1, NB2, NB3, NB4, NOTEBOOKS, reference_answers, student_notebook,
                            write_submission)

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


# Notebook 3's written answers, as a student would type them (a TA grades them).
WRITTEN_ANSWERS = {
    "answer_why_scores_grow": "Each score sums d_k products of unit variance, so its variance is d_k ...",
    "answer_why_minus_inf": "exp(-inf) = 0, so a blocked key gets no weight; a 0 score would still get weight.",
    "answer_why_d_v_columns": "QK^T contracts over d_k; [L, S] @ [S, d_v] = [L, d_v].",
    "answer_output_rank": "No: rank(AB) <= min(rank(A), rank(B)), the rows are averages of value rows.",
    "answer_honest_test": "The cheaters copy the next character they can see; with the causal mask they cannot.",
}
TRANSPOSED_HEATMAP = ("ax.imshow(weights, cmap=COLOR_MAP)", "ax.imshow(weights.T, cmap=COLOR_MAP)")


def submissions():
    """{student: {notebook: nb}}. Students who leave a notebook out have it graded as unanswered."""
    answers = reference_answers()
    no_scale = student_notebook(answers, mutate=lambda code: code.replace(*NO_SCALE))
    patched = student_notebook(answers, mutate=lambda code: code.replace(*NO_SCALE),
                               extra_cells=[("setup", CHEAT_PATCHES)])
    everything = {name: student_notebook(reference_answers(name), name=name) for name in NOTEBOOKS}
    everything[NB3] = student_notebook({**reference_answers(NB3), **WRITTEN_ANSWERS}, name=NB3)
    transposed = student_notebook(reference_answers(NB2), name=NB2,
                                  mutate=lambda code: code.replace(*TRANSPOSED_HEATMAP))
    return {
        "correct": everything,
        "no_scale": {NB1: no_scale, NB2: transposed},
        "blank": {NB1: student_notebook({})},
        "broken_json": {NB1: '{"cells": [ this is not json'},
        "patches_comparisons": {NB1: patched},
        "oversized": {NB1: student_notebook(answers)},  # plus many files and a big one: see graded_course
    }


# Short staging limits for this batch (the notebooks are about 50 KB each).
STAGING_LIMITS = {"ATTENTION_SURGEON_SUBMISSION_MAX_MB": "5", "ATTENTION_SURGEON_SUBMISSION_MAX_FILES": "20"}


def add_clutter(folder):
    """What the 'unbounded submission' attack sent: a big file and many small ones."""
    with open(folder / "big.bin", "wb") as f:
        f.truncate(12 << 20)  # 12 MB (sparse: cheap to make, as large to copy)
    for i in range(40):
        (folder / f"small{i:03d}.txt").write_text("x" * 1000)


@pytest.fixture(scope="module")
def graded_course(tmp_path_factory):
    root = copy_course(tmp_path_factory.mktemp("e2e"))
    make(root, "release")
    for student, notebooks in submissions().items():
        folder = write_submission(root, student, notebooks)
        if student == "oversized":
            add_clutter(folder)
    # The bonus (Notebook 4): one student does it; everyone else skips it.
    write_submission(root, "correct", {NB4: student_notebook(reference_answers(NB4), name=NB4)}, assignment=BONUS)
    before = tree_digest(root / "submitted")
    first = make(root, "autograde", env=STAGING_LIMITS)
    return root, before, first


def test_grades_csv_holds_the_expected_scores(graded_course):
    root, _, _ = graded_course
    full = {name: sum(decidable_points(name).values()) for name in NOTEBOOKS}
    no_scale = full[NB1] - sum(check_points()[c] for c in NO_SCALE_FAILS)
    # Reassigning torch.allclose (any imported module's attribute) is a route around the worker's own
    # measures: the attention checks no_scale passes wait for a TA instead of counting (flagged).
    flagged = sum(p for c, p in decidable_points(NB1).items()
                  if REGISTRY[c].family == "attention" and c not in NO_SCALE_FAILS)
    assert flagged > 0
    assert read_grades(root) == {
        "correct": sum(full.values()),  # the written answers wait for a TA: no points yet
        "no_scale": no_scale + full[NB2] - check_points(NB2)["heatmap_image_is_the_weights"],
        "blank": 0.0,
        "broken_json": 0.0,
        "patches_comparisons": no_scale - flagged,  # patching comparisons gains nothing; a TA decides the rest
        "oversized": full[NB1],  # its notebook is staged first; the clutter is left out
    }


def test_the_bonus_is_graded_apart_and_skipping_it_costs_nothing(graded_course):
    """Notebook 4 is its own assignment: its rows of grades.csv hold its points; the main rows (checked
    exactly in test_grades_csv_holds_the_expected_scores) are the same whether a student did it or not."""
    root, _, _ = graded_course
    bonus = read_grades(root, BONUS)
    assert bonus["correct"] == sum(decidable_points(NB4).values()) > 0
    assert {student: score for student, score in bonus.items() if student != "correct"} == {
        student: 0.0 for student in read_grades(root) if student != "correct"}
    page = (root / "feedback" / "correct" / BONUS / f"{NB4}.html").read_text()
    assert f"(Score: {bonus['correct']:.1f} / " in page
    assert not (root / "feedback" / "no_scale" / BONUS).exists()  # nothing was submitted, nothing graded


def test_written_answers_wait_for_a_ta_in_the_gradebook(graded_course):
    """Notebook 3's answer cells need manual grading when answered; unanswered ones score 0 without a TA."""
    root, _, _ = graded_course
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        answered = {g.name: g for g in gb.find_submission_notebook(NB3, "attention_surgeon", "correct").grades}
        skipped = {g.name: g for g in gb.find_submission_notebook(NB3, "attention_surgeon", "blank").grades}
        for grade_id in WRITTEN_ANSWERS:
            assert answered[grade_id].needs_manual_grade and answered[grade_id].auto_score is None
            assert answered[grade_id].max_score == 3
            assert not skipped[grade_id].needs_manual_grade and skipped[grade_id].score == 0
        submission = gb.find_submission("attention_surgeon", "correct")
        assert submission.needs_manual_grade
        assert submission.max_score == sum(sum(check_points(n).values()) for n in NOTEBOOKS) + 3 * len(WRITTEN_ANSWERS)


def test_every_check_is_recorded_in_the_gradebook(graded_course):
    root, _, _ = graded_course
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
            for check in gpu_checks(NB1):
                grade = grades[f"check_{check}"]
                assert grade.auto_score is None and grade.manual_score is None and grade.needs_manual_grade
    _, text = feedback_text(root, "correct")
    for check in gpu_checks(NB1):
        assert f"hidden check {check}: pending" in text
    assert "needs a CUDA device" in text
    # Shown as pending, never as a zero: the page's summary and each cell's heading say so.
    gpu_points = sum(check_points()[c] for c in gpu_checks(NB1))
    assert f"{gpu_points:.1f} points not decided yet" in text
    assert "decided later (it runs on a grader with CUDA)" in text
    assert not re.search(r"(failed|Score): 0\.0 / (4|2)\.0\)?\s*\(Top\)", text)


def test_grades_csv_says_what_is_pending(graded_course):
    """Before: max_score 124 and no marker. Now pending_points and the pending grade ids."""
    root, _, _ = graded_course
    rows = grade_rows(root)
    gpu = {f"check_{c}" for c in gpu_checks(NB1)} if not cuda_available() else set()
    gpu_points = sum(check_points()[c] for c in gpu_checks(NB1)) if not cuda_available() else 0.0
    correct = rows["correct"]
    assert set(correct["pending"].split(";")) == gpu | set(WRITTEN_ANSWERS)
    assert float(correct["pending_points"]) == gpu_points + 3 * len(WRITTEN_ANSWERS)
    assert set(filter(None, rows["blank"]["pending"].split(";"))) == set(), "the blank notebook 1 is not run"


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
    public = "\n".join(cell.source for path in (root / "release").glob("*/*.ipynb")  # students have these lines
                       for cell in nbformat.read(path, as_version=4).cells)
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
    make(root, "autograde", env=STAGING_LIMITS)
    assert read_grades(root) == grades
    assert tree_digest(root / "submitted") == before


def test_a_notebook_left_out_is_graded_without_being_run(graded_course):
    """`blank` submitted only Notebook 1: Notebook 2 is graded as the release version, and not run."""
    import nbformat

    root, _, _ = graded_course
    nb = nbformat.read(root / "autograded" / "blank" / "attention_surgeon" / f"{NB2}.ipynb", as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors[0].ename == "NotRun"
    hidden = [o for o in errors if o.ename == "HiddenCheckFailed"]
    assert len(hidden) == len(check_points(NB2)) and all("was not run" in o.evalue or "not run" in "".join(o.traceback)
                                                         for o in hidden)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type in ("stream", "display_data")
                and "public test passed" in o.get("text", "")]
    note = (root / "feedback" / "blank" / "attention_surgeon" / "grading_notes.html").read_text()
    assert f"{NB2}.ipynb was not submitted" in note


def test_an_oversized_submission_is_staged_within_the_limits(graded_course):
    """Before: a 1 GB file and 20,000 small ones were copied three times. Now the notebooks come
    first, then other files until SUBMISSION_MAX_FILES or SUBMISSION_MAX_MB would be passed."""
    root, _, _ = graded_course
    assert read_grades(root)["oversized"] == sum(decidable_points(NB1).values())
    for folder in (root / ".grading" / "submitted" / "oversized" / "attention_surgeon",
                   root / "autograded" / "oversized" / "attention_surgeon"):
        # the student's own files (the release's files are staged too: blank notebooks, make_corpus.py)
        released = {p.name for p in (root / "release" / "attention_surgeon").iterdir()}
        files = [p for p in folder.iterdir() if p.is_file() and p.name not in released]
        assert len(files) <= 20 and sum(p.stat().st_size for p in files) <= 5 << 20
        assert not (folder / "big.bin").exists()
    note = (root / "feedback" / "oversized" / "attention_surgeon" / "grading_notes.html").read_text()
    assert "were not graded: a submission may hold at most 20 files and 5 MB" in note and "big.bin" in note


def test_make_feedback_keeps_the_grading_notes(graded_course):
    """Before: nbgrader's generate_feedback --force deleted grading_notes.html, the one page that says why."""
    root, _, _ = graded_course
    make(root, "feedback")
    note = root / "feedback" / "broken_json" / "attention_surgeon" / "grading_notes.html"
    assert "could not be read" in note.read_text()
    assert (root / "feedback" / "correct" / "attention_surgeon" / f"{NB1}.html").exists()


def test_the_batch_makes_each_graded_submissions_pages_and_says_where_its_time_went(graded_course):
    """Feedback pages are made per submission as results arrive (autograder/feedback.py); the batch's
    own steps are timed (printed, and kept for benchmarks/grading_time.py); the grading host keeps one
    template gradebook per assignment for this version of the package."""
    root, _, first = graded_course
    for student in submissions():
        assert (root / "feedback" / student / "attention_surgeon" / f"{NB1}.html").is_file(), student
    assert (root / "feedback" / "correct" / BONUS / f"{NB4}.html").is_file()
    assert not (root / "feedback" / "blank" / BONUS).exists(), "no page for a submission nobody made"
    assert "NO FEEDBACK PAGE" not in first.stdout
    line = re.search(r"^  time by step: (.*)$", first.stdout, re.M)
    assert line, first.stdout[-2000:]
    for step in ("grading", "feedback pages \\(after the last result\\)", "grades\\.csv"):
        assert re.search(rf"(^|, ){step} \d+\.\d s(, |$)", line[1]), (step, line[1])
    steps = json.loads((root / ".grading" / "logs" / "batch_steps.json").read_text())  # of the last batch here
    assert steps and all(isinstance(seconds, float) and seconds >= 0 for seconds in steps.values()), steps
    templates = sorted(p.name for p in (root / ".grading" / "templates").glob("*/gradebook-*.db"))
    assert templates == [f"gradebook-{a}.db" for a in sorted(course_config.ASSIGNMENTS)], templates
