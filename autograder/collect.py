"""Collection: the exchange's inbound folders -> submitted/<student>/<assignment>/, a trust boundary.

Trusted code. nbgrader's own collect copies with the grader's rights and follows links, so a student
whose inbound folder holds `01_attention_from_scratch.ipynb -> <course>/source/...` or
`gradebook.db -> <course>/gradebook.db` would hand in the instructor's files; and it collects a
folder named after a classmate even when another account made it (it only logs "cheating attempt?").
This class is nbgrader's collect step for the course (course_config.py sets
`c.ExchangeFactory.collect`), so `nbgrader collect`, `make collect` and formgrader's Collect button
all go through it:

    inbound/<name>+<assignment>+<timestamp>+<random>/
        | taken only when: it is a real folder (not a link); <name> is an account of the course's
        | student group (SafeExchangeCollect.student_group); that account owns the folder
        | newest taken folder per student (nbgrader's rule, due date included)
        | copied without following any link: only regular files the student owns, with one link
        | (no hard link, FIFO, device or socket), notebooks first, within the course's limits
    submitted/<name>/<assignment>/

Everything refused or left out is reported to the grader by name (names made inert: safe_text).
"""
import grp
import os
import pwd
import stat
from fnmatch import fnmatch

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.exchange.default.collect import ExchangeCollect, groupby
from nbgrader.utils import parse_utc
from traitlets import Unicode

import course_config

from .safe_text import one_line

MAX_DEPTH = 16  # folders inside a submission; deeper ones are left out
NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NOFOLLOW_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks the open


class Refused(Exception):
    """An inbound folder that is not collected; the message says why, for the grader."""


def course_students(group_name):
    """{account name: uid} of the members of `group_name` (supplementary or primary)."""
    try:
        group = grp.getgrnam(group_name)
    except KeyError:
        return None
    members = {}
    for name in group.gr_mem:
        try:
            members[name] = pwd.getpwnam(name).pw_uid
        except KeyError:
            pass
    for account in pwd.getpwall():
        if account.pw_gid == group.gr_gid:
            members[account.pw_name] = account.pw_uid
    return members


class SubmissionCopy:
    """Copy one submission folder (an open directory descriptor) without following any link.

    Only regular files owned by `uid` with a single link are copied; directories are walked
    through descriptors opened with O_NOFOLLOW, so no path is ever resolved through a link.
    Notebooks and timestamp.txt at the top come first; then the rest in name order, while the
    course's limits allow (SUBMISSION_MAX_FILES, SUBMISSION_MAX_MB, nbgrader's max_file_size).
    """

    def __init__(self, uid, ignore=(), max_file_bytes=None):
        self.uid = uid
        self.ignore = list(ignore)
        self.files_left = course_config.SUBMISSION_MAX_FILES + 1  # + timestamp.txt
        self.bytes_left = course_config.SUBMISSION_MAX_MB << 20
        self.max_file_bytes = max_file_bytes
        self.left_out = []  # (relative path, why)

    def copy(self, dir_fd, dest):
        os.makedirs(dest, mode=0o755, exist_ok=True)
        self._copy_dir(dir_fd, dest, "", 0)

    @staticmethod
    def _order(names, relative):
        first = {"timestamp.txt"} if not relative else set()
        return sorted(names, key=lambda n: (not (n in first or (not relative and n.endswith(".ipynb"))), n))

    def _copy_dir(self, dir_fd, dest, relative, depth):
        names = [entry.name for entry in os.scandir(dir_fd)]
        for name in self._order(names, relative):
            path = f"{relative}{name}"
            if any(fnmatch(name, pattern) for pattern in self.ignore):
                continue
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                self.left_out.append((path, "a symbolic link (links are never followed)"))
            elif stat.S_ISDIR(info.st_mode):
                if depth >= MAX_DEPTH:
                    self.left_out.append((path, f"a folder more than {MAX_DEPTH} levels deep"))
                    continue
                try:
                    child = os.open(name, NOFOLLOW_DIR, dir_fd=dir_fd)
                except OSError as err:
                    self.left_out.append((path, f"a folder that could not be opened ({err.strerror})"))
                    continue
                try:
                    target = os.path.join(dest, name)
                    os.makedirs(target, mode=0o755, exist_ok=True)
                    self._copy_dir(child, target, path + "/", depth + 1)
                finally:
                    os.close(child)
            elif not stat.S_ISREG(info.st_mode):
                self.left_out.append((path, "not a regular file (a FIFO, device or socket)"))
            else:
                self._copy_file(dir_fd, name, os.path.join(dest, name), path)

    def _copy_file(self, dir_fd, name, target, path):
        try:
            fd = os.open(name, NOFOLLOW_FILE, dir_fd=dir_fd)
        except OSError as err:
            self.left_out.append((path, f"it could not be opened ({err.strerror})"))
            return
        try:
            info = os.fstat(fd)  # the file that is open, whatever the name points to now
            why = None
            if not stat.S_ISREG(info.st_mode):
                why = "not a regular file"
            elif info.st_nlink != 1:
                why = "a hard link (a file with another name elsewhere)"
            elif info.st_uid != self.uid:
                why = "a file another account owns"
            elif self.max_file_bytes is not None and info.st_size > self.max_file_bytes:
                why = f"larger than {self.max_file_bytes >> 10} KB"
            elif self.files_left < 1 or info.st_size > self.bytes_left:
                why = (f"past the limits of a submission ({course_config.SUBMISSION_MAX_FILES} files, "
                       f"{course_config.SUBMISSION_MAX_MB} MB)")
            if why:
                self.left_out.append((path, why))
                return
            self.files_left -= 1
            written = 0
            with open(target, "wb") as out:
                while written <= info.st_size:  # a file that grows while it is read is cut at its size
                    chunk = os.read(fd, min(1 << 20, info.st_size - written + 1))
                    if not chunk:
                        break
                    out.write(chunk[:info.st_size - written])
                    written += len(chunk)
            os.chmod(target, 0o644)
            self.bytes_left -= min(written, info.st_size)
        finally:
            os.close(fd)


class SafeExchangeCollect(ExchangeCollect):
    """nbgrader's collect, with the exchange treated as student input (see the module's docstring)."""

    student_group = Unicode(
        course_config.STUDENT_GROUP,
        help="The Unix group of the course's students. An inbound folder is collected only when the "
             "name it starts with is an account of this group, and that account owns the folder.",
    ).tag(config=True)

    def _refuse(self, name, why):
        self.refused.append((name, why))
        self.log.warning("NOT COLLECTED: inbound/%s: %s", one_line(name), why)

    def _record(self, path, students):
        """nbgrader's record of one inbound folder, or Refused."""
        name = os.path.basename(path)
        parts = name.rsplit("+", 3)
        if len(parts) < 3:
            raise Refused("the folder's name is not <student>+<assignment>+<timestamp>+<random>")
        student = parts[0]
        try:
            timestamp = parse_utc(parts[2])
        except Exception:  # noqa: BLE001 - a student chose this text
            raise Refused("the timestamp in the folder's name cannot be read") from None
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise Refused("it is a symbolic link, not a folder")
        if not stat.S_ISDIR(info.st_mode):
            raise Refused("it is not a folder")
        if student not in students:
            raise Refused(f"{one_line(student)!s} is not an account of the course's student group "
                          f"{self.student_group}")
        if info.st_uid != students[student]:
            try:
                owner = pwd.getpwuid(info.st_uid).pw_name
            except KeyError:
                owner = f"uid {info.st_uid}"
            raise Refused(f"it claims to be {one_line(student)}'s submission but the account "
                          f"{one_line(owner)} made it; {one_line(student)}'s own submissions are unaffected")
        return {"username": student, "filename": name, "timestamp": timestamp, "uid": info.st_uid}

    def init_src(self):
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")
        self.course_path = os.path.join(self.root, self.coursedir.course_id)
        self.inbound_path = os.path.join(self.course_path, "inbound")
        if not os.path.isdir(self.inbound_path):
            self.fail("Course not found: {}".format(self.inbound_path))
        self.refused = []
        students = course_students(self.student_group)
        if students is None:
            self.fail(f"the course's student group {self.student_group!r} does not exist on this host, so no "
                      f"submission can be told from another account's: set SafeExchangeCollect.student_group "
                      f"(or ATTENTION_SURGEON_STUDENT_GROUP) to the group of the course's students")
        wanted = self.coursedir.student_id or "*"  # nbgrader's --student, a glob
        records = []
        for entry in sorted(os.scandir(self.inbound_path), key=lambda e: e.name):
            parts = entry.name.rsplit("+", 3)
            if len(parts) >= 3 and parts[1] != self.coursedir.assignment_id:
                continue  # another assignment's submission: not this collect's business
            if not fnmatch(parts[0], wanted):
                continue
            try:
                records.append(self._record(entry.path, students))
            except Refused as why:
                self._refuse(entry.name, str(why))
        self.duedate = None
        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            try:
                self.duedate = gb.find_assignment(self.coursedir.assignment_id).duedate
            except MissingEntry:
                pass
        self.src_records = []
        for versions in groupby(records, lambda r: r["username"]).values():
            versions = self._sort_by_timestamp(versions)
            if self.duedate is not None and self.before_duedate:
                versions = [r for r in versions if r["timestamp"] <= self.duedate] or versions
            self.src_records.append(versions[0])

    def copy_files(self):
        self._uids = {r["filename"]: r["uid"] for r in self.src_records}
        super().copy_files()
        if self.refused:
            self.log.warning("%d inbound folder(s) were NOT collected (see the lines above)", len(self.refused))

    def do_copy(self, src, dest, log=None):
        """Copy the inbound folder `src` to `dest` without following a link (SubmissionCopy)."""
        name = os.path.basename(src)
        uid = self._uids[name]
        try:
            fd = os.open(src, NOFOLLOW_DIR)
        except OSError as err:
            self._refuse(name, f"it could not be opened ({err.strerror})")
            return
        try:
            if os.fstat(fd).st_uid != uid:  # swapped since it was looked at
                self._refuse(name, "it changed while it was being collected")
                return
            max_kb = self.coursedir.max_file_size
            copier = SubmissionCopy(uid, ignore=self.coursedir.ignore, max_file_bytes=max_kb * 1024 if max_kb else None)
            copier.copy(fd, dest)
        finally:
            os.close(fd)
        for path, why in copier.left_out:
            self.log.warning("left out of %s's submission: %s: %s", one_line(name.split("+")[0]), one_line(path), why)
