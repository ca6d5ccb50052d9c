"""A slow submission cannot stall the batch (the "one slow student" attack).

Before: an attention() that slept just under CALL_TIMEOUT_S on every call, then answered
correctly, held the batch for 2715 s against SUBMISSION_TIMEOUT_S = 900, was regraded alone
with the limit multiplied by its shard's size, and scored 0 with no explanation.

Now each hidden check has a time budget, each submission a wall clock, and a student who used
theirs is not graded a second time. Short limits here (environment variables), the same code.
"""
import time

import pytest

from tests.conftest import copy_course, make, read_grades
from tests.grading import decidable_points
from tests.students import NB1, reference_answers, student_notebook, write_submission

SUBMISSION_S = 70
LIMITS = {"ATTENTION_SURGEON_CALL_TIMEOUT_S": "3", "ATTENTION_SURGEON_CHECK_TIME_BUDGET_S": "4",
          "ATTENTION_SURGEON_SUBMISSION_TIMEOUT_S": str(SUBMISSION_S), "ATTENTION_SURGEON_SUBMISSION_GRACE_S": "20",
          "ATTENTION_SURGEON_GRADING_PARALLELISM": "1"}  # one shard: the slow student and the bystander share it
SLEEP_S = 2.5  # just under the 3 s per call


def slow_answers():
    answers = reference_answers()
    answers["attention"] = (answers["attention"].replace("def attention(", "def _attention(") +
                            f"\n\nimport time\n\ndef attention(*args, **kwargs):\n    time.sleep({SLEEP_S})\n"
                            f"    return _attention(*args, **kwargs)\n")
    return answers


@pytest.fixture(scope="module")
def slow_batch(tmp_path_factory):
    course = copy_course(tmp_path_factory.mktemp("slow"))
    make(course, "release")
    # "a_slow" sorts first, so the bystander waits behind it in the same shard.
    write_submission(course, "a_slow", {NB1: student_notebook(slow_answers())})
    write_submission(course, "bystander", {NB1: student_notebook(reference_answers())})
    started = time.monotonic()
    result = make(course, "autograde", env=LIMITS, timeout=900)
    return course, time.monotonic() - started, result.stdout


def test_the_batch_ends_within_the_submission_limit(slow_batch):
    course, elapsed, output = slow_batch
    print(f"slow batch: {elapsed:.0f} s\n{output}")
    # The slow student's clock, the bystander's grading (about 15 s here) and the set-up around them:
    # about 100 s here. Before, a shard's limit was the clock times its size (2 x 70 s here) and a
    # student who ran out was graded a second time alone. The bound leaves room for a slower host.
    assert elapsed < 2 * SUBMISSION_S + 20


def test_the_slow_student_is_told_why_and_no_other_grade_moves(slow_batch):
    course, _, _ = slow_batch
    grades = read_grades(course)
    assert grades["bystander"] == sum(decidable_points().values()), "no other grade moves"
    assert grades["a_slow"] < sum(decidable_points().values())
    feedback = (course / "feedback" / "a_slow" / "attention_surgeon" / f"{NB1}.html").read_text()
    # Checks stop at their 4 s budget (each restart of the worker loads the notebook again, whose demo
    # cell calls the slow attention too), until the submission's clock stops the rest (ten checks of
    # at least 4 s each, plus the restarts, take longer than the 70 s clock).
    assert "took more than 4 s in all during this check" in feedback
    assert f"grading your submission took more than {SUBMISSION_S} s in all" in feedback
    assert "could not be loaded within" not in feedback, "the clock, not the loading limit, is named"
