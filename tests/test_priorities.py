"""The kernel template of the next submission, which the grader does not wait for yet, runs in the background
until that submission takes it. Linux shares the CPU between sessions (autogroups) first, and every sandbox
is a session of its own, so a sandbox's priority is its session's: read here from /proc/<pid>/autogroup,
outside the sandbox."""
import os
import subprocess
import time
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_notebook
from nbclient import NotebookClient

from autograder import sandbox
from autograder.sandbox import (BACKGROUND_NICE, close_next_template, grading_submission, process_folder,
                                sandboxed_kernel_manager_class, sandboxed_python, set_session_priority,
                                start_next_template)

needs_autogroups = pytest.mark.skipif(not Path("/proc/self/autogroup").exists(),
                                      reason="this host's kernel has no autogroups (CONFIG_SCHED_AUTOGROUP)")


def in_the_background_soon(pid, within_s=5.0):
    """Whether process `pid`'s session is put in the background within `within_s` (a thread of the grading
    process does it once bwrap has started the template)."""
    deadline = time.monotonic() + within_s
    while session(pid)[1] != BACKGROUND_NICE and time.monotonic() < deadline:
        time.sleep(0.01)
    return session(pid)[1] == BACKGROUND_NICE


def session(pid):
    """(the autogroup of host process `pid`, its nice value), as /proc/<pid>/autogroup says:
    "/autogroup-<id> nice <n>". A process whose session began with the host (no setsid since boot, as under
    some CI runners) is in the host's default group, the root of the scheduler, which has no priority of its
    own: the file is empty, read here as ("/autogroup-0", 0)."""
    fields = Path(f"/proc/{pid}/autogroup").read_text().split()
    if not fields:
        return "/autogroup-0", 0
    name, _, nice = fields
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
        assert in_the_background_soon(pid), "started ahead, it waits in the background"
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
                assert in_the_background_soon(following_pid), "the next submission's, in the background"
    finally:
        close_next_template()
    assert session(os.getpid()) == own


@needs_autogroups
def test_a_template_that_cannot_be_given_the_normal_priority_again_is_replaced(tmp_path, monkeypatch):
    """The host refuses to set the taken template's priority back (another process of the host took the
    one change per 100 ms an unprivileged grader is allowed, say): it is ended, and a fresh template, at
    the normal priority, forks the submission's kernel."""
    scratch, folder = tmp_path / "scratch", tmp_path / "submission"
    scratch.mkdir()
    folder.mkdir()
    start_next_template(scratch)
    ahead = sandbox._next["template"]
    assert in_the_background_soon(sandboxed_python(ahead.process, sandbox.TEMPLATE_SCRIPT, timeout=5))
    real = sandbox.set_session_priority
    monkeypatch.setattr(sandbox, "set_session_priority",
                        lambda folder, nice, stop=None: False if nice == 0 else real(folder, nice, stop))
    nb = new_notebook(cells=[new_code_cell("X = 1")])
    client = NotebookClient(nb, timeout=60, kernel_manager_class=sandboxed_kernel_manager_class(),
                            resources={"metadata": {"path": str(folder)}})
    try:
        with grading_submission(folder, scratch=scratch):
            with client.setup_kernel():
                client.execute_cell(nb.cells[0], 0)
                assert client.km.template is not ahead and client.km.template is not None
                assert ahead.process.poll() is not None, "the template left in the background was ended"
                fresh = sandboxed_python(client.km.template.process, sandbox.TEMPLATE_SCRIPT, timeout=5)
                assert session(fresh)[1] == 0
    finally:
        close_next_template()


@needs_autogroups
def test_the_grader_never_sets_its_own_session_s_priority_nor_an_ended_process_s():
    own = session(os.getpid())
    folder = process_folder(os.getpid())
    try:
        assert set_session_priority(folder, BACKGROUND_NICE) is False
    finally:
        os.close(folder)
    assert session(os.getpid()) == own
    ended = subprocess.Popen(["sleep", "60"], start_new_session=True)
    folder = process_folder(ended.pid)
    try:
        ended.kill()
        ended.wait()
        assert set_session_priority(folder, BACKGROUND_NICE) is False, "what /proc/<pid> named has ended"
    finally:
        os.close(folder)
