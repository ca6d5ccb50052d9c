"""One grading command at a time in a course: one that finds another running changes nothing, says which
one runs, and the lock ends with the process that held it (autograder/batch_lock.py)."""
import subprocess

from tests.conftest import make, tree_digest, user_env

# A grading command that runs until its stdin closes: what `make autograde` holds while it grades.
HOLD = ("import sys\n"
        "from autograder.batch_lock import one_command_at_a_time\n"
        "with one_command_at_a_time('make autograde'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n")
WRITERS = (["autograde"], ["regrade", "CHECK=attention_matches_reference"], ["autograde-gpu"], ["feedback"])


def course_files(course):
    """Every file of the course but the holder's own note and Python's bytecode caches (the refused
    commands imported the package)."""
    return {path: what for path, what in tree_digest(course).items()
            if path != ".grading/batch.lock" and "__pycache__" not in path}


def test_a_second_grading_command_changes_nothing_and_names_the_one_running(course):
    make(course, "release")
    holder = subprocess.Popen([str(course / ".venv" / "bin" / "python"), "-c", HOLD], cwd=course, env=user_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = course_files(course)
        for target in WRITERS:
            result = make(course, *target, check=False)
            assert result.returncode != 0, result.stdout
            assert f"make {target[0]} did not start: make autograde (pid {holder.pid}, started " in result.stdout, \
                result.stdout + result.stderr
            assert "Nothing was changed" in result.stdout
        assert course_files(course) == before, "the refused commands wrote nothing"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # The lock ended with the process that held it: the next command runs.
    result = make(course, "autograde-gpu", check=False)  # no CUDA here: it says so and changes nothing
    assert "did not start" not in result.stdout and result.returncode == 0, result.stdout + result.stderr


def test_a_killed_command_leaves_no_lock_behind(course):
    holder = subprocess.Popen([str(course / ".venv" / "bin" / "python"), "-c", HOLD], cwd=course, env=user_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait(timeout=30)
    result = make(course, "autograde-gpu", check=False)  # no CUDA here: it says so and changes nothing
    assert "did not start" not in result.stdout and result.returncode == 0, result.stdout + result.stderr
