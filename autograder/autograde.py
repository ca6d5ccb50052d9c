"""`make autograde`'s entry point; the batch itself is grade_submissions.py.

Dask starts the embedded cluster's workers with multiprocessing's "spawn", which imports the main
module of the command in every worker it starts. This module imports nothing at its top, so a worker
does not import the batch's own modules (nbgrader, nbconvert, sqlalchemy: about 1 s more of start-up
for each worker, measured with a LocalCluster of one worker on 2 cores, and 2 s of CPU spent beside the
grading process's own start). Trusted code.
"""
import sys


def run(argv):
    """make autograde's exit status for its arguments `argv`."""
    import logging

    from .grade_submissions import main

    from .course_lock import run_alone

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_alone(main, argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
