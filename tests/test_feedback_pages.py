"""The batch's feedback process (autograder/feedback.py, FeedbackPages), on its own.

`make autograde` hands each graded submission to it and waits for the last pages at the end; every
autograde test checks the real pages. Here a stand-in process plays the feedback process, so that
what the batch does when a page hangs, fails or kills the process can be shown in seconds: each of
those costs that one submission its pages (and a line in the summary), never the batch or the others.
"""
import sys
import time

import pytest

import course_config
from autograder.feedback import FeedbackPages

# Answers like the feedback process: one {"done": [assignment, student], "ok": ...} line per request,
# in order. Student "hang" never answers, "crash" kills the process, "bad" is answered "not ok".
STAND_IN = r'''
import json, os, sys, time
print("nbgrader's own output goes to the log, not here", file=sys.stderr)
for line in sys.stdin:
    assignment, student = json.loads(line)
    if student == "hang":
        time.sleep(3600)
    if student == "crash":
        os._exit(1)
    print(json.dumps({"done": [assignment, student], "ok": student != "bad"}), flush=True)
'''


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setattr(course_config, "FEEDBACK_TIMEOUT_S", 2)


def test_every_page_is_made_in_order_past_the_pipe_window(tmp_path, short_timeout):
    pages = FeedbackPages(tmp_path / "feedback.log", command=[sys.executable, "-c", STAND_IN])
    students = [f"student{i:03d}" for i in range(3 * FeedbackPages.WINDOW)]
    for student in students:
        pages.add("attention_surgeon", student)
    assert len(pages.sent) <= FeedbackPages.WINDOW, "no more requests in the pipe than the window"
    assert pages.finish() == []
    assert pages.process.poll() is not None, "the process has ended"
    assert "nbgrader's own output" in (tmp_path / "feedback.log").read_text()


def test_a_page_that_hangs_fails_or_kills_the_process_costs_only_its_own_submission(tmp_path, short_timeout):
    pages = FeedbackPages(tmp_path / "feedback.log", command=[sys.executable, "-c", STAND_IN])
    started = time.monotonic()
    order = ["a", "hang", "b", "bad", "c", "crash", "d"]
    for student in order:
        pages.add("attention_surgeon", student)
    failed = pages.finish()
    assert failed == [("attention_surgeon", "hang"), ("attention_surgeon", "bad"), ("attention_surgeon", "crash")]
    assert time.monotonic() - started < 30, "the hung page was given up after FEEDBACK_TIMEOUT_S"
    assert not pages.waiting and not pages.sent


def test_a_process_that_cannot_start_fails_the_rest_without_looping(tmp_path, short_timeout):
    pages = FeedbackPages(tmp_path / "feedback.log", command=[sys.executable, "-c", "raise SystemExit(3)"])
    for student in ["a", "b", "c", "d", "e", "f"]:
        pages.add("attention_surgeon", student)
    started = time.monotonic()
    failed = pages.finish()
    assert [student for _, student in failed] == ["a", "b", "c", "d", "e", "f"]
    assert time.monotonic() - started < 30
