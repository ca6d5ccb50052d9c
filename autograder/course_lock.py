"""One grading command at a time in a course: `make autograde`, `make regrade`, `make autograde-gpu` and
`make feedback` each hold an exclusive lock on the course folder while they run. Trusted code.

Two of them at once would write the same gradebook, autograded notebooks and feedback pages: a regrade
could read a notebook the batch is rewriting, and one command's feedback pages could hide the other's
grades. The second one started is refused at once (exit status 3) with a message that names the command
holding the lock, and changes nothing; run it again once that one has ended.

The lock is `flock` on the course folder itself, so no file is made (a command that changes nothing leaves
the course as it was). The kernel releases it when its holder ends, however it ends (a killed batch
leaves no stale lock), and no child process holds it: Python opens the descriptor non-inheritable. Processes
a holder starts itself (the batch's feedback process, `python -m autograder.feedback --follow`, its grading
processes, nbgrader's own commands) take no lock.
"""
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import course_config

from .safe_text import one_line

EXIT_BUSY = 3


class CourseBusy(RuntimeError):
    """Another grading command holds the course's lock."""


def lock_holder(folder):
    """'pid N: its command line' of the process whose flock is on `folder` (/proc/locks), or None."""
    info = os.stat(folder)
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            try:
                command = Path(f"/proc/{fields[4]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                command = "(ended)"
            return f"pid {fields[4]}: {one_line(command.strip(), 200)}"
    return None


@contextmanager
def course_lock(folder=None):
    """Hold the course's lock for the block; raise CourseBusy at once if another command holds it."""
    folder = Path(folder or course_config.COURSE_ROOT)
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(folder) or "a process this account cannot see"
            raise CourseBusy(f"another grading command is running in this course ({holder}); make autograde, "
                             f"regrade, autograde-gpu and feedback run one at a time. Nothing was changed: run this "
                             f"again once it has ended.") from None
        yield
    finally:
        os.close(handle)


def run_alone(function, *args):
    """`function(*args)`'s exit status, run under the course's lock; EXIT_BUSY, with the message printed,
    when another grading command holds it."""
    try:
        with course_lock():
            return function(*args)
    except CourseBusy as err:
        print(f"REFUSED: {err}")
        return EXIT_BUSY
