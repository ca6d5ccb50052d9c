"""The sandbox itself: what student code can see, and the refusal to grade when it cannot start."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import course_config

from autograder.student import SandboxedStudent
from tests.conftest import make, tree_digest
from tests.students import NB1, reference_answers, student_notebook, write_submission

REPO = Path(__file__).resolve().parents[1]
PROBE = """
def probe():
    import os, socket
    seen = {"cwd": os.getcwd(), "root": sorted(os.listdir("/")), "uid": os.getuid(),
            "pids": len([p for p in os.listdir("/proc") if p.isdigit()])}
    seen["repo"] = sorted(os.listdir(REPO)) if os.path.isdir(REPO) else None
    try:
        socket.create_connection(("127.0.0.1", 22), timeout=1)
        seen["net"] = "connected"
    except OSError as err:
        seen["net"] = type(err).__name__
    return seen
""".replace("REPO", repr(str(REPO)))


def test_the_worker_sees_almost_nothing():
    with SandboxedStudent([PROBE]) as student:
        seen = student.call("probe").value
    # The Python installation is bound read-only where it lives (on CI, a venv inside the clone),
    # so its top folder shows up; nothing else of the host does.
    python_tops = {Path(os.path.realpath(home)).parts[1] for home in (sys.prefix, sys.base_prefix)}
    assert set(seen["root"]) <= {"bin", "dev", "etc", "grader", "lib", "lib64", "proc", "root", "sbin", "sys", "tmp",
                                 "usr"} | python_tops
    # Of the course folder, at most the path down to the venv exists: no autograder/, no solutions/.
    assert seen["repo"] is None or set(seen["repo"]) <= {".venv"}, seen["repo"]
    assert seen["net"] != "connected"
    assert seen["pids"] < 10, "its own pid namespace"


def test_grading_is_refused_when_the_sandbox_cannot_start(course, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    write_submission(course, "someone", {NB1: student_notebook(reference_answers())})
    before = tree_digest(course / "submitted")
    result = make(course, "autograde", check=False, env={"ATTENTION_SURGEON_BWRAP": str(fake / "bwrap")})
    assert result.returncode != 0
    assert "GRADING REFUSED" in result.stderr and "sandbox" in result.stderr
    assert not (course / "grades.csv").exists()
    assert tree_digest(course / "submitted") == before
    # It was sent to be graded before the sandbox check ended; nothing it gave was written.
    assert not (course / "autograded").exists() and not (course / "feedback").exists()


def test_preflight_names_the_process_cap_in_force():
    from autograder.preflight import preflight

    said = preflight()
    assert said.startswith("process cap: ") and "a probe in the sandbox was stopped after" in said
    started = int(said.split("stopped after ")[1].split()[0])
    assert started < course_config.MAX_PROCESSES


def test_grading_is_refused_when_no_process_cap_holds(monkeypatch):
    """As root without a cgroup there is no cap (root is exempt from RLIMIT_NPROC): the probe's threads
    are not stopped, and the preflight refuses, unless the course has said it accepts that."""
    from autograder import preflight, sandbox

    monkeypatch.setattr(sandbox.CgroupProcessCap, "ROOTS", ())
    if os.geteuid() != 0:  # an ordinary user always has RLIMIT_NPROC in the sandbox's user namespace
        assert isinstance(sandbox.process_cap(), sandbox.UserNamespaceProcessCap)
        return
    assert isinstance(sandbox.process_cap(), sandbox.NoProcessCap)
    with pytest.raises(sandbox.SandboxUnavailable, match="no process cap holds in the sandbox"):
        preflight.preflight()
    monkeypatch.setattr(course_config, "ALLOW_NO_PROCESS_CAP", True)
    assert preflight.preflight().startswith("process cap: NONE")


def test_a_policy_value_of_the_wrong_kind_names_its_variable():
    for variable, value in (("ATTENTION_SURGEON_MAX_PROCESSES", "lots"), ("ATTENTION_SURGEON_SANDBOX", "maybe"),
                            ("ATTENTION_SURGEON_ALLOW_NO_PROCESS_CAP", "perhaps")):
        result = subprocess.run([sys.executable, "-c", "import course_config"], capture_output=True, text=True,
                                env={**os.environ, variable: value}, cwd=Path(__file__).resolve().parent.parent)
        assert result.returncode != 0 and f"{variable}={value!r}" in result.stderr, result.stderr
