"""One grading command at a time in a course: `make autograde`, `make regrade`, `make autograde-gpu` and
`make feedback` each hold an exclusive lock on the course folder while they run. Trusted code.

Two of them at once would write the same gradebook, autograded notebooks and feedback pages: a regrade
could read a notebook the batch is rewriting, and one command's feedback pages could hide the other's
grades. The second one started is refused at once (exit status 3) with a message that names the command
holding the lock, and changes nothing; run it again once that one has ended.

The lock is `flock` on the course folder itself, so no file is made (a command that changes nothing leaves
the course as it was). The kernel releases it when its holder ends, however it ends (a killed batch
leaves no stale lock), and no child process holds it: Python opens the descriptor non-inheritable, and a
child forked without exec (grade_submissions.within_limits) closes it first (`close_in_child`). Processes
a holder starts itself (the batch's feedback process, `python -m autograder.feedback --follow`, its grading
processes, nbgrader's own commands) take no lock. It holds on this host: two hosts that share a course
folder over NFS are not kept apart by it.
"""
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

import course_config

from .safe_text import one_line

EXIT_BUSY = 3


class CourseBusy(RuntimeError):
    """Another grading command holds the course's lock."""


_held = []  # the descriptors this process holds the lock by


def lock_holder(handle):
    """'pid N: its command line' of the process whose flock is on the folder open as `handle` (/proc/locks),
    or None."""
    info = os.fstat(handle)
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a waiter's line has "->")
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            try:
                command = Path(f"/proc/{fields[4]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                command = "(ended)"
            return f"pid {fields[4]}: {one_line(command.strip(), 200)}"
    return None


def _lock(handle):
    """Take the lock without waiting; tried twice (a holder that has just ended). False if it is held."""
    for attempt in range(2):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt == 0:
                time.sleep(0.1)
    return False


@contextmanager
def course_lock(folder=None):
    """Hold the course's lock for the block; raise CourseBusy at once if another command holds it."""
    folder = Path(folder or course_config.COURSE_ROOT)
    try:
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise CourseBusy(f"the course folder cannot be opened to lock it ({err.strerror}); nothing was changed") from None
    try:
        try:
            taken = _lock(handle)
        except OSError as err:  # a file system without flock on folders
            raise CourseBusy(f"the course folder cannot be locked here ({err.strerror}); nothing was changed") from None
        if not taken:
            holder = lock_holder(handle) or "a process this account cannot see"
            raise CourseBusy(f"another grading command is running in this course ({holder}); make autograde, "
                             f"regrade, autograde-gpu and feedback run one at a time. Nothing was changed: run this "
                             f"again once it has ended.")
        _held.append(handle)
        try:
            yield
        finally:
            _held.remove(handle)
    finally:
        os.close(handle)


def close_in_child():
    """In a child forked without exec: let go of the parent's lock descriptors (the lock stays the parent's)."""
    for handle in _held:
        try:
            os.close(handle)
        except OSError:
            pass
    _held.clear()


def run_alone(function, *args):
    """`function(*args)`'s exit status, run under the course's lock; EXIT_BUSY, with the message printed,
    when another grading command holds it."""
    try:
        with course_lock():
            return function(*args)
    except CourseBusy as err:
        print(f"REFUSED: {err}")
        return EXIT_BUSY
