"""Time limits that span many calls: one hidden check's budget, one submission's wall clock.

Trusted code. A call of a student's function has its own limit (CALL_TIMEOUT_S), but a function
that answers correctly just under it, on every call, would hold a check for minutes and a batch
for hours. So every request to student code is also bounded by

* the check's budget (CHECK_TIME_BUDGET_S): all the calls of one hidden check together;
* the submission's clock (SUBMISSION_TIMEOUT_S): everything graded for one student, the
  kernel's run of the notebooks included.

Whichever ends first decides how long a request may take, and its `reason` is what the student
reads. The grading process starts the submission clock (`start_submission`) before each student;
a check starts its own budget. Outside, the batch stops a student's grading for good shortly after
the clock runs out (grade_submissions.py).
"""
import time

import course_config


class Deadline:
    """A moment, and the sentence that tells a student it passed."""

    def __init__(self, seconds, reason):
        self.at = time.monotonic() + seconds
        self.reason = reason

    def remaining(self):
        return self.at - time.monotonic()


_submission = None


def start_submission(seconds=None):
    """Start one student's clock (in the grading process, before their first notebook)."""
    global _submission
    seconds = seconds or course_config.SUBMISSION_TIMEOUT_S
    _submission = Deadline(seconds, f"grading your submission took more than {seconds} s in all (the time limit "
                                    f"per submission), so the checks still to run were not run")


def submission_deadline():
    return _submission


def check_deadline(seconds=None):
    seconds = seconds or course_config.CHECK_TIME_BUDGET_S
    return Deadline(seconds, f"your functions took more than {seconds} s in all during this check (its time "
                             f"budget), so it stopped calling them")


def call_deadline(seconds):
    return Deadline(seconds, f"your function took more than {seconds} s on one call (the time limit per call)")


def first_to_end(*deadlines):
    """The deadline (of those given, None ignored) that ends first."""
    return min((d for d in deadlines if d is not None), key=lambda d: d.at)
