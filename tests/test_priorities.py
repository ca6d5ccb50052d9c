"""What the grader does not wait for yet runs in the background: the kernel template of the next submission
until that submission takes it, the sandbox check's worker, and the gradebook learning the assignments.
Linux shares the CPU between sessions (autogroups) first, and every sandbox is a session of its own, so a
sandbox's priority is its session's: read here from /proc/<pid>/autogroup, outside the sandbox."""
import os
import threading
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_notebook
from nbclient import NotebookClient

from autograder import sandbox
from autograder.grade_submissions import in_the_background
from autograder.sandbox import (BACKGROUND_NICE, close_next_template, grading_submission, sandboxed_kernel_manager_class,
                                sandboxed_python, set_session_priority, start_next_template, worker_script)
from autograder.student import WorkerProcess

needs_autogroups = pytest.mark.skipif(not Path("/proc/self/autogroup").exists(),
                                      reason="this host's kernel has no autogroups (CONFIG_SCHED_AUTOGROUP)")


def session(pid):
    """(the autogroup of host process `pid`, its nice value), as /proc/<pid>/autogroup says:
    "/autogroup-<id> nice <n>"."""
    name, _, nice = Path(f"/proc/{pid}/autogroup").read_text().split()
    return name, int(nice)


@needs_autogroups
def test_a_template_started_ahead_waits_in_the_background_until_its_submission_takes_it(tmp_path):
    scratch, folder = tmp_path / "scratch", tmp_path / "submission"
    scratch.mkdir()
    folder.mkdir()
    own = session(os.getpid())
    start_next_template(scratch)
    ahead = sandbox._next["template"]
    try:
        pid = sandboxed_python(ahead.process, sandbox.TEMPLATE_SCRIPT, timeout=5)
        assert pid is not None
        assert session(pid)[0] != own[0], "the template is a session of its own"
        assert session(pid)[1] == BACKGROUND_NICE, "started ahead, it waits in the background"
        assert session(os.getpid()) == own, "the grader's own priority is untouched"
        nb = new_notebook(cells=[new_code_cell("import os\nPID = os.getpid()")])
        client = NotebookClient(nb, timeout=60, kernel_manager_class=sandboxed_kernel_manager_class(),
                                resources={"metadata": {"path": str(folder)}})
        with grading_submission(folder, scratch=scratch):
            with client.setup_kernel():
                client.execute_cell(nb.cells[0], 0)
                assert client.km.template is ahead
                assert session(pid)[1] == 0, "taken by its submission: the normal priority"
                kernel = client.km.provisioner.process.pid
                assert session(kernel)[1] == 0 and session(kernel)[0] != session(pid)[0], \
                    "the notebook's kernel is a session of its own, at the normal priority"
                following = sandbox._next["template"]
                assert following is not None and following is not ahead
                following_pid = sandboxed_python(following.process, sandbox.TEMPLATE_SCRIPT, timeout=5)
                assert session(following_pid)[1] == BACKGROUND_NICE, "the next submission's, in the background"
    finally:
        close_next_template()
    assert session(os.getpid()) == own


@needs_autogroups
def test_the_sandbox_check_s_worker_runs_in_the_background():
    worker = WorkerProcess("preflight", background=True)
    try:
        pid = sandboxed_python(worker._process, worker_script(), timeout=5)
        assert pid is not None and session(pid)[1] == BACKGROUND_NICE
    finally:
        worker.kill()
    normal = WorkerProcess("checks")
    try:
        pid = sandboxed_python(normal._process, worker_script(), timeout=5)
        assert pid is not None and session(pid)[1] == 0, "a worker the checks wait for is not in the background"
    finally:
        normal.kill()


@needs_autogroups
def test_the_grader_never_sets_its_own_session_s_priority():
    own = session(os.getpid())
    assert set_session_priority(os.getpid(), BACKGROUND_NICE) is False
    assert session(os.getpid()) == own


def test_in_the_background_runs_at_the_lowest_priority_in_a_thread_of_its_own_and_hands_back_its_result():
    seen = {}

    def job(value):
        seen.update(thread=threading.get_native_id(), nice=os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return value * 2

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert in_the_background(job, 21) == 42
    assert seen["thread"] != threading.get_native_id() and seen["nice"] == BACKGROUND_NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before, "this thread's priority is untouched"

    def fails():
        raise ValueError("what generate_assignment raised")

    with pytest.raises(ValueError, match="what generate_assignment raised"):
        in_the_background(fails)
