"""The whole course cycle on a real JupyterHub, with the grader account as an ordinary user.

hub/setup.sh prepares the host (accounts, exchange, shared Python, extensions); the hub runs
on 127.0.0.1 with the real proxy and spawns each account's own server. Then, as on a course:
the instructor releases through nbgrader; two students fetch and submit through their own
servers' nbgrader endpoints (the calls the Assignment List makes), with hub tokens; the
grader account collects and runs `make autograde` (not root: the process cap is
RLIMIT_NPROC in the sandbox's user namespace); the grader releases feedback; each
student fetches it and sees only their own.
"""
import base64
import json
import os
import time

import nbformat
import pytest

from tests.conftest import grade_rows, tree_digest
from tests.grading import check_points, cuda_available, decidable_points, gpu_checks
from tests.hub_host import ASSIGNMENT, leftover_processes, requires_hub_host, setup_hub, teardown_hub
from tests.students import NB1, NB2, NB3, NOTEBOOKS, reference_answers, student_notebook
from tests.test_autograde import NO_SCALE, NO_SCALE_FAILS, WRITTEN_ANSWERS

pytestmark = [requires_hub_host, pytest.mark.hub]

CORRECT, BUGGY = "s1", "s2"  # account names get the hub's tag in front
ATTACKER = "s3"  # a student account that writes into the exchange by hand (no server of its own)
ATTACK_STAMP = "2026-12-01 10:00:00.000000 UTC"
LATER_STAMP = "2099-01-01 10:00:00.000000 UTC"  # newer than any real submission of this test
LEAKS = ("try:\n    print('LEAKED', open('gradebook.db', 'rb').read(16))\n"  # beside the kernel's notebook, if it were
         "except OSError as err:\n    print('NOT THERE', type(err).__name__)")  # there


def plant_links(hub, attacker, victim, course_notebook):
    """What the attacker leaves in the exchange (third round of hostile students, issue 18):
    their own submission holding links to the grader's files and to a classmate's submission, a FIFO,
    and a Notebook 2 that reads a gradebook beside it; a newer submission that is itself a link to the
    course's source folder; and a submission in the victim's name."""
    inbound = hub.exchange / "attention-surgeon" / "inbound"
    victims = [p for p in inbound.iterdir() if p.name.startswith(f"{victim}+")]
    mine = inbound / f"{attacker}+{ASSIGNMENT}+{ATTACK_STAMP}+AAAAAAAAAAAA"
    hub.run_as(attacker, "mkdir", str(mine))
    hub.run_as(attacker, "tee", str(mine / "timestamp.txt"), input_text=ATTACK_STAMP)
    hub.run_as(attacker, "tee", str(mine / "submission_secret.txt"), input_text="0" * 128)  # as nbgrader submit writes
    links = {f"{NB1}.ipynb": hub.course / "source" / ASSIGNMENT / f"{NB1}.ipynb",
             "gradebook.db": hub.course / "gradebook.db",
             "classmate": victims[0],
             "course": hub.course}
    for name, target in links.items():
        hub.run_as(attacker, "ln", "-s", str(target), str(mine / name))
    hub.run_as(attacker, "mkfifo", str(mine / "a_fifo"))
    hub.run_as(attacker, "tee", str(mine / f"{NB2}.ipynb"), input_text=course_notebook)
    hub.run_as(attacker, "ln", "-s", str(hub.course / "source" / ASSIGNMENT),
               str(inbound / f"{attacker}+{ASSIGNMENT}+{LATER_STAMP}+BBBBBBBBBBBB"))
    forged = inbound / f"{victim}+{ASSIGNMENT}+{LATER_STAMP}+CCCCCCCCCCCC"
    hub.run_as(attacker, "mkdir", str(forged))
    hub.run_as(attacker, "tee", str(forged / "timestamp.txt"), input_text=LATER_STAMP)
    hub.run_as(attacker, "tee", str(forged / f"{NB1}.ipynb"), input_text=json.dumps(student_notebook({})))


def answers_for(student, name):
    """What each student writes: all three notebooks right (and Notebook 3's written answers), or a
    Notebook 1 that forgets to scale by 1/sqrt(d_k) and nothing else."""
    if student == CORRECT:
        answers = reference_answers(name)
        return {**answers, **WRITTEN_ANSWERS} if name == NB3 else answers
    return reference_answers(NB1) if name == NB1 else None


@pytest.fixture(scope="module")
def cycle():
    tag = f"hc{os.getpid() % 100000}"
    hub = setup_hub(tag, students=[f"{tag}-{CORRECT}", f"{tag}-{BUGGY}", f"{tag}-{ATTACKER}"])
    attacker = f"{tag}-{ATTACKER}"
    times = {"hub/setup.sh": hub.setup_seconds}
    try:
        def timed(step, action, *args, **kw):
            began = time.monotonic()
            result = action(*args, **kw)
            times[step] = times.get(step, 0) + time.monotonic() - began
            return result

        # The instructor releases (a terminal in the grader's own server would run the same).
        timed("release", hub.run_as, hub.grader, "make", "release", cwd=hub.course)
        timed("release", hub.run_as, hub.grader, "nbgrader", "release_assignment", ASSIGNMENT, cwd=hub.course)

        servers = {}
        for student in hub.students:
            if student == attacker:
                continue
            token = timed("spawn servers", hub.start_server, student)
            servers[student] = hub.server(student, token)
        offered = {s: srv.assignments() for s, srv in servers.items()}
        for student, server in servers.items():
            timed("fetch and submit", server.action, "fetch")
            short = student.split("-", 1)[1]
            for name in NOTEBOOKS:
                answers = answers_for(short, name)
                if answers is None:
                    continue
                path = f"{ASSIGNMENT}/{name}.ipynb"
                mutate = (lambda code: code.replace(*NO_SCALE)) if short == BUGGY else None
                fetched = server.read_notebook(path)
                server.save_notebook(path, student_notebook(answers, name=name, mutate=mutate, base=fetched))
            timed("fetch and submit", server.action, "submit")

        leaky = student_notebook(reference_answers(NB2), name=NB2)
        leaky.cells.insert(2, nbformat.v4.new_code_cell(LEAKS))
        plant_links(hub, attacker, f"{tag}-{CORRECT}", json.dumps(leaky))
        collected = timed("collect", hub.run_as, hub.grader, "nbgrader", "collect", ASSIGNMENT, cwd=hub.course)
        submitted_before = tree_digest(hub.course / "submitted")
        graded = timed("make autograde", hub.run_as, hub.grader, "make", "autograde", cwd=hub.course)
        timed("release feedback", hub.run_as, hub.grader, "nbgrader", "release_feedback", ASSIGNMENT,
              cwd=hub.course)
        after_feedback = {s: timed("fetch feedback", srv.action, "fetch_feedback") for s, srv in servers.items()}
        yield {"hub": hub, "servers": servers, "offered": offered, "graded": graded, "times": times,
               "collected": collected, "attacker": attacker,
               "submitted_before": submitted_before, "after_feedback": after_feedback}
    finally:
        teardown_hub(hub)
        print("hub cycle times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


def test_students_see_the_released_assignment(cycle):
    for student, offered in cycle["offered"].items():
        assert [a["assignment_id"] for a in offered] == [ASSIGNMENT], offered
        assert offered[0]["status"] == "released"


def test_grader_account_grades_without_root_and_says_which_process_cap_holds(cycle):
    hub, graded = cycle["hub"], cycle["graded"]
    owner = hub.course.stat().st_uid
    assert owner != 0 and (hub.course / "gradebook.db").stat().st_uid == owner
    log = graded.stdout + graded.stderr
    assert "process cap: RLIMIT_NPROC = 256 inside the sandbox's user namespace" in log, log[-3000:]
    assert "graded 3 submission(s)" in log


def test_students_cannot_read_the_course_folder(cycle):
    """The course folder holds the solutions, the hidden checks and the gradebook: a student's account can
    neither read it nor lock it (which would hold every grading command off, course_lock.py)."""
    hub = cycle["hub"]
    student = hub.students[0]
    for path in (hub.course / "solutions" / ASSIGNMENT / f"{NB1}.ipynb", hub.course / "gradebook.db",
                 hub.course / "autograder" / "checks" / "attention.py"):
        read = hub.run_as(student, "cat", str(path), check=False)
        assert read.returncode != 0 and "Permission denied" in read.stderr, (path, read.stdout[:200], read.stderr)
    listed = hub.run_as(student, "ls", str(hub.course), check=False)
    assert listed.returncode != 0 and "Permission denied" in listed.stderr
    locked = hub.run_as(student, "python3", "-c", "import fcntl, os, sys\n"
                        "fcntl.flock(os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY), fcntl.LOCK_EX | fcntl.LOCK_NB)",
                        str(hub.course), check=False)
    assert locked.returncode != 0 and "PermissionError" in locked.stderr


def test_grades_csv_holds_the_exact_scores(cycle):
    hub = cycle["hub"]
    rows = grade_rows(hub.course)
    full = {name: sum(decidable_points(name).values()) for name in NOTEBOOKS}
    correct, buggy = (f"{hub.tag}-{s}" for s in (CORRECT, BUGGY))
    assert float(rows[correct]["raw_score"]) == sum(full.values())  # written answers wait for a TA
    assert float(rows[buggy]["raw_score"]) == full[NB1] - sum(check_points()[c] for c in NO_SCALE_FAILS)
    gpu = sum(check_points()[c] for c in gpu_checks(NB1)) if not cuda_available() else 0.0
    assert float(rows[correct]["pending_points"]) == gpu + 3 * len(WRITTEN_ANSWERS)
    assert set(filter(None, rows[buggy]["pending"].split(";"))) <= {f"check_{c}" for c in gpu_checks(NB1)}


def test_submitted_files_are_untouched_by_grading(cycle):
    assert tree_digest(cycle["hub"].course / "submitted") == cycle["submitted_before"]


def test_each_student_fetches_only_their_own_feedback(cycle):
    hub, servers = cycle["hub"], cycle["servers"]
    pages = {}
    for student, server in servers.items():
        feedback = f"{ASSIGNMENT}/feedback"
        (timestamp,) = server.listing(feedback)
        names = server.listing(f"{feedback}/{timestamp}")
        pages[student] = {n: server.request("GET", f"/files/{feedback}/{timestamp}/{n}").content.decode() for n in names}
    correct, buggy = (f"{hub.tag}-{s}" for s in (CORRECT, BUGGY))
    # Notebooks a student left out are graded as unanswered, so each gets a page for every notebook.
    assert sorted(pages[correct]) == sorted(pages[buggy]) == sorted(f"{n}.html" for n in NOTEBOOKS)
    # Each page is that student's own: its score is theirs, and only the buggy Notebook 1 fails checks.
    full = sum(decidable_points(NB1).values())
    buggy_score = full - sum(check_points()[c] for c in NO_SCALE_FAILS)
    assert f"(Score: {full:.1f} / " in pages[correct][f"{NB1}.html"]
    assert f"(Score: {buggy_score:.1f} / " in pages[buggy][f"{NB1}.html"]
    assert "✗ failed:" not in pages[correct][f"{NB1}.html"]
    # Each failed check is marked twice: in the page's table of contents and at its own cell.
    assert pages[buggy][f"{NB1}.html"].count("✗ failed:") == 2 * len(NO_SCALE_FAILS)
    for student, listing in cycle["after_feedback"].items():
        (mine,) = [entry for entry in listing if entry["status"] == "submitted"]  # the Assignment List's row
        assert mine["submissions"] and all(s["has_local_feedback"] for s in mine["submissions"]), mine


def test_students_cannot_read_each_other_through_the_exchange(cycle):
    hub = cycle["hub"]
    correct, buggy = (f"{hub.tag}-{s}" for s in (CORRECT, BUGGY))
    course_exchange = hub.exchange / "attention-surgeon"
    inbound = course_exchange / "inbound"
    feedback = course_exchange / "feedback"
    submissions = sorted(p for p in inbound.iterdir() if "+" + ATTACK_STAMP not in p.name
                         and "+" + LATER_STAMP not in p.name)  # the attacker's folders: see below
    assert len(submissions) == 2 and {p.name.split("+")[0] for p in submissions} == {correct, buggy}
    # nbgrader's design: inbound/ and feedback/ can be written (submit) and passed through, not listed;
    # a submission's folder ends in 72 random bits, and a feedback page is named by the hash of the
    # notebook it grades, so one student cannot find another's. (A student told the exact path of
    # another's submission could read it: nbgrader makes submissions world-readable inside it.)
    for folder in (inbound, feedback):
        result = hub.run_as(buggy, "ls", str(folder), check=False)
        assert result.returncode != 0 and "Permission denied" in result.stderr, (folder, result)
    for submission in submissions:
        student, assignment, timestamp, random_part = submission.name.split("+")
        assert len(base64.urlsafe_b64decode(random_part)) == 9
    guesses = [inbound / f"{correct}+{ASSIGNMENT}", inbound / correct, feedback / correct]
    result = hub.run_as(buggy, "ls", *map(str, guesses), check=False)
    assert result.returncode != 0 and result.stdout == "", result
    # 3 pages for each student, and the attacker's grading notes (Notebooks 1 and 3 were not collected)
    assert len(list(feedback.iterdir())) == 10


def test_nothing_is_left_running_but_the_servers(cycle):
    hub = cycle["hub"]
    # The grader account runs no server here; after `make autograde` nothing of it may remain.
    left = leftover_processes(hub)
    assert hub.grader not in left, left
    assert "bwrap" not in left and "sandboxed_worker" not in left and "ipykernel" not in left, left


# Student code that tries each promise of the sandbox, run by the grader account (not root).
PROBE = '''
import os, socket, time

def fork_until_stopped(most):
    """Fork children that wait; return how many forks succeeded before the host said no."""
    children = []
    try:
        for _ in range(most):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except OSError:
        pass
    return len(children)

def connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3)
        return "connected"
    except OSError as err:
        return type(err).__name__

def sees(paths):
    return [p for p in paths if os.path.exists(p)]

def allocate(gib):
    try:
        return len(bytearray(gib << 30))
    except MemoryError:
        return "MemoryError"
'''
RUN_PROBE = '''
import json, sys
from autograder.student import SandboxedStudent
port, paths = int(sys.argv[1]), sys.argv[2:]
with SandboxedStudent([open("probe.py").read()]) as student:
    print(json.dumps({
        "forks": student.call("fork_until_stopped", 1000).value,
        "network": student.call("connect", port).value,
        "sees": student.call("sees", paths).value,
        "memory": student.call("allocate", 64).value,
    }))
'''


def test_the_sandbox_holds_for_the_grader_account(cycle, tmp_path):
    """Fork bomb, network, the course and other homes, memory: as the ordinary grader account."""
    import json

    hub = cycle["hub"]
    probe_dir = hub.course / ".probe"
    hub.run_as(hub.grader, "mkdir", "-p", str(probe_dir))
    for name, text in (("probe.py", PROBE), ("run_probe.py", RUN_PROBE)):
        hub.run_as(hub.grader, "tee", str(probe_dir / name), input_text=text)
    secrets = [str(hub.course / "gradebook.db"), str(hub.course / "autograder"), f"/home/{hub.students[0]}",
               str(hub.exchange)]
    result = hub.run_as(hub.grader, "env", f"PYTHONPATH={hub.course}", f"{hub.course}/.venv/bin/python",
                        "run_probe.py", str(hub.port), *secrets, cwd=probe_dir,
                        env={"ATTENTION_SURGEON_MAX_PROCESSES": "64"})
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert 40 <= seen["forks"] < 64, seen  # the worker's own threads count too
    assert seen["network"] != "connected" and seen["sees"] == [] and seen["memory"] == "MemoryError", seen
    time.sleep(0.5)
    left = leftover_processes(hub)
    assert "sleep" not in left and "worker.py" not in left and hub.grader not in left, left


def test_collection_follows_no_link_and_takes_no_folder_in_a_classmates_name(cycle):
    """Before (issue 18): collect copied the linked source notebook and gradebook into the attacker's
    submission (70 of 70 Notebook 1 points, the gradebook's bytes in their feedback), and a folder in a
    classmate's name replaced the classmate's submission (70 -> 0). Now neither reaches submitted/."""
    hub, attacker = cycle["hub"], cycle["attacker"]
    correct = f"{hub.tag}-{CORRECT}"
    theirs = hub.course / "submitted" / attacker / ASSIGNMENT
    assert sorted(p.name for p in theirs.iterdir()) == sorted([f"{NB2}.ipynb", "submission_secret.txt",
                                                                 "timestamp.txt"])
    secret = (hub.course / "source" / ASSIGNMENT / f"{NB1}.ipynb").read_bytes()
    for path in (hub.course / "submitted").rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            assert b"SQLite format 3" not in path.read_bytes() and path.read_bytes() != secret, path
    # The links reached no kernel, feedback page or score: Notebook 1 was not collected, so it scores 0,
    # and the attacker's score is their own Notebook 2's.
    rows = grade_rows(hub.course)
    assert float(rows[attacker]["raw_score"]) == sum(decidable_points(NB2).values())
    for page in (hub.course / "feedback" / attacker / ASSIGNMENT).glob("*.html"):
        assert "SQLite format 3" not in page.read_text()
    autograded = (hub.course / "autograded" / attacker / ASSIGNMENT / f"{NB2}.ipynb").read_text()
    assert "NOT THERE FileNotFoundError" in autograded and "LEAKED " not in autograded
    # The classmate's own submission was graded, with all its points (test_grades_csv_holds_the_exact_scores).
    assert float(rows[correct]["raw_score"]) == sum(sum(decidable_points(n).values()) for n in NOTEBOOKS)
    said = cycle["collected"].stderr
    refused = [line for line in said.splitlines() if "NOT COLLECTED" in line]
    assert len(refused) == 2, said
    assert any(f"claims to be {correct}'s submission but the account {attacker} made it" in line for line in refused)
    assert any(f"{attacker}+{ASSIGNMENT}+{LATER_STAMP}" in line and "symbolic link" in line for line in refused)
    for name in (f"{NB1}.ipynb", "gradebook.db", "classmate", "course", "a_fifo"):
        assert any(f": {name}: " in line for line in said.splitlines() if "left out of" in line), (name, said)
