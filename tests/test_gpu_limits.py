"""The limits of a sandbox that reaches a GPU, on any host (README.md, "Limits for student code").

A CUDA context reserves address space it never fills (course_config.CUDA_ADDRESS_SPACE_MB says what was
measured on an H200 host: under an address-space cap of 6144 MiB CUDA did not start, and every GPU check
failed for every student). So where a sandbox reaches a GPU its address-space cap leaves room for that, a
memory cgroup caps what it really holds, and the grader asks a sandbox of its own, not a student's, whether
CUDA works there before it decides any GPU check. Here the GPU is stood in for by /dev/null (bound into the
sandbox as a device would be); the memory cgroup is real.
"""
import subprocess
from pathlib import Path

import pytest

import course_config
from autograder import preflight, sandbox
from autograder.sandbox import CgroupProcessCap, limited_command, process_cap, sandbox_environment, sandbox_prefix

ALLOCATE = "import sys; data = b'x' * ({mb} << 20); print('held', len(data) >> 20, 'MiB')"


@pytest.fixture
def a_gpu_host(monkeypatch):
    """This host as the sandbox sees a CUDA host: a device file bound in; a small MEMORY_LIMIT_MB."""
    monkeypatch.setattr(sandbox, "gpu_devices", lambda: [Path("/dev/null")])
    monkeypatch.setattr(course_config, "MEMORY_LIMIT_MB", 512)


def run_sandboxed(code, cap):
    command = limited_command(sandbox_prefix(), [sandbox.python_executable(), "-c", code], cap)
    try:
        return subprocess.run(command, env=sandbox_environment(), capture_output=True, text=True, timeout=120)
    finally:
        cap.kill_all()


def test_the_address_space_cap_leaves_room_for_cuda_only_where_a_gpu_is_reached(a_gpu_host):
    assert sandbox.address_space_bytes() == (512 + course_config.CUDA_ADDRESS_SPACE_MB) << 20
    assert sandbox.address_space_bytes(gpu=False) == 512 << 20
    cap = process_cap()
    try:
        assert f"--as={(512 + course_config.CUDA_ADDRESS_SPACE_MB) << 20}" in limited_command([], ["true"], cap)
    finally:
        cap.kill_all()


def test_with_grade_on_cuda_off_no_gpu_device_reaches_a_sandbox(monkeypatch):
    monkeypatch.setattr(sandbox.Path, "glob", lambda self, pattern: iter([Path("/dev/nvidia0")]))
    monkeypatch.setattr(course_config, "GRADE_ON_CUDA", "auto")
    assert sandbox.gpu_devices() == [Path("/dev/nvidia0")]
    monkeypatch.setattr(course_config, "GRADE_ON_CUDA", "off")
    assert sandbox.gpu_devices() == []
    assert sandbox.address_space_bytes() == course_config.MEMORY_LIMIT_MB << 20


def test_a_memory_cgroup_caps_what_a_gpu_sandbox_holds(a_gpu_host):
    cap = process_cap()
    if not isinstance(cap, CgroupProcessCap) or cap.memory_path is None:
        cap.kill_all()
        pytest.skip("no memory cgroup can be made here (not root, or no memory controller)")
    assert "memory capped at 512 MiB by a memory cgroup" in cap.describe()
    groups = [Path(g).parent for g in cap.procs_files]
    within = run_sandboxed(ALLOCATE.format(mb=128), cap)
    assert within.returncode == 0 and "held 128 MiB" in within.stdout, within.stderr
    assert not any(g.exists() for g in groups), "kill_all removes the sandbox's groups, the memory group too"

    cap = process_cap()
    over = run_sandboxed(ALLOCATE.format(mb=1024), cap)  # within the address-space cap, over the memory cap
    assert "held" not in over.stdout and over.returncode in (-9, 137, 128 + 9), "the memory cgroup killed it"
    assert "MemoryError" not in over.stderr, "not the address-space cap: that one is MEMORY_LIMIT_MB + CUDA's room"


def test_gpu_checks_stay_pending_where_cuda_does_not_work_in_the_sandbox(monkeypatch):
    """torch in the grader sees CUDA; a sandboxed worker cannot use it (here: a CPU build of torch). The
    grader's own probe finds that out, so no student's GPU check is run, let alone failed."""
    import torch

    from autograder.pipeline import gpu_grading_problem, grading_on_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    preflight.cuda_problem_in_the_sandbox.cache_clear()
    try:
        problem = gpu_grading_problem()
        assert problem and "CUDA does not work in the sandbox" in problem and "CUDA" in problem.split(":", 1)[1]
        assert grading_on_cuda() is False
    finally:
        preflight.cuda_problem_in_the_sandbox.cache_clear()
