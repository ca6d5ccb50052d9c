"""One grading command at a time in a course folder.

`make autograde`, `make regrade`, `make autograde-gpu` and `make feedback` all write the gradebook,
autograded/, feedback/ and grades.csv. Two of them at once (a TA's `make regrade` while the nightly
`make autograde` runs) would write the same rows and pages together. So each holds an exclusive lock on
.grading/batch.lock while it runs; one that finds it held changes nothing and says which command holds it
(exit code BUSY). The lock is the kernel's (flock): it ends with the process that holds it, so a command
killed half-way leaves nothing to clean up. Commands that only read (`make report`, `make export`) and
the batch's own helper processes (its feedback process, its grading processes) take no lock.

Trusted code: only the grader writes under .grading/.
"""
import datetime
import fcntl
import json
import os
from contextlib import contextmanager

import course_config

from .safe_text import one_line

LOCK = course_config.COURSE_ROOT / ".grading" / "batch.lock"
BUSY = 3  # the exit code of a command refused because another one runs


class CourseBusy(Exception):
    """Another grading command holds the course's lock."""


@contextmanager
def one_command_at_a_time(command):
    """Hold the course's lock while the block runs; CourseBusy (nothing done) if another command holds it.
    `command` ("make autograde") is what a refused command is told."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CourseBusy(f"{command} did not start: {_holder(fd)} is running in this course "
                             f"({course_config.COURSE_ROOT}), and two grading commands at once would write "
                             f"the same grades and pages. Nothing was changed; run it again when that one "
                             f"has finished.") from None
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid(), "started": started}).encode(), 0)
        yield
    finally:
        os.close(fd)  # and with it the lock


def _holder(fd):
    """Who holds the lock, as it wrote itself down ("make autograde (pid 1234, started ...)")."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"{one_line(str(holder['command']), 80)} (pid {int(holder['pid'])}, "
                f"started {one_line(str(holder['started']), 40)})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another grading command"  # it has not written itself down yet


def refuse_if_busy(command, run):
    """`run()`'s exit code, run under the course's lock; BUSY, with the reason printed, if another command
    holds it."""
    try:
        with one_command_at_a_time(command):
            return run()
    except CourseBusy as busy:
        print(busy)
        return BUSY
