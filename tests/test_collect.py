"""Collection is a trust boundary (autograder/collect.py): nbgrader's own `nbgrader collect`, with the
course's configuration, on an exchange that real Unix accounts wrote into.

An honest student submits; a classmate plants links to the grader's files (the instructor's source
notebook, the gradebook, the course folder), a FIFO and hard links in their own submission, makes a
newer submission that is itself a link, and a newer one in the honest student's name; an account
outside the course makes a folder whose name is a spreadsheet formula, another one whose name holds
a terminal escape. The grader collects: only what each student wrote, in their own name, arrives in
submitted/, and every refusal is reported, inert.
"""
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import nbformat
import pytest

from tests.conftest import copy_course
from tests.students import NB1, reference_answers, student_notebook

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="makes Unix accounts and files they own: needs root")

ASSIGNMENT = "attention_surgeon"
STAMP = "2026-11-20 12:00:00.000000 UTC"
BASE = Path("/var/tmp/attention-surgeon-tests")
LATER = "2026-11-21 12:00:00.000000 UTC"


def as_user(user, *command):
    subprocess.run(["runuser", "-u", user, "--", *command], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def collected():
    tag = f"tc{uuid.uuid4().hex[:6]}"
    honest, attacker, outsider = f"{tag}-honest", f"{tag}-mallory", f"{tag}-outsider"
    group = f"{tag}-students"
    subprocess.run(["groupadd", group], check=True)
    for user, groups in ((honest, [group]), (attacker, [group]), (outsider, [])):
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", *(["-G", ",".join(groups)] if groups else []), user],
                       check=True)
    try:
        base = BASE / tag  # every account can pass through it (pytest's own tmp folders are root's only)
        base.mkdir(parents=True)
        os.chmod(BASE, 0o755)
        os.chmod(base, 0o755)
        course = copy_course(base)
        inbound = base / "exchange" / "attention-surgeon" / "inbound"
        inbound.mkdir(parents=True)
        for folder in (inbound.parent.parent, inbound.parent, inbound):
            os.chmod(folder, 0o1777)
        subprocess.run([str(course / ".venv" / "bin" / "python"), "-c",
                        f"from nbgrader.api import Gradebook; Gradebook('sqlite:///{course}/gradebook.db').close()"],
                       check=True, env={**os.environ, "PATH": f"{course / '.venv' / 'bin'}:{os.environ['PATH']}"})
        secret_source = course / "source" / ASSIGNMENT / f"{NB1}.ipynb"

        def submission(owner, name_of, stamp, random_part="AAAAAAAAAAAA"):
            folder = inbound / f"{name_of}+{ASSIGNMENT}+{stamp}+{random_part}"
            as_user(owner, "mkdir", str(folder))
            as_user(owner, "sh", "-c", f"echo '{stamp}' > '{folder}/timestamp.txt'")
            return folder

        honest_nb = nbformat.writes(student_notebook(reference_answers()))
        folder = submission(honest, honest, STAMP)
        subprocess.run(["runuser", "-u", honest, "--", "tee", str(folder / f"{NB1}.ipynb")], input=honest_nb,
                       text=True, check=True, capture_output=True)
        honest_file = folder / f"{NB1}.ipynb"

        mine = submission(attacker, attacker, STAMP)
        as_user(attacker, "ln", "-s", str(secret_source), str(mine / f"{NB1}.ipynb"))
        as_user(attacker, "ln", "-s", str(course / "gradebook.db"), str(mine / "gradebook.db"))
        as_user(attacker, "ln", "-s", str(course), str(mine / "course"))
        as_user(attacker, "ln", "-s", str(honest_file), str(mine / "classmate.ipynb"))
        as_user(attacker, "mkfifo", str(mine / "a_fifo"))
        as_user(attacker, "mkdir", str(mine / "helpers"))
        as_user(attacker, "sh", "-c", f"echo 'X = 1' > '{mine}/helpers/mine.py'")
        as_user(attacker, "sh", "-c", f"echo 'Y = 2' > '{mine}/linked.py'")
        as_user(attacker, "ln", str(mine / "linked.py"), str(mine / "second_name.py"))
        # On a host without fs.protected_hardlinks a student could link a file only the grader can read.
        os.link(secret_source, mine / "hardlink_to_source.ipynb")

        as_user(attacker, "ln", "-s", str(course / "source" / ASSIGNMENT),
                str(inbound / f"{attacker}+{ASSIGNMENT}+{LATER}+BBBBBBBBBBBB"))
        forged = submission(attacker, honest, LATER, "CCCCCCCCCCCC")
        subprocess.run(["runuser", "-u", attacker, "--", "tee", str(forged / f"{NB1}.ipynb")],
                       input=nbformat.writes(student_notebook({})), text=True, check=True, capture_output=True)
        formula = '=HYPERLINK("http:"&CHAR(47)&CHAR(47)&"evil.example";"open")'
        submission(outsider, formula, STAMP)
        submission(outsider, "x\x1b]0;pwned\x07\nFLAGGED for a TA: someone", STAMP)

        result = subprocess.run([str(course / ".venv" / "bin" / "nbgrader"), "collect", ASSIGNMENT,
                                 f"--Exchange.root={inbound.parent.parent}"],
                                cwd=course, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PATH": f"{course / '.venv' / 'bin'}:{os.environ['PATH']}",
                                     "ATTENTION_SURGEON_STUDENT_GROUP": group})
        yield {"course": course, "result": result, "honest": honest, "attacker": attacker, "honest_nb": honest_nb,
               "secret_source": secret_source.read_bytes()}
    finally:
        for user in (honest, attacker, outsider):
            subprocess.run(["userdel", "-f", user], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(BASE / tag, ignore_errors=True)


def test_only_the_course_students_own_folders_are_collected(collected):
    assert collected["result"].returncode == 0, collected["result"].stderr[-3000:]
    submitted = collected["course"] / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == sorted([collected["honest"], collected["attacker"]])


def test_a_submission_in_a_classmates_name_does_not_replace_theirs(collected):
    mine = collected["course"] / "submitted" / collected["honest"] / ASSIGNMENT
    assert (mine / f"{NB1}.ipynb").read_text() == collected["honest_nb"]
    assert (mine / "timestamp.txt").read_text().strip() == STAMP


def test_no_link_is_followed_and_no_special_file_is_copied(collected):
    theirs = collected["course"] / "submitted" / collected["attacker"] / ASSIGNMENT
    copied = sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*"))
    assert copied == ["helpers", "helpers/mine.py", "timestamp.txt"], copied
    for path in (collected["course"] / "submitted").rglob("*"):
        assert not path.is_symlink()
        if path.is_file():
            data = path.read_bytes()
            assert b"SQLite format 3" not in data and data != collected["secret_source"]
            assert path.stat().st_nlink == 1


def test_every_refusal_is_reported_by_name_and_inert(collected):
    said = collected["result"].stderr
    assert "\x1b" not in said and "\x07" not in said
    refusals = [line for line in said.splitlines() if "NOT COLLECTED" in line]
    assert len(refusals) == 4, said
    assert any("is a symbolic link, not a folder" in line and collected["attacker"] in line for line in refusals)
    assert any(f"claims to be {collected['honest']}'s submission but the account {collected['attacker']} made it"
               in line for line in refusals)
    assert any("=HYPERLINK" in line and "is not an account of the course's student group" in line
               for line in refusals)
    assert any("x\\x1b]0;pwned\\x07\\nFLAGGED" in line for line in refusals), refusals
    assert not any(line.startswith("FLAGGED") for line in said.splitlines())
    left_out = [line for line in said.splitlines() if "left out of" in line]
    for name, why in ((f"{NB1}.ipynb", "symbolic link"), ("gradebook.db", "symbolic link"),
                      ("course", "symbolic link"), ("a_fifo", "not a regular file"),
                      ("linked.py", "hard link"), ("second_name.py", "hard link"), ("hardlink_to_source.ipynb", "hard link")):
        assert any(f": {name}: " in line and why in line for line in left_out), (name, left_out)
