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
from autograder.checks import run_check
from autograder.sandbox import CgroupProcessCap, limited_command, process_cap, sandbox_environment, sandbox_prefix

ALLOCATE = "import sys; data = b'x' * ({mb} << 20); print('held', len(data) >> 20, 'MiB')"
# Shared anonymous memory, page by page: RLIMIT_DATA does not count it (only private writable memory).
ALLOCATE_SHARED = ("import mmap; m = mmap.mmap(-1, {mb} << 20)\n"
                   "for i in range(0, {mb} << 20, 4096): m[i] = 1\n"
                   "print('held', {mb}, 'MiB')")


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
    shared = run_sandboxed(ALLOCATE_SHARED.format(mb=1024), cap)  # counted by neither rlimit but the address space
    assert "held" not in shared.stdout and shared.returncode in (-9, 137), "the memory cgroup killed it"
    assert "MemoryError" not in shared.stderr


def test_rlimit_data_keeps_memory_limit_mb_in_a_gpu_sandbox(a_gpu_host):
    """Any grader, root or not: a flood of private memory (tensors, bytes) meets MEMORY_LIMIT_MB as a
    MemoryError, though the address space has CUDA's room."""
    private = run_sandboxed(ALLOCATE.format(mb=1024), process_cap())
    assert "MemoryError" in private.stderr and "held" not in private.stdout, private.stdout + private.stderr
    within = run_sandboxed(ALLOCATE.format(mb=128), process_cap())
    assert "held 128 MiB" in within.stdout, within.stderr


def test_the_sweep_removes_a_memory_group_whose_grader_is_gone():
    root = CgroupProcessCap.memory_root_v1()
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 memory hierarchy here")
    gone = subprocess.Popen(["true"])
    gone.wait()
    group = root / f"{sandbox.CGROUP_PREFIX}{gone.pid}-abcd1234"
    try:
        group.mkdir()
    except OSError:
        pytest.skip("this grader may not make memory groups")
    sandbox.sweep_leftovers()
    assert not group.exists()


def test_gpu_checks_stay_pending_where_cuda_does_not_work_in_the_sandbox(monkeypatch):
    """torch in the grader sees CUDA; a sandboxed worker cannot use the checks' device (here a device no host
    has, so this holds on a CUDA host too). The grader's own probe finds that out, so no student's GPU check
    is run, let alone failed, and no later sandbox of this process is given the GPU."""
    import torch

    from autograder.checks import attention_on_cuda
    from autograder.pipeline import grading_on_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_on_cuda, "GPU_DEVICE", "cuda:99")
    monkeypatch.setattr(sandbox, "_gpus_withheld", [])
    monkeypatch.setattr(sandbox.Path, "glob", lambda self, pattern: iter([Path("/dev/null")]))  # a stand-in device
    preflight.cuda_problem_in_the_sandbox.cache_clear()
    try:
        assert sandbox.gpu_devices() == [Path("/dev/null")]
        assert grading_on_cuda() is False
        assert "cuda" in preflight.cuda_problem_in_the_sandbox().lower()
        assert sandbox.gpu_devices() == [], "withheld from every later sandbox"
        assert sandbox.address_space_bytes() == course_config.MEMORY_LIMIT_MB << 20
        verdict = run_check("cuda_causal_mask", student=None)  # the default asks the same question
        assert verdict.status == "pending" and "CUDA" in verdict.message
    finally:
        preflight.cuda_problem_in_the_sandbox.cache_clear()


def test_a_working_probe_lets_gpu_checks_run(monkeypatch):
    """The same probe where the sandbox can compute on the checks' device (the CPU stand-in of tests/test_gpu.py)."""
    import torch

    from autograder.checks import attention_on_cuda
    from autograder.pipeline import grading_on_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention_on_cuda, "GPU_DEVICE", "cpu")
    monkeypatch.setattr(sandbox, "_gpus_withheld", [])
    preflight.cuda_problem_in_the_sandbox.cache_clear()
    try:
        assert preflight.cuda_problem_in_the_sandbox() is None
        assert grading_on_cuda() is True
    finally:
        preflight.cuda_problem_in_the_sandbox.cache_clear()
