"""How a process that runs student code is started: bubblewrap plus resource limits.

Trusted code. The sandbox sees the Python install and the venv read-only, the
worker's two files, a throw-away /tmp (a tmpfs of SANDBOX_WRITABLE_MB, as is a
kernel's copy of its assignment folder), and nothing else of this repository:
not autograder/, source/, solutions/, the gradebook, or other submissions.
It has no network (a fresh network namespace with only loopback), its own
process namespace (everything in it dies with it), and the limits of
course_config.py. Its process cap is a cgroup where the grader may make one
(root), and RLIMIT_NPROC in its own user namespace where it may not (an
ordinary grader account, as on JupyterHub): see `process_cap`.
"""
import errno
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from pathlib import Path

import course_config

from .sandboxed_worker import protocol

log = logging.getLogger(__name__)

WORKER_DIR = Path(__file__).resolve().parent / "sandboxed_worker"
SANDBOX_WORKER_DIR = "/grader"  # where the worker's files appear inside the sandbox
TEMPLATE_SCRIPT = f"{SANDBOX_WORKER_DIR}/kernel.py"  # a submission's kernel template runs it with --template


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start on this host, and course_config.SANDBOX says it is required."""


def sandbox_enabled():
    if course_config.SANDBOX == "off":
        return False
    if not os.access(course_config.BWRAP, os.X_OK):
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so student code cannot be sandboxed. Install it "
            "(Debian: apt-get install bubblewrap) or, on a trusted test machine only, set "
            "ATTENTION_SURGEON_SANDBOX=off (course_config.SANDBOX).")
    return True


def sandbox_prefix(extra_ro_binds=(), extra_binds=(), extra_tmpfs=(), chdir="/tmp"):
    """The bwrap arguments that wrap a command, or [] when the sandbox is switched off."""
    if not sandbox_enabled():
        return []
    python_homes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    args = [
        course_config.BWRAP, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
        "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind-try", "/etc/localtime", "/etc/localtime",
        "--ro-bind-try", "/etc/fonts", "/etc/fonts",  # matplotlib's fontconfig (else it prints an error)
        "--proc", "/proc", "--dev", "/dev",
        # Every writable place is a tmpfs of its own size: tmpfs pages are the host's RAM, and
        # neither RLIMIT_AS nor the file-size cap counts them. (bwrap's own root and /dev are unsized
        # tmpfs: both are made read-only at the end, see `_READ_ONLY_AT_THE_END`.)
        "--size", str(writable_bytes()), "--tmpfs", "/tmp",
        "--size", str(writable_bytes()), "--tmpfs", "/dev/shm",
    ]
    for home in sorted(python_homes):
        args += ["--ro-bind", home, home]
    gpus = gpu_devices()
    for device in gpus:  # CUDA hosts: the GPU devices, and /sys read-only for the CUDA runtime
        args += ["--dev-bind", str(device), str(device)]
    if gpus:
        args += ["--ro-bind", "/sys", "/sys"]
    for source, target in extra_ro_binds:
        args += ["--ro-bind", str(source), str(target)]
    for source, target in extra_binds:
        args += ["--bind", str(source), str(target)]
    for target in extra_tmpfs:  # a path (SANDBOX_WRITABLE_MB), or (path, size in bytes)
        target, size = target if isinstance(target, tuple) else (target, writable_bytes())
        args += ["--size", str(size), "--tmpfs", str(target)]
    return args + _READ_ONLY_AT_THE_END + ["--chdir", chdir]


# bwrap builds the sandbox's root and /dev as tmpfs without a size: writable, they would let student
# code fill the host's RAM (measured: 50 MB written to / and to /dev, root or not). Once every mount
# point exists, both become read-only; the sized tmpfs mounted on them stay writable.
_READ_ONLY_AT_THE_END = ["--remount-ro", "/dev", "--remount-ro", "/"]


def writable_bytes():
    return course_config.SANDBOX_WRITABLE_MB << 20


_gpus_withheld = []  # why, once the grader's own probe found that CUDA does not work in a sandbox here


def gpu_devices():
    """The host's NVIDIA device files a sandbox is given: none where there are none, where
    course_config.GRADE_ON_CUDA is "off" (the GPU is kept free of student code), or once
    `withhold_gpus` was called in this process."""
    if course_config.GRADE_ON_CUDA == "off" or _gpus_withheld:
        return []
    return sorted(Path("/dev").glob("nvidia*"))


def withhold_gpus(why):
    """From now on, no sandbox this process starts reaches a GPU, nor gets the address space CUDA needs:
    the grader's probe (`preflight.cuda_problem_in_the_sandbox`) found that CUDA does not work there."""
    _gpus_withheld.append(why)


def _gpu_memory_bounds():
    return (f"private memory is capped by RLIMIT_DATA ({course_config.MEMORY_LIMIT_MB} MiB), shared memory only by "
            f"the address-space cap ({address_space_bytes() >> 20} MiB)")


def address_space_bytes(gpu=None):
    """RLIMIT_AS of a sandboxed process: MEMORY_LIMIT_MB, plus CUDA_ADDRESS_SPACE_MB where the sandbox
    reaches a GPU (`gpu`: whether it does; asked of the host if None). A CUDA context reserves address space
    it never fills (course_config.CUDA_ADDRESS_SPACE_MB says what was measured): under MEMORY_LIMIT_MB
    alone CUDA does not start. There RLIMIT_DATA (`limited_command`) and, where the grader may make one,
    a memory cgroup (`CgroupProcessCap`, `memory_bytes`) bound the memory the sandbox really uses."""
    gpu = bool(gpu_devices()) if gpu is None else gpu
    return (course_config.MEMORY_LIMIT_MB + (course_config.CUDA_ADDRESS_SPACE_MB if gpu else 0)) << 20


def sandbox_environment(home="/tmp"):
    """The environment of a process that runs student code: nothing of the grader's."""
    return {
        "PATH": f"{os.path.dirname(python_executable())}:/usr/bin:/bin",
        "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.matplotlib", "IPYTHONDIR": f"{home}/.ipython",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        protocol.LIMITS_VARIABLE: json.dumps(protocol.wire_limits()),
    }


# Names of what a sandbox leaves on the host while it runs, with the pid of the grading process that
# made it: once that process is gone (its sandboxes die with it), `sweep_leftovers` may remove them.
CGROUP_PREFIX = "attention-surgeon-"
IPC_PREFIX = "as-ipc-"
LEGACY_KERNEL_PREFIX = "attention-surgeon-kernel-"  # scratch folders of earlier versions
TASK_PREFIX = "attention-surgeon-task-"  # a grading host's folder of throw-away courses (grading_task.py)


class CgroupProcessCap:
    """A cgroup 'pids' group for one sandbox: caps its processes and threads, and kills them all. With
    `memory_bytes` (a sandbox that reaches a GPU, `process_cap`), its 'memory' controller also caps what
    its processes hold in RAM, their tmpfs files included: there the address-space cap must leave room for
    CUDA's reservations (`address_space_bytes`), so it no longer bounds the memory used.

    Needs a pids controller this process may write to (root, cgroup v1 or v2). A
    process joins the group by writing its pid to each of `procs_files` before it execs (see
    `limited_command`); its children stay in. Where no group can be made, `available`
    is False and `process_cap` picks another mechanism. Where the memory group cannot be made,
    `memory_path` is None and `describe` says so.
    """

    ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
    prlimit_options = ()

    @staticmethod
    def memory_root_v1():
        """cgroup v1: where a sandbox's memory group is made, inside the grader's own memory group (so any
        limit set on the grader, by systemd say, holds for its sandboxes too). cgroup v2 has one tree: there
        the cap is set on the pids group itself."""
        for line in _read("/proc/self/cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        return Path("/sys/fs/cgroup/memory")

    @classmethod
    def swept_roots(cls):
        """Where a grader killed mid-batch can have left groups (`sweep_leftovers`)."""
        return list(dict.fromkeys([*cls.ROOTS, cls.memory_root_v1()]))

    def __init__(self, limit=None, memory_bytes=None):
        self.path = None
        self.memory_path = None
        self.limit = limit or course_config.MAX_PROCESSES
        self.memory_bytes = memory_bytes
        name = f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for root in self.ROOTS:
            if not (root / "cgroup.procs").exists():
                continue
            if root == Path("/sys/fs/cgroup") and "pids" not in _read(root / "cgroup.controllers"):
                continue
            path = root / name
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(self.limit))
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
                continue
            self.path = path
            break
        if self.path is not None and memory_bytes:
            self.memory_path = self._memory_group(name, memory_bytes)

    def _memory_group(self, name, memory_bytes):
        """The group whose memory controller caps the sandbox at `memory_bytes` (no swap), or None."""
        if self.path.parent == Path("/sys/fs/cgroup"):  # v2: the same group
            if "memory" not in _read(self.path.parent / "cgroup.subtree_control").split():
                return None
            path, limits = self.path, {"memory.max": memory_bytes, "memory.swap.max": 0}
        elif ((root := self.memory_root_v1()) / "cgroup.procs").exists():
            path = root / name
            limits = {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}
            try:
                path.mkdir()
            except OSError:
                return None
        else:
            return None
        for index, (knob, value) in enumerate(limits.items()):
            try:
                (path / knob).write_text(str(value))
            except OSError:
                if index == 0:  # the cap itself; the swap knob exists only where swap is accounted
                    if path != self.path:
                        shutil.rmtree(path, ignore_errors=True)
                    return None
        return path

    @classmethod
    def existing(cls, path):
        """The group at `path`, made by an earlier grading process (to empty and remove it)."""
        cap = cls.__new__(cls)
        cap.path, cap.memory_path = path, None
        return cap

    @property
    def available(self):
        return self.path is not None

    def describe(self):
        text = f"a cgroup ({self.path.parent}, pids.max = {self.limit})"
        if self.memory_bytes and self.memory_path:
            text += f", memory capped at {self.memory_bytes >> 20} MiB by a memory cgroup ({self.memory_path.parent})"
        elif self.memory_bytes:
            text += f"; NO memory cgroup could be made: {_gpu_memory_bounds()}"
        return text

    @property
    def procs_files(self):
        if not self.path:
            return ["/dev/null"]
        return [str(p / "cgroup.procs") for p in dict.fromkeys(filter(None, (self.path, self.memory_path)))]

    @property
    def procs_file(self):
        return self.procs_files[0]

    def pids(self):
        return [int(p) for p in _read(self.procs_file).split()] if self.path else []

    def kill_all(self):
        """SIGKILL everything in the group, until it is empty; then remove the group, and its memory group
        (cgroup v1) likewise."""
        memory = CgroupProcessCap.existing(self.memory_path) if self.memory_path not in (None, self.path) else None
        self._empty_and_remove()
        if memory is not None:
            memory._empty_and_remove()
            self.memory_path = memory.path
        elif self.memory_path is not None:  # cgroup v2: the same group
            self.memory_path = self.path

    def _empty_and_remove(self):
        if not self.path:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)  # killed processes leave the group once they are reaped
        try:
            self.path.rmdir()
            self.path = None
        except FileNotFoundError:
            self.path = None  # removed by another call (a sandbox stopped twice)
        except OSError:
            pass  # still busy: a later kill_all (or the next grading run) removes it


class UserNamespaceProcessCap:
    """RLIMIT_NPROC, set inside the sandbox: the cap of an ordinary (not root) grader account.

    Linux counts RLIMIT_NPROC per user *and user namespace*, and every sandbox has a
    user namespace of its own (bwrap --unshare-all), so the limit counts exactly the
    sandbox's processes and threads, not the grader's others. It is set by `prlimit`
    inside the sandbox, after the namespace exists: set outside, it would also count
    every other process of the grader account. Root is exempt from RLIMIT_NPROC,
    which is why root graders use a cgroup. Killing needs no group: the sandbox's pid
    namespace ends every process in it when bwrap goes.
    """

    procs_files = ["/dev/null"]
    available = True

    def __init__(self, limit=None):
        self.limit = limit or course_config.MAX_PROCESSES

    @property
    def prlimit_options(self):
        return (f"--nproc={self.limit}",)

    def describe(self):
        text = f"RLIMIT_NPROC = {self.limit} inside the sandbox's user namespace (grader uid {os.geteuid()})"
        if gpu_devices():
            text += f"; the sandbox reaches a GPU and an ordinary user makes no memory cgroup: {_gpu_memory_bounds()}"
        return text

    def kill_all(self):
        pass  # the pid namespace does it


class NoProcessCap:
    """No mechanism on this host: the pid namespace still ends every process, but a fork bomb runs
    until the memory cap or a time limit stops it. The preflight refuses to grade with this unless
    course_config.ALLOW_NO_PROCESS_CAP says otherwise."""

    procs_files = ["/dev/null"]
    prlimit_options = ()
    available = False

    def describe(self):
        return "none"

    def kill_all(self):
        pass


def process_cap(limit=None):
    """The process cap for one new sandbox: a cgroup where the grader can make one, else RLIMIT_NPROC
    in the sandbox's user namespace (a grader that is not root), else none."""
    cgroup = CgroupProcessCap(limit, memory_bytes=course_config.MEMORY_LIMIT_MB << 20 if gpu_devices() else None)
    if cgroup.available:
        return cgroup
    if sandbox_enabled() and os.geteuid() != 0:
        return UserNamespaceProcessCap(limit)
    return NoProcessCap()


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def limited_command(sandbox, command, cap):
    """`command` in the sandbox (`sandbox`: the bwrap arguments, or [] with the sandbox off), with
    `cap` and the memory and file-size caps of course_config. The cgroup is joined outside, before
    bwrap starts; the rlimits are set inside, where RLIMIT_NPROC counts the sandbox's user namespace.
    The address-space cap leaves room for CUDA's reservations where the sandbox reaches a GPU
    (`address_space_bytes`)."""
    gpu = bool(gpu_devices())
    # Where the sandbox reaches a GPU, RLIMIT_DATA (private writable memory: what a flood of tensors or
    # bytes takes) keeps MEMORY_LIMIT_MB: CUDA's reservations are not counted in it (measured on an H200
    # host: CUDA starts and computes under RLIMIT_DATA = 6144 MiB), and an ordinary grader, who makes no
    # memory cgroup, still has a cap that a MemoryError reports.
    data = [f"--data={course_config.MEMORY_LIMIT_MB << 20}"] if gpu else []
    limits = ["prlimit", f"--as={address_space_bytes(gpu)}", *data, f"--fsize={course_config.FILE_SIZE_LIMIT_MB << 20}",
              "--core=0", *cap.prlimit_options, "--"]
    groups = " ".join(cap.procs_files)  # cgroup paths: made here, no spaces
    # A group that cannot be joined stops the sandbox (status 125) rather than leave it uncapped.
    return ["/bin/sh", "-c", 'for group in $0; do echo $$ > "$group" || exit 125; done; exec "$@"', groups,
            *sandbox, *limits, *command]


# Inside the sandbox: the kernel's assignment folder, read-only, before it is copied into its tmpfs.
SANDBOX_ASSIGNMENT_DIR = "/assignment"
# Copy the assignment folder (not its notebooks) into the kernel's sized tmpfs, then start the kernel.
# A copy that does not fit stops at the cap; the kernel starts anyway, and a cell that needs a
# missing file fails in the student's own notebook.
COPY_THEN_EXEC = 'cp -R "$0"/. . 2>/dev/null; find . -name "*.ipynb" -delete; exec "$@"'


# Inside the sandbox: the folder of the kernel's IPC sockets, a tmpfs of its own (sockets take no
# space; the size only stops a flood). The grader reaches the sockets from outside through the
# sandbox's root as the host's /proc shows it (`sandboxed_ipc_path`): no folder of the host is writable.
SANDBOX_IPC_DIR = "/ipc"
SANDBOX_IPC_BYTES = 1 << 20
# In a submission's template sandbox: a tmpfs of SANDBOX_WRITABLE_MB whose folders are its kernels' working
# folders (each a copy of the submission's folder).
TEMPLATE_WORK_DIR = "/kernels"


# How a python kernelspec starts ipykernel; a kernel started so is started by the launcher below instead.
IPYKERNEL_LAUNCHER = ["-m", "ipykernel_launcher"]
# The socket the kernel's launcher answers the hidden checks on, in the kernel's IPC folder.
CHECKS_SOCKET_NAME = "checks"


def kernel_argv_with_checks(kernel_argv, worker_dir):
    """The kernel's command line with sandboxed_worker/kernel.py (ipykernel, plus the hidden checks'
    socket) in place of ipykernel_launcher. A kernelspec of another kind is left as it is: its
    notebook's checks are answered by a worker. (A kernel forked by a submission's template is always
    kernel.py's ipykernel, with the kernelspec's other options.)"""
    argv = [python_executable(), *kernel_argv[1:]]
    if argv[1:3] == IPYKERNEL_LAUNCHER:
        argv[1:3] = [f"{worker_dir}/kernel.py"]
    return argv


def kernel_command(kernel_argv, assignment_dir, work_dir, connection_file, cap):
    """The student's Jupyter kernel in the sandbox. Its cwd, `work_dir`, is a tmpfs of
    SANDBOX_WRITABLE_MB holding a copy of its assignment folder; its sockets (ZeroMQ's, and the one it
    answers the hidden checks on) are in SANDBOX_IPC_DIR, a tmpfs of its own; it reads its connection
    file and the launcher's files (read-only) and sees nothing else of the host."""
    prefix = sandbox_prefix(extra_ro_binds=[(assignment_dir, SANDBOX_ASSIGNMENT_DIR),
                                            (connection_file, connection_file), (WORKER_DIR, SANDBOX_WORKER_DIR)],
                            extra_tmpfs=[work_dir, (SANDBOX_IPC_DIR, SANDBOX_IPC_BYTES)], chdir=str(work_dir))
    argv = kernel_argv_with_checks(kernel_argv, SANDBOX_WORKER_DIR if prefix else str(WORKER_DIR))
    if not prefix:  # no sandbox (a trusted test machine): a copy on the host's disk
        shutil.copytree(assignment_dir, work_dir, ignore=shutil.ignore_patterns("*.ipynb"), symlinks=False)
        return limited_command([], argv, cap)
    # In its own pid namespace the kernel's parent is pid 1, which ipykernel's parent
    # poller would take for "my parent died". bwrap's --die-with-parent does that job.
    prefix += ["--unsetenv", "JPY_PARENT_PID"]
    return limited_command(prefix, ["/bin/sh", "-c", COPY_THEN_EXEC, SANDBOX_ASSIGNMENT_DIR] + argv, cap)


def _children(pid):
    """The host's pids of the children of process `pid` (of every thread of it)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").glob("*") for child in _read(task / "children").split()]


def sandbox_root(launched_pid, timeout=30.0):
    """The host's path of the root folder of the sandbox that `launched_pid` (the bwrap process a
    Popen started) set up: /proc/<pid>/root of bwrap's first process inside the sandbox, once it is
    there. Paths under it lead into the sandbox's own (tmpfs) folders."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(launched_pid):
            root = Path(f"/proc/{child}/root")
            try:
                if os.stat(root).st_ino != os.stat("/").st_ino or os.stat(root).st_dev != os.stat("/").st_dev:
                    return root
            except OSError:
                pass
        if not Path(f"/proc/{launched_pid}").exists():
            break
        time.sleep(0.01)
    raise RuntimeError("the kernel's sandbox did not start")


# Linux shares the CPU between sessions first (autogroups, sched(7), where the kernel schedules by them:
# kernel.sched_autogroup_enabled, and no CPU cgroup of a container or a systemd slice over them): a process's
# nice value counts only against the other processes of its own session, and every sandbox is a session
# of its own (bwrap --new-session). So the kernel template of the next submission, which the grader does
# not wait for yet, is put in the background through its session: /proc/<pid>/autogroup.
BACKGROUND_NICE = 19  # the lowest priority: the CPU time nothing else of the host wants
# Without CAP_SYS_ADMIN, one autogroup change per 100 ms is allowed host-wide (EAGAIN before): tried again
# for this long.
AUTOGROUP_RETRY_S = 0.5


def process_folder(pid):
    """A handle (a directory fd) on /proc/<pid>: what is read or written through it is that process's,
    or fails once it has ended, even if its pid is used again. None if it has ended already."""
    try:
        return os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def set_session_priority(folder, nice, stop=None):
    """Set the CPU priority of the session (autogroup) of the process whose /proc folder `folder` is
    (`process_folder`) to `nice` (0: the normal; BACKGROUND_NICE), unless that session is this process's
    own. True once set; False if the host refuses, the process has ended, or `stop` (an Event) is set."""
    try:
        with open(os.open("stat", os.O_RDONLY, dir_fd=folder)) as stat:  # "pid (comm) state ppid pgrp session ..."
            session = int(stat.read().rsplit(")", 1)[1].split()[3])
        if session == os.getsid(0):
            return False
    except (OSError, ValueError, IndexError):
        return False
    deadline = time.monotonic() + AUTOGROUP_RETRY_S
    while stop is None or not stop.is_set():
        try:
            with open(os.open("autogroup", os.O_WRONLY, dir_fd=folder), "w") as autogroup:
                autogroup.write(str(nice))
            return True
        except OSError as err:
            if err.errno != errno.EAGAIN or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
    return False


def sandboxed_python(launched, script, timeout, stop=None):
    """The host's pid of the Python process running `script` (its path in the sandbox) that `launched`
    (the Popen of a `limited_command`) started, once it runs; None if it is not there within `timeout`
    seconds, `launched` has ended, or `stop` (an Event) is set."""
    deadline = time.monotonic() + timeout
    while stop is None or not stop.is_set():
        waiting = [launched.pid]
        while waiting:
            pid = waiting.pop()
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if script.encode() in argv[1:4]:  # python [-s -E] <script>: not bwrap's own command line
                return pid
            waiting += _children(pid)
        if time.monotonic() >= deadline or launched.poll() is not None:
            return None
        time.sleep(0.005)
    return None


def python_executable():
    """The venv's interpreter by its real path: the one path the sandbox can see it under."""
    return os.path.join(os.path.realpath(sys.prefix), "bin", "python")


def worker_command(cap, purpose="checks"):
    """The command line of a sandboxed worker (autograder/sandboxed_worker/worker.py). `purpose` (checks,
    preflight, ...) is its one argument: the worker ignores it; `ps` shows it."""
    prefix = sandbox_prefix(extra_ro_binds=[(WORKER_DIR, SANDBOX_WORKER_DIR)])
    worker_dir = SANDBOX_WORKER_DIR if prefix else str(WORKER_DIR)
    return limited_command(prefix, [python_executable(), "-s", "-E", f"{worker_dir}/worker.py", purpose], cap)


# A Unix socket path holds at most 107 bytes; the kernel's sockets are "<dir>/kernel-<port>".
MAX_SOCKET_DIR = 80


def _short_temp_dir():
    """TMPDIR when socket paths in it fit, else /tmp: with a long TMPDIR the kernel could not
    bind its sockets, and nbclient would wait for it instead of failing."""
    base = tempfile.gettempdir()
    return base if len(base) + len(f"/{IPC_PREFIX}4194304-xxxxxxxx") <= MAX_SOCKET_DIR else "/tmp"


class TemplateUnavailable(RuntimeError):
    """The submission's template cannot fork a kernel. If it did not start, each notebook's kernel
    starts in a sandbox of its own; if it stopped answering (a kernel it forked can reach it: the
    student's own doing), the notebook being started is not run (its checks are decided by a worker)
    and the later ones get a sandbox each."""


class SubmissionTemplate:
    """One submission's kernel template: a sandboxed process that has imported torch, numpy, matplotlib
    and ipykernel, and forks one kernel for each notebook of the submission (sandboxed_worker/kernel.py,
    `serve_forks`). So those imports are paid once per submission, not once per notebook.

    Its sandbox is the submission's: the submission's folder read-only at /assignment, each kernel's
    working folder in one tmpfs (/kernels, SANDBOX_WRITABLE_MB; emptied before each fork), the kernels'
    sockets in its IPC tmpfs,
    one process cap for all its processes, the memory and file-size caps on each. It is never shared
    with another submission: `close` kills it and everything it forked, when the submission ends.

    Starting it takes seconds (its imports): `__init__` returns at once and `ready` waits for it. So a
    grading process can start the template of its next submission (`start_next_template`) while it
    grades the current one, in a sandbox whose /assignment is an empty folder that receives the next
    submission's files when it comes. Such a template is started in the `background`, at the host's
    lowest CPU priority (`set_session_priority`, from a thread of this process), so its imports yield the
    cores to the submission being graded; it is back at the normal priority (`foreground`) once its
    submission takes it.
    """

    START_TIMEOUT_S = 60  # the template's imports (a few seconds)
    PRIORITY_TIMEOUT_S = 5  # for its Python process to be there (bwrap's start: about 30 ms measured)
    FORK_TIMEOUT_S = 10  # a fork takes milliseconds
    MAX_REPLY_BYTES = 4096

    def __init__(self, assignment_dir, background=False):
        self.cap = process_cap()
        self.folder = Path(assignment_dir)
        prefix = sandbox_prefix(extra_ro_binds=[(assignment_dir, SANDBOX_ASSIGNMENT_DIR), (WORKER_DIR, SANDBOX_WORKER_DIR)],
                                extra_tmpfs=[TEMPLATE_WORK_DIR, (SANDBOX_IPC_DIR, SANDBOX_IPC_BYTES)],
                                chdir=TEMPLATE_WORK_DIR)
        command = [python_executable(), TEMPLATE_SCRIPT, "--template", f"{SANDBOX_IPC_DIR}/template"]
        self.process = subprocess.Popen(limited_command(prefix, command, self.cap), stdin=subprocess.DEVNULL,
                                        env=sandbox_environment(home=TEMPLATE_WORK_DIR), start_new_session=True)
        self.forked = 0
        self._replies = b""
        self._control = None
        self._folder = None  # /proc/<pid> of its Python process, once it is put in the background
        self._lowering = None
        if background:  # by a thread: the grading process does not wait for bwrap's start, nor for the host
            self._stop_lowering = threading.Event()
            self._lowering = threading.Thread(target=self._lower, name="template-priority", daemon=True)
            self._lowering.start()

    def _lower(self):
        pid = sandboxed_python(self.process, TEMPLATE_SCRIPT, self.PRIORITY_TIMEOUT_S, stop=self._stop_lowering)
        folder = process_folder(pid) if pid is not None else None
        if folder is not None and set_session_priority(folder, BACKGROUND_NICE, stop=self._stop_lowering):
            self._folder = folder
        elif folder is not None:
            os.close(folder)

    def _end_lowering(self):
        """The thread that puts it in the background ended (at once: it stops waiting when told); the
        /proc handle of its Python process if it did."""
        if self._lowering is not None:
            self._stop_lowering.set()
            self._lowering.join()
            self._lowering = None
        folder, self._folder = self._folder, None
        return folder

    def foreground(self):
        """The normal CPU priority again, for a template started in the background that its submission
        now takes. False if it stays in the background (the host refused the change)."""
        folder = self._end_lowering()
        if folder is None:  # never in the background
            return True
        try:
            return set_session_priority(folder, 0)
        finally:
            os.close(folder)

    def ready(self):
        """Wait until the template has made its imports and listens (at once if it already does); raise
        TemplateUnavailable (and kill it) if it does not within START_TIMEOUT_S."""
        if self._control is not None:
            return self
        try:
            self.root = sandbox_root(self.process.pid, timeout=self.START_TIMEOUT_S)
            self._control = self._connect(time.monotonic() + self.START_TIMEOUT_S)
            self.template_pid = self._find_template_pid()
        except (RuntimeError, OSError) as err:
            self.close()
            raise TemplateUnavailable(f"the submission's kernel template did not start: {err}") from None
        return self

    def _connect(self, deadline):
        path = f"{self.root}{SANDBOX_IPC_DIR}/template"
        while True:
            control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                control.connect(path)
                return control
            except OSError:
                control.close()
                if time.monotonic() >= deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def fork(self, connection_info, env, arguments=()):
        """Fork a kernel with `connection_info` (its connection file, whose ip is a path under
        SANDBOX_IPC_DIR/<name>/), `env` (which names its checks socket, protocol.CHECKS_SOCKET_VARIABLE)
        and ipykernel's other `arguments`; return it as a ForkedKernel.
        The template is the student's process too (a kernel it forked can write on its socket): its reply
        is read within FORK_TIMEOUT_S and MAX_REPLY_BYTES, and the pid it names must be one of its own
        children. Otherwise the template is killed and TemplateUnavailable raised."""
        self.ready()
        self.forked += 1
        name = f"kernel-{self.forked}"
        request = {"connection": dict(connection_info), "folder": f"{TEMPLATE_WORK_DIR}/{name}",
                   "arguments": list(arguments),
                   "env": dict(env, HOME=f"{TEMPLATE_WORK_DIR}/{name}",
                               MPLCONFIGDIR=f"{TEMPLATE_WORK_DIR}/{name}/.matplotlib",
                               IPYTHONDIR=f"{TEMPLATE_WORK_DIR}/{name}/.ipython")}
        deadline = time.monotonic() + self.FORK_TIMEOUT_S
        try:
            self._control.settimeout(self.FORK_TIMEOUT_S)
            self._control.sendall(protocol.dumps(request))
            while b"\n" not in self._replies:
                self._control.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self._control.recv(4096)
                if not chunk:
                    raise EOFError("the template closed its socket")
                self._replies += chunk
                if len(self._replies) > self.MAX_REPLY_BYTES or time.monotonic() > deadline:
                    raise TimeoutError("no reply of the template's kind")
            line, _, self._replies = self._replies.partition(b"\n")
            inner_pid = protocol.loads(line)["pid"]
            return ForkedKernel(self._child(int(inner_pid)))
        except (OSError, EOFError, KeyError, TypeError, ValueError, protocol.ProtocolError) as err:
            self.close()
            raise TemplateUnavailable(f"the submission's kernel template did not fork a kernel: {err}") from None

    def _child(self, inner_pid):
        """The host's pid of the template's own child whose pid in the sandbox is `inner_pid`."""
        for child in _children(self.template_pid):
            for line in _read(f"/proc/{child}/status").splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == str(inner_pid):
                    return child
        raise ProcessLookupError(f"the template has no child {inner_pid}")

    def _find_template_pid(self):
        """The host's pid of the template's Python process (bwrap's descendant that runs kernel.py)."""
        pid = sandboxed_python(self.process, TEMPLATE_SCRIPT, timeout=0)
        if pid is None:
            raise ProcessLookupError("the template's process is not there")
        return pid

    def alive(self):
        return self.process.poll() is None

    def close(self):
        """Kill the template, every kernel it forked and everything they started (again: harmless)."""
        folder = self._end_lowering()
        if folder is not None:
            os.close(folder)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.cap.kill_all()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        control = getattr(self, "_control", None)
        if control is not None:
            control.close()
            self._control = None


class ForkedKernel:
    """A kernel the submission's template forked, as jupyter_client's provisioner uses a Popen: poll, wait,
    signals, through a pidfd (the pid itself may be reused once the kernel ends: the template does not
    wait for its children). It leads its own process group (it called setsid). Its exit status belongs
    to the template, so a kernel that ended reports -SIGKILL: "gone"."""

    stdin = stdout = stderr = None

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None
        self._pidfd = os.pidfd_open(pid)
        self._close = weakref.finalize(self, os.close, self._pidfd)

    def poll(self):
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self.returncode = -signal.SIGKILL
            self._close()
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum):
        if self.poll() is None:
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except (ProcessLookupError, OSError):
                pass

    def kill(self):
        """SIGKILL to the kernel's process group (what it started and left there), then to the kernel."""
        if self.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the pidfd says the kernel, its leader, is still there
            except (ProcessLookupError, PermissionError):
                pass
            self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)


# The submission being graded in this process, whose template forks its notebooks' kernels
# (`grading_submission`), and its template once one was needed.
_submission = {"folder": None, "template": None, "failed": False, "scratch": None}
# The template started for the next submission this process grades (`start_next_template`); its
# folder, the one it shows at /assignment, starts empty.
_next = {"template": None}
NEXT_SUBMISSION_PREFIX = "next-submission-"  # + the grading process's pid: that folder's name


def start_next_template(scratch):
    """Start, now, the kernel template of the next submission this process will grade, in a sandbox whose
    /assignment is a new empty folder in `scratch`: it makes its imports (seconds) while this process
    grades the current submission or waits for the next, in the background (the host's lowest CPU
    priority). The next submission that starts a kernel gets it (`submission_template`), with that
    submission's files, at the normal priority again; it serves no other submission. Nothing happens
    with the sandbox off, or when one is started already."""
    if _next["template"] is not None or not sandbox_enabled():
        return
    folder = Path(tempfile.mkdtemp(prefix=f"{NEXT_SUBMISSION_PREFIX}{os.getpid()}-", dir=scratch))
    try:
        _next["template"] = SubmissionTemplate(folder, background=True)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("the next submission's kernel template did not start (%s); it starts with the submission", err)
        shutil.rmtree(folder, ignore_errors=True)


def _end_started_ahead(template):
    """Kill a template started ahead and remove its own folder."""
    template.close()
    shutil.rmtree(template.folder, ignore_errors=True)


def close_next_template():
    """End the template started for a next submission that will not come (this process stops)."""
    template, _next["template"] = _next["template"], None
    if template is not None:
        _end_started_ahead(template)


def _take_next_template(assignment_dir):
    """The template started for the next submission, now this one's: `assignment_dir`'s files copied into
    the folder it shows at /assignment. None when none was started or it has ended."""
    template, _next["template"] = _next["template"], None
    if template is None:
        return None
    if not template.alive():
        _end_started_ahead(template)
        return None
    try:
        shutil.copytree(assignment_dir, template.folder, symlinks=True, dirs_exist_ok=True)
    except OSError as err:
        log.warning("the submission's files could not be given to its kernel template (%s); another starts", err)
        _end_started_ahead(template)
        return None
    if not template.foreground():  # it would hold its submission up while the host is busy: another starts
        log.warning("the kernel template started ahead could not be given the normal CPU priority; another starts")
        _end_started_ahead(template)
        return None
    return template


@contextmanager
def grading_submission(assignment_dir, scratch=None):
    """While one submission is graded in this process: its notebooks' kernels are forked by one template,
    started on the first kernel's start (`submission_template`), which is killed, with every kernel, when
    the block ends. With `scratch` (a folder of this process), that template is the one started ahead
    (`start_next_template`) when there is one, and taking it starts the next submission's, beside this
    one's grading. A submission that runs no notebook starts no template and takes none."""
    _submission.update(folder=Path(assignment_dir), template=None, failed=False, scratch=scratch)
    try:
        yield
    finally:
        template = _submission["template"]
        _submission.update(folder=None, template=None, failed=False, scratch=None)
        if template is not None:
            if template.folder != Path(assignment_dir):  # started ahead: its own folder
                _end_started_ahead(template)
            else:
                template.close()


def template_failed(why):
    """The submission's template stopped forking: its later notebooks' kernels get a sandbox each."""
    log.warning("%s; each notebook's kernel starts in a sandbox of its own", why)
    _submission["failed"] = True


def pid_namespace(pid):
    """(device, inode) of the pid namespace of host process `pid`; None if it is gone."""
    try:
        found = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return found.st_dev, found.st_ino


def submission_template():
    """The template of the submission being graded, started now if need be; None when there is none
    (no submission is being graded here, the sandbox is off, or its template could not start or died:
    then each kernel starts in a sandbox of its own, as without a template)."""
    if _submission["folder"] is None or _submission["failed"] or not sandbox_enabled():
        return None
    try:
        if _submission["template"] is None and _submission["scratch"] is not None:
            _submission["template"] = _take_next_template(_submission["folder"])
            start_next_template(_submission["scratch"])  # the next submission's, while this one is graded
        if _submission["template"] is None:
            _submission["template"] = SubmissionTemplate(_submission["folder"])
        _submission["template"].ready()
    except (TemplateUnavailable, OSError, subprocess.SubprocessError) as err:
        template_failed(err)
        return None
    template = _submission["template"]
    return template if template.alive() else None


def sandboxed_kernel_manager_class():
    """A jupyter_client kernel manager whose kernels start in the sandbox.

    The kernel talks to nbclient over IPC sockets in a private folder (the
    sandbox has no network, not even the host's loopback), runs in a throw-away
    copy of its assignment folder, and is killed with all its processes on shutdown.
    """
    from jupyter_client.manager import AsyncKernelManager

    class _SandboxedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.ipc_dir = None  # the kernel's sockets: a short path of its own (see _short_temp_dir)
            self.cap = None
            self.template = None  # the submission's template, when it forks this kernel
            self.sandbox_pid = None  # the host's pid of a process in the kernel's pid namespace

        def format_kernel_cmd(self, extra_arguments=None):
            argv = super().format_kernel_cmd(extra_arguments)
            if self.template is not None:
                return argv  # not run: the submission's template forks the kernel
            if self.cap is None:
                self.cap = process_cap()
            return kernel_command(argv, self.assignment_dir, self.work_dir, self.connection_file, self.cap)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if self.template is not None:
                connection = json.loads(Path(self.connection_file).read_text())
                arguments = kernel_cmd[kernel_cmd.index("-f") + 2:] if "-f" in kernel_cmd else []
                try:
                    process = self.template.fork(connection, kw.get("env", {}), arguments)
                except TemplateUnavailable as err:
                    template_failed(err)  # later notebooks: a sandbox each
                    raise
                self.provisioner.process = process
                self.provisioner.pid, self.provisioner.pgid = process.pid, None  # signals go through its pidfd
                self._reconcile_connection_info(self.provisioner.connection_info)
                self.ip = str(self.template.root) + self.ip
                self.sandbox_pid = process.pid
                return
            await super()._async_launch_kernel(kernel_cmd, **kw)
            if self.sandboxed:  # from now on the grader's side reaches the sockets from outside
                root = sandbox_root(self.provisioner.process.pid)
                self.ip = str(root) + self.ip
                self.sandbox_pid = int(root.parts[2])  # /proc/<pid>/root: a process in the kernel's sandbox

        async def start_kernel(self, **kw):
            self.ipc_dir = Path(tempfile.mkdtemp(prefix=f"{IPC_PREFIX}{os.getpid()}-", dir=_short_temp_dir()))
            self.work_dir = self.ipc_dir / "work"  # a tmpfs inside the sandbox; a copy on the host without one
            self.transport = "ipc"
            # Sandboxed, the kernel binds its sockets in its own tmpfs: the connection file it reads says
            # SANDBOX_IPC_DIR; the grader connects through the sandbox's root (_async_launch_kernel).
            self.sandboxed = sandbox_enabled()
            # Grading a submission, its template forks the kernel (in the template's sandbox, its sockets
            # in a folder of their own there); else the kernel starts in a sandbox of its own.
            self.template = submission_template() if self.sandboxed else None
            if self.template is not None:
                self.ip = f"{SANDBOX_IPC_DIR}/{uuid.uuid4().hex[:12]}/kernel"
            else:
                self.ip = f"{SANDBOX_IPC_DIR}/kernel" if self.sandboxed else str(self.ipc_dir / "kernel")
            self.connection_file = str(self.ipc_dir / "kernel.json")
            # The kernel sees a copy of its own assignment folder (data files, the student's
            # helper modules), never the folder nbgrader writes the graded notebook to.
            self.assignment_dir = Path(kw.pop("cwd", None) or ".").resolve()
            kw["env"] = sandbox_environment(home=str(self.work_dir))
            checks_dir = os.path.dirname(self.ip)
            kw["env"][protocol.CHECKS_SOCKET_VARIABLE] = f"{checks_dir}/{CHECKS_SOCKET_NAME}"
            kw["cwd"] = str(self.ipc_dir)
            try:
                return await AsyncKernelManager.start_kernel(self, **kw)
            except BaseException:
                self._remove_sandbox()  # nbclient does not clean up a kernel that did not start
                raise

        @property
        def checks_socket(self):
            """The host's path of the socket the kernel answers the hidden checks on (kernel.py)."""
            return str(Path(self.ip).parent / CHECKS_SOCKET_NAME)

        def checks_peer(self):
            """What the process listening on `checks_socket` must be: in this kernel's pid namespace (its
            sandbox's; a template's, for a forked kernel). None without a sandbox (a trusted test machine)."""
            return pid_namespace(self.sandbox_pid) if self.sandbox_pid else None

        def stop_sandbox(self):
            """Kill the kernel now (from any thread): a hidden check's call hung in it. A kernel of its own
            sandbox goes with every process of that sandbox; a forked one with its process group (the rest
            of its submission's sandbox ends with the submission). nbclient's shutdown later finds it dead."""
            process = getattr(self.provisioner, "process", None)
            if isinstance(process, ForkedKernel):
                process.kill()
            elif process is not None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if self.cap is not None:
                self.cap.kill_all()

        async def shutdown_kernel(self, now=False, restart=False):
            try:
                await AsyncKernelManager.shutdown_kernel(self, now=True, restart=restart)
            finally:
                self._remove_sandbox()

        async def cleanup_resources(self, restart=False):
            # nbclient skips shutdown_kernel for a kernel that already died, but always calls this.
            try:
                await AsyncKernelManager.cleanup_resources(self, restart=restart)
            finally:
                self._remove_sandbox()

        def _remove_sandbox(self):
            """Kill every process of the sandbox and delete its IPC folder."""
            if self.cap is not None:
                self.cap.kill_all()
                self.cap = None
            if self.ipc_dir is not None:
                shutil.rmtree(self.ipc_dir, ignore_errors=True)
            self.ipc_dir = None

    return _SandboxedKernelManager


def _owner_alive(name, prefix):
    """Is the grading process named in `name` (prefix + pid + '-' + ...) still running? Unknown: yes.
    A zombie is not: it has exited (its sandboxes died with it) and waits for its parent, or, killed with
    its parent, for the host's init, to collect it, which some inits do only every few seconds."""
    try:
        pid = int(name[len(prefix):].split("-", 1)[0])
    except ValueError:
        return None  # a name of an earlier version: no owner recorded
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state = process_state(pid)
    return state not in ("Z", "X") if state else os.path.exists(f"/proc/{pid}")


def process_state(pid):
    """The state letter of host process `pid` (R, S, D, Z for a zombie, ...; /proc/<pid>/stat), None if
    there is none."""
    stat = _read(f"/proc/{pid}/stat")  # "pid (comm) state ...": comm may hold spaces and parentheses
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0] if stat and fields else None


def sweep_leftovers():
    """Remove the cgroups and IPC folders of sandboxes whose grading process is gone (and the folders of
    throw-away courses of a grading host's worker that is gone) (a grader killed
    mid-batch leaves them: its sandboxes die with it, their folders and groups do not). Folders of
    earlier versions, which name no owner, go once they are older than any grading can last.
    Returns how many were removed."""
    removed = 0
    for root in CgroupProcessCap.swept_roots():
        for group in root.glob(f"{CGROUP_PREFIX}*") if root.is_dir() else []:
            owner = _owner_alive(group.name, CGROUP_PREFIX)
            if owner is False or (owner is None and not _read(group / "cgroup.procs").split()):
                cap = CgroupProcessCap.existing(group)
                cap.kill_all()
                removed += cap.path is None
    too_old = time.time() - course_config.SUBMISSION_TIMEOUT_S - course_config.SUBMISSION_GRACE_S
    for base in {Path(tempfile.gettempdir()), Path("/tmp")}:
        for folder in [f for prefix in (IPC_PREFIX, LEGACY_KERNEL_PREFIX, TASK_PREFIX) for f in base.glob(f"{prefix}*")]:
            prefix = next(p for p in (IPC_PREFIX, LEGACY_KERNEL_PREFIX, TASK_PREFIX) if folder.name.startswith(p))
            owner = _owner_alive(folder.name, prefix)
            if owner is False or (owner is None and folder.stat().st_mtime < too_old):
                shutil.rmtree(folder, ignore_errors=True)
                removed += not folder.exists()
    return removed
