"""The notebook's kernel answers the hidden checks (one sandboxed process per notebook; while a submission is
graded, its template forks those kernels), and a fresh worker answers when that kernel cannot. The kernels here start as SandboxedExecute starts them; the batch's count
of sandboxes, observed from outside the grader, is in test_scale.py."""
import socket
import threading
import time
from contextlib import contextmanager

import psutil
import pytest
import torch
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import course_config

from autograder import sandbox
from autograder.sandbox import (ForkedKernel, close_next_template, grading_submission, sandboxed_kernel_manager_class,
                               start_next_template, submission_template)
from autograder.student import KernelConnection, SandboxedStudent, StudentUnresponsive, WorkerProcess


@contextmanager
def kernel_that_ran(cells, folder):
    """A sandboxed kernel that has run `cells` (code) in `folder`, as SandboxedExecute runs a notebook."""
    nb = new_notebook(cells=[new_code_cell(source) for source in cells])
    client = NotebookClient(nb, timeout=60, allow_errors=True, kernel_manager_class=sandboxed_kernel_manager_class(),
                            resources={"metadata": {"path": str(folder)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        yield client.km, nb


def answering(km):
    kernel = KernelConnection.open(km.checks_socket, km.stop_sandbox, km.checks_peer())
    assert kernel is not None, "the kernel does not answer on its checks socket"
    return kernel


def test_the_kernel_answers_with_the_namespace_its_notebook_built(tmp_path):
    (tmp_path / "worker.py").write_text('WHO = "the student"\n')  # a module of theirs, named like ours
    cells = ["import torch, worker\nWHO = worker.WHO\nruns = 0",
             "def double(x):\n    global runs\n    runs += 1\n    return x * 2",
             "class Counter:\n    def __init__(self):\n        self.n = 0\n    def add(self, k):\n        self.n += k\n"
             "        return self.n",
             "double(torch.ones(1))",
             "torch.set_grad_enabled(False)  # per thread in torch: the checks' calls must see it too\n"
             "def grad_mode():\n    return torch.is_grad_enabled()"]
    with kernel_that_ran(cells, tmp_path) as (km, nb):
        assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.outputs), nb.cells
        kernel = answering(km)
        with SandboxedStudent(cells, kernel=kernel) as student:
            assert student.call("double", torch.arange(3.0)).value.array.tolist() == [0.0, 2.0, 4.0]
            assert student.value("runs").value == 2, "the notebook's own call and this one: one namespace"
            assert student.value("WHO").value == "the student", "the launcher's files do not shadow theirs"
            assert student.call("grad_mode").value is False, "calls run where the cells ran: the main thread"
            counter = student.call("Counter", keep=True).handle
            student.method(counter, "add", 2)
            assert student.method(counter, "add", 3).value == 5, "an object kept in the kernel between calls"
            assert student._channel is kernel, "no worker was started"


def test_a_call_that_hangs_in_the_kernel_stops_it_and_a_fresh_worker_answers_next(tmp_path, monkeypatch):
    monkeypatch.setattr(course_config, "CALL_TIMEOUT_S", 3)
    cells = ["def spin(x):\n    while True:\n        pass", "def plus_one(x):\n    return x + 1"]
    with kernel_that_ran(cells, tmp_path) as (km, _):
        kernel, process = answering(km), km.provisioner.process
        with SandboxedStudent(cells, kernel=kernel) as student:
            with pytest.raises(StudentUnresponsive, match="more than 3 s on one call"):
                student.call("spin", 1)
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert process.poll() is not None, "the kernel's sandbox was stopped, not left spinning"
            assert student.call("plus_one", 1).value == 2
            assert isinstance(student._channel, WorkerProcess), "a fresh worker answered"
    # leaving the block shut the (dead) kernel down without an error


def test_a_notebook_that_takes_over_the_checks_socket_is_answered_by_a_worker(tmp_path):
    """Its own listener in place of the kernel's, which never answers: the ping finds out in seconds,
    before any check has started its clock, and a worker answers every call."""
    cells = ["import os, socket\nos.remove('/ipc/checks')\nsilent = socket.socket(socket.AF_UNIX)\n"
             "silent.bind('/ipc/checks')\nsilent.listen(8)",
             "def plus_one(x):\n    return x + 1"]
    with kernel_that_ran(cells, tmp_path) as (km, nb):
        assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.outputs), nb.cells
        started = time.monotonic()
        assert KernelConnection.open(km.checks_socket, km.stop_sandbox, km.checks_peer()) is None
        assert time.monotonic() - started < KernelConnection.CONNECT_TIMEOUT_S + 2
        with SandboxedStudent(cells) as student:  # what ChecksPlan.decide does without a kernel
            assert student.call("plus_one", 41).value == 42


def test_a_submission_s_kernels_are_forked_by_one_template_that_ends_with_it(tmp_path):
    """Grading a submission: one template per submission forks a kernel per notebook, each in a copy of the
    submission's folder; a fresh namespace each; whatever a notebook left running ends with the submission."""
    (tmp_path / "data.txt").write_text("42")
    first = ["import os, subprocess\nDATA = open('data.txt').read()\nPID = os.getpid()\n"
             "subprocess.Popen(['sleep', '7377'], start_new_session=True)\ndef plus_one(x):\n    return x + 1"]
    second = ["import os\nPID = os.getpid()\nSEEN = 'DATA' in globals()"]
    with grading_submission(tmp_path):
        with kernel_that_ran(first, tmp_path) as (km, nb):
            assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.outputs), nb.cells
            template = submission_template()
            assert isinstance(km.provisioner.process, ForkedKernel) and km.template is template
            with SandboxedStudent(first, kernel=answering(km)) as student:
                assert student.value("DATA").value == "42", "the kernel works in a copy of the submission's folder"
                assert student.call("plus_one", 1).value == 2
                first_pid = student.value("PID").value
        with kernel_that_ran(second, tmp_path) as (km, _):
            assert submission_template() is template, "one template for the submission's notebooks"
            with SandboxedStudent(second, kernel=answering(km)) as student:
                assert student.value("SEEN").value is False, "each notebook starts with a fresh namespace"
                assert student.value("PID").value != first_pid
    assert template.process.poll() is not None, "the template ended with the submission"
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "7377"]], \
        "nothing a notebook started outlives its submission"


def test_a_template_started_ahead_serves_the_one_submission_that_comes_next(tmp_path):
    """A grading process starts its next submission's template before that submission comes, in an empty
    folder: the next submission that runs a notebook gets it with its own files (and no other's), which
    starts another for the one after; a submission that runs no notebook takes none; the one still waiting
    when the process stops ends then."""
    scratch, folders = tmp_path / "scratch", {}
    scratch.mkdir()
    for name in ("first", "second"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "data.txt").write_text(name)
    cells = ["import os\nDATA = open('data.txt').read()\nSEEN = sorted(f for f in os.listdir('.') if not f.startswith('.'))"]
    start_next_template(scratch)
    ahead, used = sandbox._next["template"], []
    assert ahead is not None and list(ahead.folder.iterdir()) == [], "started before its submission, with nothing"
    for name in ("first", "second"):
        with grading_submission(tmp_path / "runs-no-notebook", scratch=scratch):
            pass
        assert sandbox._next["template"] is ahead and ahead.alive(), "a submission that starts no kernel takes none"
        with grading_submission(folders[name], scratch=scratch):
            with kernel_that_ran(cells, folders[name]) as (km, nb):
                assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.outputs), nb.cells
                assert km.template is ahead, "the kernel was forked by the template started ahead"
                with SandboxedStudent(cells, kernel=answering(km)) as student:
                    assert student.value("DATA").value == name
                    assert student.value("SEEN").value == ["data.txt"]
            used.append(ahead)
            ahead = sandbox._next["template"]
            assert ahead is not None and ahead not in used, "the next submission's template started meanwhile"
        assert used[-1].process.poll() is not None and not used[-1].folder.exists(), "it ended with its submission"
    close_next_template()
    assert ahead.process.poll() is not None and sandbox._next["template"] is None
    assert list(scratch.iterdir()) == [], "no folder is left"


def test_a_link_in_place_of_the_checks_socket_reaches_nothing_outside_the_sandbox(tmp_path):
    """The student's code puts a link to a socket of the host (a classmate's kernel's, say) where its
    kernel's socket was: the grader, which follows it from outside, finds a listener that is not in the
    kernel's sandbox and sends it nothing; a worker answers instead."""
    decoy_path = tmp_path / "decoy"
    decoy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    decoy.bind(str(decoy_path))
    decoy.listen(4)
    heard = []

    def listen():
        decoy.settimeout(30)
        try:
            connection, _ = decoy.accept()
            connection.settimeout(3)
            heard.append(connection.recv(100))
        except OSError:
            pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    cells = [f"import os\nos.remove('/ipc/checks')\nos.symlink({str(decoy_path)!r}, '/ipc/checks')",
             "def plus_one(x):\n    return x + 1"]
    with kernel_that_ran(cells, tmp_path) as (km, nb):
        assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.outputs), nb.cells
        assert KernelConnection.open(km.checks_socket, km.stop_sandbox, km.checks_peer()) is None
    listener.join(10)
    decoy.close()
    assert heard in ([], [b""]), "nothing was sent to a socket outside the kernel's sandbox"
