"""Mutants and correct variants of one graded function, graded on that function's own hidden checks.

Used by the Notebook 2 and 3 mutation suites. Each case changes one solution cell
(grade_id) of the reference answers; it is graded through the sandboxed worker and the
trusted checks that test that cell, as `make autograde` would grade them.
"""
from tests.grading import check_points, grade_checks, score
from tests.students import reference_answers, student_notebook


def grade_change(notebook, checks, change):
    """{check: Verdict} for the reference answers of `notebook` with `change` applied."""
    answers = change(reference_answers(notebook))
    return grade_checks(student_notebook(answers, name=notebook), notebook, only=checks)


def points_of(notebook, verdicts):
    points = check_points(notebook)
    return score(verdicts, notebook), sum(points[c] for c in verdicts)


def expect_points_lost(notebook, checks, change, label):
    verdicts = grade_change(notebook, checks, change)
    assert all(v.status != "pending" for v in verdicts.values()), f"a check could not decide: {verdicts}"
    got, full = points_of(notebook, verdicts)
    failed = {c: v.message.splitlines()[0] for c, v in verdicts.items() if v.status == "failed"}
    assert got < full, f"{label!r} kept full marks ({got}/{full})"
    print(f"{label}: {got:.0f}/{full:.0f}, failed {failed}")


def expect_all_points_lost(notebook, checks, change, label):
    verdicts = grade_change(notebook, checks, change)
    kept = {c: v.status for c, v in verdicts.items() if v.status != "failed"}
    assert kept == {}, f"{label!r} kept some checks: {kept}"
    print(f"{label}: 0/{points_of(notebook, verdicts)[1]:.0f}; " +
          "; ".join(f"{c}: {v.message.splitlines()[-1][:120]}" for c, v in verdicts.items()))


def expect_full_marks(notebook, checks, change, label):
    verdicts = grade_change(notebook, checks, change)
    lost = {c: v.message for c, v in verdicts.items() if v.status != "passed"}
    assert lost == {}, f"{label!r} lost points:\n" + "\n".join(f"{c}: {m}" for c, m in lost.items())
