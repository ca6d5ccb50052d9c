"""`make autograde-gpu`: on a CUDA host, decide the GPU checks that an earlier `make autograde`
left pending, and nothing else.

For every autograded notebook whose GPU-check grades are still pending (no score, flagged
"needs manual grade", no manual score), it runs just those checks against the student's code (in
the sandboxed worker, on CUDA), writes their verdicts into the autograded notebook and the
gradebook, then regenerates feedback (with each student's grading notes, as `make feedback` does) and
grades.csv. Every other grade, and every manual grade,
is left as it is.
"""
import logging
import sys

from .checks import REGISTRY
from .pipeline import cuda_seen_by_the_grader, hidden_check_name
from .preflight import cuda_problem_in_the_sandbox, refuse_unless_sandbox_works
from .redecide import redecide
from .course_lock import run_alone
from .safe_text import one_line


def pending_gpu_cells(nb, grades):
    """(cell, check name, grade) for GPU checks whose grade is still pending."""
    found = []
    for cell in nb.cells:
        name = hidden_check_name(cell)
        if not name or name not in REGISTRY or not REGISTRY[name].gpu:
            continue
        grade = grades.get(cell.metadata["nbgrader"]["grade_id"])
        if grade is not None and grade.auto_score is None and grade.manual_score is None:
            found.append((cell, name, grade))
    return found


def main():
    if not cuda_seen_by_the_grader():
        print("no CUDA on this host (or GRADE_ON_CUDA is off): the pending GPU checks stay pending; nothing was changed")
        return 0
    refused = refuse_unless_sandbox_works()
    if refused:
        return refused
    problem = cuda_problem_in_the_sandbox()
    if problem:  # CUDA is here, the sandbox cannot use it: a host to mend, never 0 points for every student
        print(f"GPU CHECKS NOT DECIDED: torch sees CUDA on this host, but CUDA does not work in the sandbox: "
              f"{one_line(problem, 1000)}. The pending GPU checks stay pending; nothing was changed. The address-space "
              f"cap of a sandbox that reaches a GPU is MEMORY_LIMIT_MB + CUDA_ADDRESS_SPACE_MB (course_config.py).")
        return 2
    filled, _, flagged = redecide(pending_gpu_cells, cuda_available=True)
    for line in flagged:
        print(f"  FLAGGED for a TA: {one_line(line, 1000)}")
    print(f"filled in {filled} pending GPU check(s)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the preflight says which process cap holds
    sys.exit(run_alone(main))
