"""The sandbox itself: what student code can see, and the refusal to grade when it cannot start."""
import os
import sys
from pathlib import Path

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
