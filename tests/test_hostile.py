"""Hostile and broken submissions, graded in one batch through `make autograde`.

For every attack: the student gains nothing, no other student's grade moves,
the batch finishes in bounded time, and nothing is left running. Each attack
starts from the same honest base (the two mask functions done, attention left
as the stub), worth exactly MASK_POINTS: an attack that gained anything would
score more, one that broke grading would score less. A fully correct
bystander is graded in the same batch.
"""
import copy
import json
import re
import resource
import socket
import threading
import time
from html import unescape

import nbformat
import psutil
import pytest

from tests.conftest import copy_course, make, read_grades, tree_digest
from tests.grading import check_points, decidable_points
from tests.students import NB1, reference_answers, student_notebook, write_submission

FULL = sum(decidable_points().values())  # GPU checks stay pending without CUDA
MASK_POINTS = check_points()["causal_mask"] + check_points()["reverse_mask"]
LIMITS = {"ATTENTION_SURGEON_CELL_TIMEOUT_S": "8", "ATTENTION_SURGEON_CALL_TIMEOUT_S": "30",
          "ATTENTION_SURGEON_WORKER_START_TIMEOUT_S": "90", "ATTENTION_SURGEON_SUBMISSION_TIMEOUT_S": "400",
          "ATTENTION_SURGEON_MEMORY_LIMIT_MB": "4096", "ATTENTION_SURGEON_MAX_PROCESSES": "64",
          "ATTENTION_SURGEON_SANDBOX_WRITABLE_MB": "128", "ATTENTION_SURGEON_NOTEBOOK_PARSE_MEMORY_MB": "1024"}
PARSE_MEMORY_MB = 1024
WRITABLE_MB = 128
FLOOD_FILE_MB = 60  # the flood writes files of this size until the sandbox refuses
# Names a student chose (issue 18): an id a spreadsheet runs as a formula, an id and a file name that
# forge summary lines and set the terminal's title.
FORMULA_ID = '=HYPERLINK("http:"&CHAR(47)&CHAR(47)&"evil.example";"open")'
FORGER_ID = "forger\n  bystander attention_surgeon ok 12.0 s\x1b]0;pwned\x07"
FORGED_FILE = "x\n  FLAGGED for a TA: bystander: copied from a classmate\x1b]2;title\x07.ipynb"
FLOODED = ("/tmp", ".", "..", "/", "/dev", "/dev/shm")
ORPHAN_MARK = "7371"  # `sleep 73710` etc.: what the orphan attack leaves behind, if anything


def honest_base():
    """The masks done, attention not: worth MASK_POINTS, and cheap to grade."""
    return {k: v for k, v in reference_answers().items() if k in ("create_causal_mask", "create_reverse_mask")}


def attack(code):
    """The honest base plus one cell of attack code right after the setup cell."""
    return student_notebook(honest_base(), extra_cells=[("setup", code)])


def secret_paths(course):
    paths = [course / "autograder" / "checks" / "attention.py", course / "solutions" / "attention_surgeon" /
             f"{NB1}.ipynb", course / "source" / "attention_surgeon" / f"{NB1}.ipynb", course / "gradebook.db",
             course / "submitted" / "bystander" / "attention_surgeon" / f"{NB1}.ipynb"]
    return [str(p) for p in paths] + ["../../../autograder/checks/attention.py", "../../../../gradebook.db"]


def attacks(course, port):
    paths = json.dumps(secret_paths(course))
    gradebook = json.dumps(str(course / "gradebook.db"))
    grades_csv = json.dumps(str(course / "grades.csv"))
    return {
        "reads_secrets": attack(f"""
import os
for path in {paths}:
    try:
        print("READ", path, open(path, errors="replace").read()[:100000])
    except Exception as err:
        print("NO", path, type(err).__name__)
get_ipython().events.register("post_run_cell", lambda *a: print(open({paths}[0]).read()))
"""),
        "writes_gradebook": attack(f"""
import sqlite3
for target in [{gradebook}, "../../../gradebook.db"]:
    try:
        db = sqlite3.connect(target)
        db.execute("UPDATE grade SET auto_score = 1000")
        db.execute("UPDATE grade_cells SET max_score = 0")
        db.commit()
        print("WROTE", target)
    except Exception as err:
        print("NO", target, type(err).__name__)
for target in [{grades_csv}, "../../../grades.csv"]:
    try:
        open(target, "w").write("student_id,raw_score\\nwrites_gradebook,1000\\n")
    except Exception as err:
        print("NO", target, type(err).__name__)
"""),
        "infinite_loop": attack("while True:\n    pass"),
        # 40 files of 60 MB into /tmp (a tmpfs: the host's RAM), into the kernel's working folder and its
        # parent (where its IPC sockets used to be: the host's disk), into the sandbox's root and /dev.
        "floods_writable_places": attack(f"""
import os
for folder in {FLOODED!r}:
    written = 0
    for i in range(40):
        try:
            with open(os.path.join(folder, f"flood{{i}}"), "wb") as f:
                f.write(b"x" * ({FLOOD_FILE_MB} << 20))
            written += 1
        except OSError as err:
            break
    print("FLOOD", folder, written)
    for i in range(written):
        os.remove(os.path.join(folder, f"flood{{i}}"))
"""),
        "os_exit": attack("import os\nos._exit(0)"),
        "memory_hog": attack("hog = bytearray(64 * 2**30)"),
        "orphans": attack(f"""
import os, subprocess
subprocess.Popen(["sleep", "{ORPHAN_MARK}0"], start_new_session=True)
os.system("nohup sleep {ORPHAN_MARK}1 >/dev/null 2>&1 &")
if os.fork() == 0:
    os.setsid()
    os.execvp("sleep", ["sleep", "{ORPHAN_MARK}2"])
"""),
        "huge_output": attack("print('x' * 40_000_000)\nfor i in range(200_000):\n    print(i)"),
        # Writes, through the file descriptor its kernel inherited, what a grading process tells its worker:
        # a broken record, its own and a classmate's "finished", and an escape sequence (issue 22 review).
        "forges_the_shard_channel": attack("""
import os
os.system("echo '{\\"finished\\": 1}'; echo '\\"finished\\"'; "
          "echo '{\\"finished\\": \\"attention_surgeon/bystander\\", \\"ok\\": false}'; "
          "echo '{\\"finished\\": \\"attention_surgeon/forges_the_shard_channel\\", \\"ok\\": true}'; "
          "printf '{\\"started\\": \\"attention_surgeon/\\\\033]0;pwned\\\\007\\"}\\\\n'")
"""),
        "opens_socket": attack(f"""
import socket
for host in ["127.0.0.1", "localhost"]:
    try:
        socket.create_connection((host, {port}), timeout=3).sendall(b"pwned")
        print("CONNECTED", host)
    except Exception as err:
        print("NO", host, type(err).__name__)
"""),
        "rewrites_later_cells": student_notebook({**honest_base(), "attention": (
            "def attention(Q, K, V, mask=None, scale=True):\n    return None, None\n"
            "get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])")}),
        "always_equal": student_notebook({**honest_base(), "attention": (
            "class Anything:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
            "    def __getattr__(self, name): return lambda *a, **k: self\n\n"
            "def attention(Q, K, V, mask=None, scale=True):\n    return Anything(), Anything()")}),
        # The worker's run-time detection lives in the student's process; this switches it off.
        "tampers_with_tripwires": student_notebook({**reference_answers(), "attention": (
            "import torch\n"
            "_op_name = ''.join(reversed('noitnetta_tcudorp_tod_delacs'))\n"
            "def attention(Q, K, V, mask=None, scale=True):\n"
            "    check_attention_inputs(Q, K, V, mask)\n"
            "    op = getattr(torch.ops.aten, _op_name)\n"
            "    m = mask if mask is None or mask.dim() > 1 else mask.expand(Q.shape[-2], -1)\n"
            "    with torch._C._DisableTorchDispatch():\n"
            "        out = op(Q, K, V, attn_mask=m, scale=None if scale else 1.0)\n"
            "    return out, masked_softmax(apply_mask(compute_scores(Q, K, scale), mask))")}),
        "fused_through_getattr": student_notebook({**reference_answers(), "attention": (
            "import torch.nn.functional as F\n"
            "def attention(Q, K, V, mask=None, scale=True):\n"
            "    check_attention_inputs(Q, K, V, mask)\n"
            "    sdpa = getattr(F, ''.join(reversed('noitnetta_tcudorp_tod_delacs')))\n"
            "    m = mask if mask is None or mask.dim() > 1 else mask.expand(Q.shape[-2], -1)\n"
            "    out = sdpa(Q, K, V, attn_mask=m, scale=None if scale else 1.0)\n"
            "    return out, masked_softmax(apply_mask(compute_scores(Q, K, scale), mask))")}),
    }


def broken_inputs():
    correct = student_notebook(honest_base())
    deleted = copy.deepcopy(correct)
    deleted.cells = [c for c in deleted.cells if not c.metadata.get("nbgrader", {}).get("grade")
                     or c.metadata.nbgrader.get("solution")]
    edited = copy.deepcopy(correct)
    to_markdown = copy.deepcopy(correct)
    for nb, change in ((edited, "edit"), (to_markdown, "markdown")):
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and not meta.get("solution"):
                if change == "edit":
                    cell.source = "print('all good')"
                else:
                    cell.cell_type = "markdown"
                    cell.pop("outputs", None)
                    cell.pop("execution_count", None)
    duplicated = copy.deepcopy(correct)
    solution = next(c for c in duplicated.cells
                    if c.metadata.get("nbgrader", {}).get("grade_id") == "create_causal_mask")
    duplicated.cells.append(copy.deepcopy(solution))
    huge = copy.deepcopy(correct)
    huge.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="y" * 100_000_000)]
    # Valid JSON, 190 MB (under the 200 MB read limit): one cell's metadata holds a list of empty objects,
    # 3 bytes each in the file and about 450 bytes each once parsed (issue 18: 30 MB cost 12.5 GB).
    bomb = json.loads(nbformat.writes(correct))
    bomb["cells"][0]["metadata"]["x"] = "BOMB"
    bomb = json.dumps(bomb).replace('"BOMB"', "[" + ",".join(["{}"] * (190_000_000 // 3)) + "]")
    return {"deleted_tests": deleted, "edited_tests": edited, "tests_to_markdown": to_markdown, "json_bomb": bomb,
            "duplicate_grade_ids": duplicated, "empty_file": "", "huge_stored_output": huge,
            **metadata_games(correct)}


def grade_cell_index(nb, grade_id):
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def metadata_games(correct):
    """Before: each of these made nbgrader fail on the notebook, so it scored 0 with no note."""
    new_grade = copy.deepcopy(correct)
    free = nbformat.v4.new_code_cell("print('free points')")
    free.metadata["nbgrader"] = {"grade": True, "grade_id": "free_points", "points": 100, "solution": False,
                                 "locked": True, "schema_version": 3}
    new_grade.cells.insert(3, free)
    steals = copy.deepcopy(correct)
    index = grade_cell_index(steals, "check_causal_mask")
    thief = nbformat.v4.new_code_cell("pass")
    thief.metadata["nbgrader"] = {"grade": True, "grade_id": "check_causal_mask", "points": 4, "solution": True,
                                  "locked": False, "schema_version": 3}
    steals.cells.insert(index, thief)
    turned = copy.deepcopy(correct)
    cell = turned.cells[grade_cell_index(turned, "check_causal_mask")]
    cell.metadata.nbgrader.update(solution=True, locked=False)
    cell.source = "pass"
    return {"new_grade_cell": new_grade, "steals_a_check_id": steals, "check_turned_solution": turned}


class Listener:
    """A loopback listener that records whoever connects; bounded: it stops when told or after 20 min."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        deadline = time.monotonic() + 1200
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.received.append(conn.recv(100) or b"(connected)")
                except OSError:
                    self.received.append(b"(connected)")

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


class SharedMemoryPeak:
    """The largest growth of the host's shared memory (tmpfs pages: /proc/meminfo Shmem) while it is open."""

    def __init__(self):
        self.growth_mb, self._stop = 0.0, threading.Event()

    @staticmethod
    def _shmem_mb():
        for line in open("/proc/meminfo"):
            if line.startswith("Shmem:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self):
        base = self._shmem_mb()
        while not self._stop.wait(0.1):
            self.growth_mb = max(self.growth_mb, self._shmem_mb() - base)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class DiskPeak(SharedMemoryPeak):
    """The largest growth of the used space of the file system that holds `folder` while it is open."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def _shmem_mb(self):
        import shutil

        return shutil.disk_usage(self.folder).used / 2**20


def orphan_processes():
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if f"sleep {ORPHAN_MARK}" in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def hostile_batch(tmp_path_factory):
    course = copy_course(tmp_path_factory.mktemp("hostile"))
    make(course, "release")
    listener = Listener()
    try:
        students = {"bystander": student_notebook(reference_answers()), **attacks(course, listener.port),
                    **broken_inputs()}
        for student, nb in students.items():
            write_submission(course, student, {NB1: nb})
        (course / "submitted" / "missing_notebook" / "attention_surgeon").mkdir(parents=True)
        write_submission(course, "renamed_copy", {f"{NB1}-Copy1": student_notebook(honest_base())})
        folder = write_submission(course, FORMULA_ID, {NB1: student_notebook(honest_base())})
        nbformat.write(student_notebook({}), folder / FORGED_FILE)
        write_submission(course, FORGER_ID, {NB1: student_notebook(honest_base())})
        (course / "submitted" / "linked_classmate").mkdir()
        (course / "submitted" / "linked_classmate" / "attention_surgeon").symlink_to("../bystander/attention_surgeon")
        before = tree_digest(course / "submitted")
        started = time.monotonic()
        # This batch's sandboxes live here, so leftovers can be told apart from those of tests running
        # beside it. The path is long on purpose: kernel sockets must still find a short enough home.
        scratch = course / "scratch" / ("long-tmpdir-" * 3)
        scratch.mkdir(parents=True)
        with SharedMemoryPeak() as shmem, DiskPeak(scratch) as disk:
            result = make(course, "autograde", env={**LIMITS, "TMPDIR": str(scratch)}, timeout=1800)
        elapsed = time.monotonic() - started
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest process of it
        time.sleep(1)
        received = list(listener.received)
    finally:
        listener.close()
    return {"course": course, "before": before, "elapsed": elapsed, "received": received,
            "output": result.stdout, "orphans": orphan_processes(), "scratch": scratch,
            "shmem_growth_mb": shmem.growth_mb, "disk_growth_mb": disk.growth_mb, "peak_rss_mb": peak_rss_mb}


def autograded_text(course, student):
    nb = nbformat.read(course / "autograded" / student / "attention_surgeon" / f"{NB1}.ipynb", as_version=4)
    return json.dumps([c.get("outputs", []) for c in nb.cells])


def feedback_text(course, student):
    html = (course / "feedback" / student / "attention_surgeon" / f"{NB1}.html").read_text()
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_every_attack_gains_nothing_and_no_other_grade_moves(hostile_batch):
    grades = read_grades(hostile_batch["course"])
    expected = {student: MASK_POINTS for student in grades}  # the honest base's worth, nothing more
    expected.update({
        "bystander": FULL,
        "rewrites_later_cells": 0.0,  # later cells are `pass`, in the kernel and in the worker: masks undefined
        "fused_through_getattr": MASK_POINTS,  # correct but ready-made attention: every attention check is lost
        "empty_file": 0.0, "missing_notebook": 0.0, "json_bomb": 0.0,
    })
    assert grades == expected
    assert len(grades) == 28 and "'" + FORMULA_ID in grades  # not the forger, not the linked folder


def test_names_students_chose_are_inert_in_the_terminal_and_in_grades_csv(hostile_batch):
    """Before (issue 18): a file name with newlines forged a FLAGGED line and a fake summary line, escape
    sequences set the grader's terminal title, and a folder named =HYPERLINK(...) became a formula in
    grades.csv. Now: one line per submission, no control byte, no cell a spreadsheet would run."""
    import csv

    output = hostile_batch["output"]
    assert not [c for c in output if ord(c) < 32 and c != "\n"], "no control character reaches the terminal"
    lines = output.splitlines()
    flagged_students = ("tampers_with_tripwires", "fused_through_getattr")  # the two the static scan flags
    assert [line for line in lines if line.startswith("  FLAGGED")] == \
        [line for line in lines if line.startswith(tuple(f"  FLAGGED for a TA: {s}: " for s in flagged_students))]
    assert len([line for line in lines if line.startswith("  bystander ")]) == 1
    assert len([line for line in lines if line.startswith("  " + FORMULA_ID[:20])]) == 1
    assert "NOT GRADED: submitted/forger\\n  bystander attention_surgeon ok 12.0 s\\x1b]0;pwned\\x07 is not a " \
           "student id" in output
    assert "NOT GRADED: submitted/linked_classmate/attention_surgeon is a symbolic link" in output
    assert "x\\n  FLAGGED for a TA: bystander: copied from a classmate\\x1b]2;title\\x07.ipynb is not one of" in output
    with open(hostile_batch["course"] / "grades.csv", newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]


def test_the_batch_finishes_in_bounded_time_and_leaves_nothing_running(hostile_batch):
    print(f"hostile batch: {len(read_grades(hostile_batch['course']))} submissions graded in "
          f"{hostile_batch['elapsed']:.0f} s")
    assert hostile_batch["elapsed"] < 1500
    assert hostile_batch["orphans"] == []
    scratch = str(hostile_batch["scratch"])
    assert not [p for p in psutil.process_iter(["cmdline", "cwd"])
                if scratch in " ".join(p.info["cmdline"] or []) + " " + str(p.info["cwd"] or "")]
    assert not list(hostile_batch["scratch"].iterdir()), "every sandbox's scratch folder is removed"


def test_tampering_routes_are_flagged_for_a_ta(hostile_batch):
    """Before: switching off the worker's tripwires passed silently. Now the static scan finds the route;
    every attention check that passed waits for a TA ("needs manual grade"), and the summary says so."""
    from nbgrader.api import Gradebook

    course = hostile_batch["course"]
    assert "FLAGGED for a TA: tampers_with_tripwires" in hostile_batch["output"]
    assert "getattr(torch.ops.aten, <computed name>)" in hostile_batch["output"]
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        grades = {g.name: g for g in gb.find_submission_notebook(NB1, "attention_surgeon",
                                                                   "tampers_with_tripwires").grades}
        flagged = grades["check_attention_no_fused_kernels"]
        assert flagged.needs_manual_grade and flagged.auto_score is None
    assert not [line for line in hostile_batch["output"].splitlines() if line.startswith("  FLAGGED for a TA: bystander")]


def test_no_network(hostile_batch):
    assert hostile_batch["received"] == []
    assert "CONNECTED" not in autograded_text(hostile_batch["course"], "opens_socket")


def test_secrets_are_out_of_reach(hostile_batch):
    course = hostile_batch["course"]
    outputs = autograded_text(course, "reads_secrets")  # what the student's code printed
    assert "READ " not in outputs and "NO " in outputs
    feedback = feedback_text(course, "reads_secrets")
    for name in ("reference_with_grads", "expect_matches_reference", "### BEGIN SOLUTION", "def attention_gradients"):
        assert name not in outputs and name not in feedback


def test_gradebook_and_submitted_are_untouched(hostile_batch):
    course = hostile_batch["course"]
    assert tree_digest(course / "submitted") == hostile_batch["before"]
    assert "WROTE" not in autograded_text(course, "writes_gradebook")
    assert read_grades(course)["writes_gradebook"] == MASK_POINTS  # its honest worth, nothing more
    assert read_grades(course)["bystander"] == FULL


def test_writable_places_in_the_sandbox_are_capped(hostile_batch):
    """Before: /tmp was an unsized tmpfs and the kernel's folder was on the host's disk (6.9 GB of the
    host's RAM, 3 GB of disk). Now each writable place is a tmpfs of SANDBOX_WRITABLE_MB."""
    course = hostile_batch["course"]
    outputs = autograded_text(course, "floods_writable_places")
    cap_files = WRITABLE_MB // FLOOD_FILE_MB
    for folder in ("/tmp", ".", "..", "/dev/shm"):
        assert f"FLOOD {folder} {cap_files}\\n" in outputs, (folder, outputs)
    for folder in ("/", "/dev"):  # bwrap's own unsized tmpfs: read-only
        assert f"FLOOD {folder} 0\\n" in outputs, (folder, outputs)
    # Before (issue 18): the kernel's working folder's parent was its IPC folder on the host's disk,
    # and 48 files of 63 MiB grew the host's disk by 2995 MiB. (Tests beside this one write some too.)
    print(f"the host's disk grew by at most {hostile_batch['disk_growth_mb']:.0f} MB during the batch")
    assert hostile_batch["disk_growth_mb"] < 1024
    # At most every sandbox of the batch full at once: two workers, each a kernel (/tmp and its
    # folder) and a worker (/tmp), plus room for the host's own changes meanwhile.
    bound = 2 * 3 * WRITABLE_MB + 512  # (tests beside this one use some too: a browser, its /dev/shm)
    print(f"shared memory grew by at most {hostile_batch['shmem_growth_mb']:.0f} MB (bound {bound} MB)")
    assert hostile_batch["shmem_growth_mb"] < bound


def test_output_is_capped(hostile_batch):
    course = hostile_batch["course"]
    feedback = course / "feedback" / "huge_output" / "attention_surgeon" / f"{NB1}.html"
    assert feedback.stat().st_size < 2_000_000
    assert "output truncated" in autograded_text(course, "huge_output")
    assert (course / "autograded" / "huge_stored_output" / "attention_surgeon" / f"{NB1}.ipynb").stat().st_size < 2_000_000


def test_killed_or_stopped_kernels_get_a_clear_reason(hostile_batch):
    course = hostile_batch["course"]
    assert "ran longer than 8 s" in autograded_text(course, "infinite_loop")
    assert "kernel died" in autograded_text(course, "os_exit")
    assert "MemoryError" in autograded_text(course, "memory_hog")


def test_a_notebook_built_to_exhaust_memory_is_read_within_the_budget(hostile_batch):
    """Before (issue 18): staging parsed every notebook in the grader's own process; 30 MB of empty JSON
    objects cost 12.5 GB. Now it is read in a child capped at NOTEBOOK_PARSE_MEMORY_MB beyond the
    grader's own size, graded as unanswered with a note, and the batch goes on."""
    course = hostile_batch["course"]
    notes = unescape((course / "feedback" / "json_bomb" / "attention_surgeon" / "grading_notes.html").read_text())
    assert f"could not be read: reading it took more than {PARSE_MEMORY_MB} MB of memory" in notes
    print(f"the largest process of the batch peaked at {hostile_batch['peak_rss_mb']:.0f} MB")
    # The cap is on address space beyond the grader's own (a few hundred MB; the kernels import torch).
    assert hostile_batch["peak_rss_mb"] < PARSE_MEMORY_MB + 2048
    assert read_grades(course)["bystander"] == FULL


def test_broken_notebooks_get_a_clear_note(hostile_batch):
    course = hostile_batch["course"]
    notes = {s: unescape((course / "feedback" / s / "attention_surgeon" / "grading_notes.html").read_text())
             for s in ("empty_file", "missing_notebook", "new_grade_cell", "steals_a_check_id",
                       "check_turned_solution", "renamed_copy")}
    assert "could not be read" in notes["empty_file"]
    assert "was not submitted" in notes["missing_notebook"]
    assert "claimed the grade id 'free_points', which is not one of this assignment's" in notes["new_grade_cell"]
    assert "a second cell claimed to be 'check_causal_mask'" in notes["steals_a_check_id"]
    assert "'check_causal_mask' had been changed into another kind of cell" in notes["check_turned_solution"]
    assert f"{NB1}-Copy1.ipynb was graded as {NB1}.ipynb" in notes["renamed_copy"]
