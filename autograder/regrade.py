"""`make regrade CHECK=<name>`: decide one hidden check again for every graded submission, without
running the notebooks again (autograder/redecide.py). What an instructor runs after fixing a check
mid-term. A grade a TA entered by hand for that check is kept; every other grade is left as it is."""
import logging
import sys

from .checks import REGISTRY
from .pipeline import grading_on_cuda, hidden_check_name
from .preflight import refuse_unless_sandbox_works
from .redecide import redecide
from .course_lock import run_alone
from .safe_text import one_line


def cells_of(check):
    def choose(nb, grades):
        found = []
        for cell in nb.cells:
            if hidden_check_name(cell) != check:
                continue
            grade = grades.get(cell.metadata["nbgrader"]["grade_id"])
            if grade is not None and grade.manual_score is None:
                found.append((cell, check, grade))
        return found
    return choose


def main(argv):
    check = argv[0] if argv else ""
    if check not in REGISTRY:
        print(f"usage: make regrade CHECK=<name>; no check is named {check!r}. The checks: "
              f"{', '.join(sorted(REGISTRY))}")
        return 2
    refused = refuse_unless_sandbox_works()
    if refused:
        return refused
    decided, pending, flagged = redecide(cells_of(check), grading_on_cuda())
    for line in flagged:
        print(f"  FLAGGED for a TA: {one_line(line, 1000)}")
    print(f"check {check} decided again in {decided} notebook(s)" + (f", {pending} pending" if pending else "")
          + "; every other grade is as it was; feedback/ and grades.csv are written")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the preflight says which process cap holds
    sys.exit(run_alone(main, sys.argv[1:]))
