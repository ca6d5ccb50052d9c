"""The instructor's report (`make report`): counts of what was planted, similarity, a page that runs nothing.

A batch of ten students with known faults, graded by `make autograde` as usual: three forget the
1/sqrt(d_k) scale, two fill blocked scores with -1e9 (fully masked rows then average the values),
one hostile student's attention raises an error whose message is HTML with a script, two correct
students handed in the same attention (one renamed its variables and rewrote the comments), and two
only ran the release notebook. The report must count exactly those, per check and rule.
"""
import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from autograder.checks import REGISTRY
from autograder.checks.rules import RULES
from autograder.report import similar_in, solution_cells
from tests.conftest import copy_course, make, read_grades
from tests.students import NB1, reference_answers, release_notebook, student_notebook, write_submission
from tests.test_browser_safety import CHROMIUM, Browser, payload
from tests.test_fairness import CORRECT_VARIANTS, LOOP_ATTENTION

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / ".figures" / "report"
NO_SCALE = ("scores = scores / math.sqrt(Q.shape[-1])", "scores = scores")
MINUS_1E9 = ("masked_fill(~mask, NEG_INF)", "masked_fill(~mask, -1e9)")
SCRIPT = f"<img src=x onerror={json.dumps(payload('report'))}><script>{payload('report-script')}</script>"
RENAMED = (LOOP_ATTENTION.replace("rows_out", "outs_of_row").replace("all_weights", "every_weight")
           .replace("qs", "queries").replace('"""Plain Python loops over every batch item and every query row."""',
                                             "# my own loops, one row at a time"))
PLANTED = {"no_scale_1": "scale", "no_scale_2": "scale", "no_scale_3": "scale", "fill_1": "fill", "fill_2": "fill",
           "hostile": "hostile", "loops": "correct", "loops_renamed": "correct", "release_1": "release",
           "release_2": "release"}


def answers_of(kind):
    answers = reference_answers()
    if kind == "scale":
        return {k: v.replace(*NO_SCALE) for k, v in answers.items()}
    if kind == "fill":
        return {k: v.replace(*MINUS_1E9) for k, v in answers.items()}
    if kind == "hostile":
        return {**answers, "attention": f"def attention(Q, K, V, mask=None, scale=True):\n    raise ValueError({SCRIPT!r})\n"}
    return answers


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    course = copy_course(tmp_path_factory.mktemp("report"))
    make(course, "release")
    for student, kind in PLANTED.items():
        if kind == "release":
            notebook = release_notebook(NB1)
        elif student == "loops_renamed":
            notebook = student_notebook({**answers_of(kind), "attention": RENAMED})
        elif student == "loops":
            notebook = student_notebook({**answers_of(kind), "attention": LOOP_ATTENTION})
        else:
            notebook = student_notebook(answers_of(kind))
        write_submission(course, student, {NB1: notebook})
    output = make(course, "autograde", env={"ATTENTION_SURGEON_GRADING_PARALLELISM": "2"}).stdout
    assert "make report" in output, "make autograde points at the report"
    make(course, "report")
    data = json.loads((course / "report" / "report.json").read_text())["attention_surgeon"]
    return course, data


def students_by_rule(course, check):
    with open(course / "report" / "checks.csv", newline="") as f:
        return {row["rule"]: sorted(row["students"].split()) for row in csv.DictReader(f) if row["check"] == check}


def of_kind(*kinds):
    return sorted(s for s, k in PLANTED.items() if k in kinds)


def test_per_rule_counts_are_what_was_planted(reported):
    course, data = reported
    assert students_by_rule(course, "attention_matches_reference") == {
        "scaled-by-sqrt-dk": of_kind("scale"), "runs-without-error": of_kind("hostile"),
        "answered": of_kind("release")}
    assert students_by_rule(course, "attention_fully_masked_rows") == {
        "fully-masked-rows-zero": of_kind("fill"), "scaled-by-sqrt-dk": of_kind("scale"),
        "runs-without-error": of_kind("hostile"), "answered": of_kind("release")}
    check = data["checks"]["attention_fully_masked_rows"]
    assert check["passed"] == len(of_kind("correct")) and check["decided"] == len(PLANTED)
    assert data["checks"]["attention_matches_reference"]["passed"] == len(of_kind("correct", "fill"))
    # The masks were right in every answered submission: nothing broken there.
    assert data["checks"]["causal_mask"]["rules"] == {"answered": 2}


def test_the_histogram_counts_the_grades(reported):
    course, data = reported
    grades = read_grades(course)
    assert data["totals"] == pytest.approx(grades)
    counts, edges = data["histogram"]
    assert counts == np.histogram(list(grades.values()), bins=edges)[0].tolist()
    assert sum(counts) == len(PLANTED)


def test_discrimination_and_the_ta_queue(reported):
    _, data = reported
    # The scale check separates: those who pass it score more on the rest too.
    assert data["checks"]["attention_matches_reference"]["discrimination"] > 0.3
    gpu = [kind for kind in data["queue"] if kind.startswith("GPU checks")]
    assert len(gpu) == 1 and data["queue"][gpu[0]] == sorted(set(PLANTED) - set(of_kind("release")))


def test_the_copied_attention_is_flagged(reported):
    """The two loop attentions are one under other names. The reference answers the other students
    share (their bugs are elsewhere) are short (under SIMILARITY_MIN_TOKENS): not listed. Helper
    functions long enough and handed in identical by several students are listed, as they should be."""
    course, data = reported
    assert [pair for pair in data["similar"] if pair[0] == "attention"] == [["attention", "loops", "loops_renamed"]]
    assert not [pair for pair in data["similar"] if set(pair[1:]) & set(of_kind("release"))]
    with open(course / "report" / "similarity.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["function"] == "attention"]
    assert [(r["student_a"], r["student_b"]) for r in rows] == [("loops", "loops_renamed")]
    assert float(rows[0]["shared_of_a"]) >= 0.9 and float(rows[0]["shared_of_b"]) >= 0.9


def test_independent_correct_solutions_are_not_flagged():
    """The correct variants of the fairness suite, each an independent answer to one function's contract."""
    given = {grade_id: code for (_, grade_id), code in solution_cells("attention_surgeon").items()}
    reference = reference_answers()
    by_function = {}
    for label, change in CORRECT_VARIANTS.items():
        for function, code in change(dict(reference)).items():
            if code != reference[function]:
                by_function.setdefault(function, {"the reference answer": reference[function]})[label] = code
    assert len(by_function) >= 3
    for function, codes in by_function.items():
        assert similar_in(codes, given[function]) == [], function
    # ...while a copy with its names changed is found whatever it is called.
    assert len(similar_in({"a": LOOP_ATTENTION, "b": RENAMED}, given["attention"])) == 1
    assert similar_in({"a": given["attention"], "b": given["attention"]}, given["attention"]) == []


def test_csv_cells_cannot_run_as_formulas(reported):
    course, _ = reported
    for name in ("checks.csv", "similarity.csv"):
        with open(course / "report" / name, newline="") as f:
            for row in csv.reader(f):
                assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row), row


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_page_renders_and_runs_nothing(reported):
    course, _ = reported
    page = (course / "report" / "index.html").read_text()
    assert "<script>" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert "Content-Security-Policy" in page
    browser = Browser()
    try:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        seen = browser.visit((course / "report" / "index.html").as_uri(), settle_s=1.0)
        tab = browser.context.new_page()
        tab.goto((course / "report" / "index.html").as_uri(), wait_until="load")
        tab.set_viewport_size({"width": 1280, "height": 1800})
        tab.screenshot(path=SCREENSHOTS / "index.png")  # the top of the page: scores and the checks
        tab.close()
    finally:
        browser.close()
    assert seen["pwned"] == [] and seen["dialogs"] == []
    assert "the scores must be scaled by 1/sqrt(d_k)" in seen["text"]
    assert "&lt;img src=x onerror=" in page, "the hostile message is there, as text (in a closed <details>)"
    assert "not a verdict" in seen["text"]


def test_every_rule_a_check_names_is_in_the_table():
    """Every CheckFailed and void_family in the checks names a rule of rules.RULES (by a literal id)."""
    used = set()
    for path in (ROOT / "autograder" / "checks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("CheckFailed", "void_family"):
                position = 0 if node.func.id == "CheckFailed" else 2
                argument = node.args[position] if len(node.args) > position else None
                if isinstance(argument, ast.Constant):
                    used.add(argument.value)
                else:
                    assert isinstance(argument, ast.Name) and argument.id == "rule", (path.name, node.lineno)
    assert used and used <= set(RULES), used - set(RULES)
    assert {check.name for check in REGISTRY.values()}, "the checks are registered"
