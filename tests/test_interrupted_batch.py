"""A grader killed mid-batch (SIGKILL of `make autograde`'s process group), then run again.

A batch that ends cleanly leaves nothing behind. Before: after a kill, the re-run gave identical
grades, but an empty pids cgroup and the sandboxes' scratch
folders (301 MiB of a student's files) stayed for good. Now every sandbox's cgroup and IPC
folder names the grading process that made it, and `make autograde` sweeps, at start, those
whose process is gone.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autograder.sandbox import CGROUP_PREFIX, IPC_PREFIX, CgroupProcessCap
from tests.conftest import copy_course, make, read_grades, tree_digest, user_env
from tests.students import NB1, reference_answers, student_notebook, write_submission


def leftovers(scratch, pids):
    """This batch's IPC folders, and cgroups named after one of `pids` (its grading processes)."""
    groups = [g for root in CgroupProcessCap.swept_roots() if root.is_dir() for g in root.glob(f"{CGROUP_PREFIX}*")
              if g.name[len(CGROUP_PREFIX):].split("-")[0] in pids]
    return sorted(str(p) for p in scratch.glob(f"{IPC_PREFIX}*")) + sorted(str(g) for g in groups)


def descendants(pid):
    import psutil

    try:
        return {str(p.pid) for p in psutil.Process(pid).children(recursive=True)} | {str(pid)}
    except psutil.NoSuchProcess:
        return set()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = copy_course(tmp_path_factory.mktemp("killed"))
    make(course, "release")
    masks = {k: v for k, v in reference_answers().items() if k in ("create_causal_mask", "create_reverse_mask")}
    write_submission(course, "alice", {NB1: student_notebook(reference_answers())})
    write_submission(course, "bob", {NB1: student_notebook(masks)})
    return course


@pytest.fixture
def scratch():
    """This batch's TMPDIR: its sandboxes' IPC folders go here (a short path, as kernel sockets need)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="killed-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_killed_batch_leaves_nothing_after_the_next_run(course, scratch):
    env = {**user_env(), "TMPDIR": str(scratch)}
    # First a clean batch: it leaves nothing either (before, issue 19: the preflight's empty cgroup stayed).
    clean = subprocess.Popen(["make", "-o", ".venv/.installed", "autograde"], cwd=course, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clean_pids = set()
    while clean.poll() is None:
        clean_pids |= descendants(clean.pid)
        time.sleep(0.05)
    assert clean.returncode == 0 and len(clean_pids) > 1
    assert leftovers(scratch, clean_pids) == [], "a batch that ends cleanly removes every cgroup and folder it made"
    expected, submitted = read_grades(course), tree_digest(course / "submitted")

    batch = subprocess.Popen(["make", "-o", ".venv/.installed", "autograde", "FORCE=1"], cwd=course, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen_pids, deadline = set(), time.monotonic() + 120
    while not list(scratch.glob(f"{IPC_PREFIX}*")) and time.monotonic() < deadline:
        seen_pids |= descendants(batch.pid)
        time.sleep(0.05)
    time.sleep(1.0)  # a kernel and a worker are running: kill the grader in the middle of them
    seen_pids |= descendants(batch.pid)
    os.killpg(batch.pid, signal.SIGKILL)
    batch.wait()
    time.sleep(1.0)
    left = leftovers(scratch, seen_pids)
    print(f"after SIGKILL: {len(left)} leftover(s): {left}")
    assert left, "the kill happened while sandboxes were up (else this test shows nothing)"

    result = make(course, "autograde", env=env)
    assert "leftover sandbox folder(s) and cgroup(s)" in result.stdout
    assert leftovers(scratch, seen_pids) == []
    assert read_grades(course) == expected
    assert tree_digest(course / "submitted") == submitted
    assert not [p for p in Path(scratch).iterdir()], "the re-run leaves its own scratch empty too"


def test_the_sweep_counts_a_zombie_owner_as_gone(scratch, monkeypatch):
    """A grading process killed with its parent is a zombie until the host's init collects it, which some
    inits do only every few seconds: its sandboxes are already gone (they die with it), so the next batch's
    sweep removes its folders and cgroups without waiting for that. A running owner's are kept."""
    from autograder import sandbox

    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(scratch))
    zombie = subprocess.Popen(["true"])  # never waited for (until the end): a zombie of this process
    deadline = time.monotonic() + 30
    while sandbox.process_state(zombie.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sandbox.process_state(zombie.pid) == "Z"
    running = subprocess.Popen(["sleep", "60"])
    try:
        ours = {owner.pid: scratch / f"{IPC_PREFIX}{owner.pid}-abcd1234" for owner in (zombie, running)}
        for folder in ours.values():
            folder.mkdir()
            (folder / "kernel-1").write_text("a sandbox's socket")
        sandbox.sweep_leftovers()
        assert not ours[zombie.pid].exists(), "a zombie owner's sandboxes have ended: its folder goes"
        assert ours[running.pid].exists(), "a running owner's folder stays"
    finally:
        running.kill()
        running.wait()
        zombie.wait()
