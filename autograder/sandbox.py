"""How a process that runs student code is started: bubblewrap plus resource limits.

Trusted code. The sandbox sees the Python install and the venv read-only, the
worker's two files, a throw-away /tmp, and nothing else of this repository:
not autograder/, source/, solutions/, the gradebook, or other submissions.
It has no network (a fresh network namespace with only loopback), its own
process namespace (everything in it dies with it), and the limits of
course_config.py.
"""
import os
import resource
import shutil
import sys
from pathlib import Path

import course_config

WORKER_DIR = Path(__file__).resolve().parent / "sandboxed_worker"
SANDBOX_WORKER_DIR = "/grader"  # where the worker's files appear inside the sandbox
FILE_SIZE_LIMIT = 64 << 20  # no file (or pipe of output) written in the sandbox grows past this


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start on this host, and course_config.SANDBOX says it is required."""


def sandbox_enabled():
    if course_config.SANDBOX == "off":
        return False
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so student code cannot be sandboxed. Install it "
            "(Debian: apt-get install bubblewrap) or, on a trusted test machine only, set "
            "ATTENTION_SURGEON_SANDBOX=off (course_config.SANDBOX).")
    return True


def sandbox_prefix(extra_ro_binds=(), extra_binds=(), chdir="/tmp"):
    """The bwrap arguments that wrap a command, or [] when the sandbox is switched off."""
    if not sandbox_enabled():
        return []
    python_homes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    args = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
        "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind-try", "/etc/localtime", "/etc/localtime",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
    ]
    for home in sorted(python_homes):
        args += ["--ro-bind", home, home]
    for device in sorted(Path("/dev").glob("nvidia*")):  # CUDA hosts: the GPU, nothing else
        args += ["--dev-bind", str(device), str(device)]
    for source, target in extra_ro_binds:
        args += ["--ro-bind", str(source), str(target)]
    for source, target in extra_binds:
        args += ["--bind", str(source), str(target)]
    return args + ["--chdir", chdir]


def sandbox_environment(home="/tmp"):
    """The environment of a process that runs student code: nothing of the grader's."""
    return {
        "PATH": f"{os.path.dirname(python_executable())}:/usr/bin:/bin",
        "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.matplotlib", "IPYTHONDIR": f"{home}/.ipython",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def apply_limits():
    """preexec_fn: the memory and file-size caps of course_config, no core dumps."""
    memory = course_config.MEMORY_LIMIT_MB << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def python_executable():
    """The venv's interpreter by its real path: the one path the sandbox can see it under."""
    return os.path.join(os.path.realpath(sys.prefix), "bin", "python")


def worker_command():
    """The command line of a sandboxed worker (autograder/sandboxed_worker/worker.py)."""
    prefix = sandbox_prefix(extra_ro_binds=[(WORKER_DIR, SANDBOX_WORKER_DIR)])
    worker_dir = SANDBOX_WORKER_DIR if prefix else str(WORKER_DIR)
    return prefix + [python_executable(), "-s", "-E", f"{worker_dir}/worker.py"]


def preflight():
    """Start a worker with no student code and call it once; raise SandboxUnavailable if that fails.

    Run before grading anyone: a sandbox that cannot start must stop the grading
    with a clear message, not score every student 0.
    """
    from .student import SandboxedStudent, StudentUnresponsive

    with SandboxedStudent(["def ping():\n    return 'pong'"]) as probe:
        try:
            outcome = probe.call("ping")
        except StudentUnresponsive as err:
            raise SandboxUnavailable(f"the sandboxed worker does not start on this host: {err}. Grading "
                                     f"is refused. See course_config.SANDBOX.") from None
    if outcome.value != "pong":
        raise SandboxUnavailable(f"the sandboxed worker answered {outcome.value!r} to a ping; grading is refused")
