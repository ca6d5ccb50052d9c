"""The sandbox itself: what student code can see, and the refusal to grade when it cannot start."""
from autograder.student import SandboxedStudent
from tests.conftest import make, tree_digest
from tests.students import NB1, reference_answers, student_notebook, write_submission

PROBE = '''
def probe():
    import os, socket
    seen = {"cwd": os.getcwd(), "root": sorted(os.listdir("/")), "uid": os.getuid(), "pids": len([p for p in os.listdir("/proc") if p.isdigit()])}
    try:
        socket.create_connection(("127.0.0.1", 22), timeout=1)
        seen["net"] = "connected"
    except OSError as err:
        seen["net"] = type(err).__name__
    return seen
'''


def test_the_worker_sees_almost_nothing():
    with SandboxedStudent([PROBE]) as student:
        seen = student.call("probe").value
    assert set(seen["root"]) <= {"bin", "dev", "etc", "grader", "lib", "lib64", "proc", "root", "sbin", "sys", "tmp",
                                 "usr", "work"}
    assert "autograder" not in str(seen) and seen["net"] != "connected"
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
