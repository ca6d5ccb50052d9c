"""One grading command at a time in a course (autograder/course_lock.py): while `make autograde` runs, a
`make regrade`, `make feedback` or `make autograde-gpu` started beside it is refused at once, names the
batch, and changes nothing; the batch's grades are what they would have been alone; once it has ended,
the others run. A holder that is killed leaves no lock behind."""
import os
import signal
import subprocess
import time

import pytest

from autograder.course_lock import lock_holder
from tests.conftest import copy_course, make, read_grades, tree_digest, user_env
from tests.students import NB1, reference_answers, student_notebook, write_submission


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = copy_course(tmp_path_factory.mktemp("locked"))
    make(course, "release")
    masks = {k: v for k, v in reference_answers().items() if k in ("create_causal_mask", "create_reverse_mask")}
    write_submission(course, "alice", {NB1: student_notebook(reference_answers())})
    write_submission(course, "bob", {NB1: student_notebook(masks)})
    # A submission that takes its time: the batch surely runs while the other commands are tried beside it.
    write_submission(course, "slow", {NB1: student_notebook(reference_answers(),
                                                            extra_cells=[("attention", "import time\ntime.sleep(40)")])})
    make(course, "autograde")
    return course


def holder(course):
    """Who holds the course's lock (/proc/locks), read without taking it; None if nobody."""
    handle = os.open(course, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return lock_holder(handle)
    finally:
        os.close(handle)


def state(course):
    return {k: v for k, v in tree_digest(course).items() if "__pycache__" not in k and ".hypothesis" not in k}


def test_a_second_grading_command_is_refused_while_a_batch_runs(course):
    expected = read_grades(course)
    batch = subprocess.Popen(["make", "-o", ".venv/.installed", "autograde", "FORCE=1"], cwd=course, env=user_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while "autograder.autograde" not in (holder(course) or "") and batch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "autograder.autograde" in (holder(course) or ""), "the batch holds the course's lock while it runs"
        for target in (["regrade", "CHECK=attention_gradients"], ["feedback"], ["autograde-gpu"], ["autograde"]):
            refused = make(course, *target, check=False)
            said = refused.stdout + refused.stderr
            assert refused.returncode != 0 and "REFUSED: another grading command is running in this course" in said, said
            assert "autograder.autograde" in said, "the message names the command that holds the lock"
        assert batch.poll() is None, "the batch was still running: the test shows the overlap"
    finally:
        output, _ = batch.communicate(timeout=900)
    assert batch.returncode == 0, output
    assert read_grades(course) == expected, "the batch's grades are what they are alone"
    assert holder(course) is None, "an ended batch leaves no lock"
    assert make(course, "regrade", "CHECK=attention_gradients").returncode == 0


def test_a_killed_holder_leaves_no_lock(course):
    holder = subprocess.Popen(["python3", "-c", "import fcntl, os, sys, time\n"
                               "h = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
                               "fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)", str(course)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    before = state(course)
    refused = make(course, "feedback", check=False)
    assert refused.returncode != 0 and f"pid {holder.pid}" in refused.stdout
    assert state(course) == before, "a refused command changes nothing"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert make(course, "feedback").returncode == 0
