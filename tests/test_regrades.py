"""Re-grades redo only what changed (issue 22): `make autograde STUDENT=`, the skip of a submission
graded before and unchanged since (same staged files, same grader), `FORCE=1`, and `make regrade
CHECK=`, which decides one check again without running the notebooks. Each changes exactly what it
says. And the batch shows its progress as plain lines."""
import re

import pytest
from nbgrader.api import Gradebook

from tests.conftest import copy_course, make, read_grades
from tests.students import NB1, reference_answers, student_notebook, write_submission

NO_SCALE = ("scores = scores / math.sqrt(Q.shape[-1])", "scores = scores")
STUDENTS = ("correct", "no_scale", "blank")


def autograded_mtimes(course):
    return {p.relative_to(course / "autograded"): p.stat().st_mtime_ns
            for p in (course / "autograded").rglob("*.ipynb")}


def graded_again(before, after):
    """The students whose autograded notebook was written again."""
    return sorted({path.parts[0] for path in after if before.get(path) != after[path]})


def grade_cells(course, student):
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {g.name: (g.auto_score, g.needs_manual_grade)
                for g in gb.find_submission_notebook(NB1, "attention_surgeon", student).grades}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = copy_course(tmp_path_factory.mktemp("regrades"))
    make(course, "release")
    answers = reference_answers()
    write_submission(course, "correct", {NB1: student_notebook(answers)})
    write_submission(course, "no_scale", {NB1: student_notebook(answers, mutate=lambda c: c.replace(*NO_SCALE))})
    write_submission(course, "blank", {NB1: student_notebook({})})
    first = make(course, "autograde")
    return course, first.stdout


def test_the_batch_shows_its_progress_in_plain_lines(course):
    _, output = course
    assert re.search(r"^  \[1/3\] \S+ attention_surgeon (ok|NOT FINISHED) \d+ s; so far \d+ not finished, "
                     r"\d+ student\(s\) flagged; about \d+ s left$", output, re.MULTILINE), output
    ours = [line for line in output.splitlines() if not line.startswith("make")]  # make[1]: under `make test`
    assert "[3/3]" in output and ours[-2].startswith("graded 3 submission(s)") and "make report" in ours[-1]
    assert "\x1b" not in output and "\r" not in output, "no terminal control codes in a log"


def test_an_unchanged_batch_is_not_graded_again_and_force_grades_it_all(course):
    course, _ = course
    grades, before = read_grades(course), autograded_mtimes(course)
    again = make(course, "autograde")
    assert "3 submission(s) unchanged since they were graded by this same grader" in again.stdout
    assert "graded 0 submission(s)" in again.stdout
    assert graded_again(before, autograded_mtimes(course)) == [] and read_grades(course) == grades
    forced = make(course, "autograde", "FORCE=1")
    assert "graded 3 submission(s)" in forced.stdout
    assert graded_again(before, autograded_mtimes(course)) == list(sorted(STUDENTS))
    assert read_grades(course) == grades


def test_student_grades_just_that_student_and_a_resubmission_is_graded_again(course):
    course, _ = course
    grades, before = read_grades(course), autograded_mtimes(course)
    one = make(course, "autograde", "STUDENT=no_scale", "FORCE=1")
    assert "graded 1 submission(s)" in one.stdout and graded_again(before, autograded_mtimes(course)) == ["no_scale"]
    assert read_grades(course) == grades

    # no_scale fixes the scale and submits again: only that submission is graded again, and its grade rises
    write_submission(course, "no_scale", {NB1: student_notebook(reference_answers())})
    before = autograded_mtimes(course)
    make(course, "autograde")
    assert graded_again(before, autograded_mtimes(course)) == ["no_scale"]
    now = read_grades(course)
    assert now["no_scale"] == now["correct"] > grades["no_scale"]
    assert {s: now[s] for s in ("correct", "blank")} == {s: grades[s] for s in ("correct", "blank")}


def test_regrade_decides_one_check_again_and_nothing_else(course):
    """After the check's code changes (here: it now fails everyone), `make regrade CHECK=` moves that
    check's score, for every student, and no other; no notebook runs again."""
    course, _ = course
    before = {s: grade_cells(course, s) for s in STUDENTS}
    check = course / "autograder" / "checks" / "attention.py"
    original = check.read_text()
    marker = "def attention_gradients(student):\n"
    check.write_text(original.replace(marker, marker + '    raise CheckFailed("contract", "the check was changed")\n'))
    try:
        result = make(course, "regrade", "CHECK=attention_gradients")
    finally:
        check.write_text(original)
    assert "check attention_gradients decided again in 3 notebook(s)" in result.stdout
    for student in STUDENTS:
        after = grade_cells(course, student)
        assert after["check_attention_gradients"] == (0.0, False)
        assert {g: v for g, v in after.items() if g != "check_attention_gradients"} == \
            {g: v for g, v in before[student].items() if g != "check_attention_gradients"}
    gradients = before["correct"]["check_attention_gradients"][0]
    assert gradients > 0 and read_grades(course)["correct"] == sum(v[0] or 0 for v in before["correct"].values()) - gradients
    assert make(course, "regrade", "CHECK=no_such_check", check=False).returncode != 0


def test_a_regrade_that_flags_a_check_says_so_once_and_a_later_one_clears_it(course):
    """A check re-decided as "flagged for a TA" is named in a FLAGGED line and in .grading/flags, once
    however often it is re-decided; re-decided again without a flag, its line goes."""
    course, _ = course
    check = course / "autograder" / "checks" / "attention.py"
    original = check.read_text()
    marker = "def attention_gradients(student):\n"
    check.write_text(original.replace(marker, marker + '    raise NeedsTA("flagged for a TA: the check was changed")\n'))
    try:
        outputs = [make(course, "regrade", "CHECK=attention_gradients").stdout for _ in range(2)]
    finally:
        check.write_text(original)
    for output in outputs:
        assert sorted(re.findall(r"FLAGGED for a TA: (\w+): " + NB1 + ": attention_gradients: ", output)) == sorted(STUDENTS)
    for student in STUDENTS:
        lines = (course / ".grading" / "flags" / f"{student}.txt").read_text().splitlines()
        assert [line for line in lines if ": attention_gradients: " in line] == \
            [f"{NB1}: attention_gradients: flagged for a TA: the check was changed"]
        assert grade_cells(course, student)["check_attention_gradients"] == (None, True)
    output = make(course, "regrade", "CHECK=attention_gradients").stdout
    assert "FLAGGED" not in output
    for student in STUDENTS:
        flags = course / ".grading" / "flags" / f"{student}.txt"
        assert not flags.exists() or ": attention_gradients: " not in flags.read_text()
