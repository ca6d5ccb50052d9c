"""The batch at scale: Dask runs it, the gradebook can be PostgreSQL, a dead worker changes nothing.

One batch (correct, buggy, blank, unreadable, hostile, over the time limit, and a bonus) graded three
ways must give exactly the same grade cells: by default (SQLite, the embedded LocalCluster of 2
workers); into a throw-away PostgreSQL server started here (Debian's postgresql, initdb and pg_ctl
as the postgres user, a Unix socket only, no TCP; .ci/run installs the package, as a course's
grading host would); and with a Dask worker killed with SIGKILL in the middle of a submission."""
import glob
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from autograder.sandbox import NEXT_SUBMISSION_PREFIX, TASK_PREFIX
from tests.conftest import SandboxRecorder, copy_course, make, read_grades, user_env
from tests.students import BONUS, NB1, NB2, NB4, reference_answers, student_notebook, write_submission

MASK = "create_reverse_mask"  # the grade id of the last mask answer
NO_SCALE = ("scores = scores / math.sqrt(Q.shape[-1])", "scores = scores")
DATABASE = "attention_surgeon"


def postgres_bin(tool):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        pytest.fail(f"{tool} not found: install Debian's postgresql package (.ci/run does)")
    return found[-1]


def as_postgres(*command):
    return subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def server():
    """A PostgreSQL server of our own, on a Unix socket in a temporary folder; stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix="as-pg-", dir="/tmp"))
    shutil.chown(folder, "postgres")
    data, sockets = folder / "data", folder
    result = as_postgres(postgres_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
    assert result.returncode == 0, result.stdout + result.stderr
    result = as_postgres(postgres_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                         f"-c listen_addresses='' -c unix_socket_directories={sockets}", "start")
    assert result.returncode == 0, result.stdout + result.stderr + (folder / "log").read_text()
    try:
        result = as_postgres(postgres_bin("createdb"), "-h", str(sockets), "-U", "postgres", DATABASE)
        assert result.returncode == 0, result.stderr
        yield f"postgresql+psycopg://postgres@/{DATABASE}?host={sockets}"
    finally:
        as_postgres(postgres_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# Short limits for every run of the batch: the slow student runs into the submission's clock. The honest
# submission (Notebooks 1 and 2) once ran past a 60 s clock in CI, beside another test's batch on 2 cores,
# so the clock is twice that.
CELL_S, SUBMISSION_S = 15, 120
LIMITS = {"ATTENTION_SURGEON_GRADING_PARALLELISM": "2", "ATTENTION_SURGEON_CELL_TIMEOUT_S": str(CELL_S),
          "ATTENTION_SURGEON_SUBMISSION_TIMEOUT_S": str(SUBMISSION_S), "ATTENTION_SURGEON_SUBMISSION_GRACE_S": "30"}
SLOW = "a_too_slow"  # sorts first, so its clock runs while the other worker grades the rest
STUDENTS = [SLOW, "blank", "broken_json", "correct", "exits_its_kernel", "loops_forever", "no_scale"]
SLOW_CELL_S = 6  # each cell well inside the cell's limit; together past the submission's


def batch(course):
    """Correct, buggy, blank, unreadable, hostile (kills its kernel; loops forever) and over the time
    limit (cells of SLOW_CELL_S each, one after another, past the submission's clock), and one student's bonus."""
    answers = reference_answers()
    masks = {k: v for k, v in answers.items() if k in ("create_causal_mask", "create_reverse_mask")}
    write_submission(course, "correct", {NB1: student_notebook(answers),
                                         NB2: student_notebook(reference_answers(NB2), name=NB2)})
    write_submission(course, "no_scale", {NB1: student_notebook(answers, mutate=lambda c: c.replace(*NO_SCALE))})
    write_submission(course, "blank", {NB1: student_notebook({})})
    write_submission(course, "broken_json", {NB1: '{"cells": [ this is not json'})
    # After the masks are written, a cell kills the kernel, or loops until the cell's time limit stops it.
    write_submission(course, "exits_its_kernel", {NB1: student_notebook(masks, extra_cells=[(MASK, "import os\nos._exit(0)")])})
    write_submission(course, "loops_forever", {NB1: student_notebook(masks, extra_cells=[(MASK, "while True:\n    pass")])})
    slow_cells = SUBMISSION_S // SLOW_CELL_S + 2
    write_submission(course, SLOW, {NB1: student_notebook(
        {}, extra_cells=[("setup", f"import time\ntime.sleep({SLOW_CELL_S})")] * slow_cells)})
    write_submission(course, "correct", {NB4: student_notebook(reference_answers(NB4), name=NB4)}, assignment=BONUS)


def every_grade(db_url):
    """{(assignment, student, notebook, grade): (auto score, needs a manual grade)}, and how many submission
    rows each (assignment, student) has."""
    from nbgrader.api import Gradebook, SubmittedAssignment

    grades, rows = {}, {}
    with Gradebook(db_url) as gradebook:
        for submission in gradebook.db.query(SubmittedAssignment).all():
            key = (submission.assignment.name, submission.student.id)
            rows[key] = rows.get(key, 0) + 1
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    grades[key + (notebook.name, grade.name)] = (grade.auto_score, grade.needs_manual_grade)
    return grades, rows


def sqlite_url(course):
    return f"sqlite:///{course / 'gradebook.db'}"


@pytest.fixture(scope="module")
def on_sqlite(tmp_path_factory):
    """The batch graded the default way: SQLite, the embedded LocalCluster of 2 workers."""
    course = copy_course(tmp_path_factory.mktemp("sqlite"))
    make(course, "release")
    batch(course)
    sandboxes = SandboxRecorder(tmp_path_factory.mktemp("sandboxes"))
    started = time.monotonic()
    result = make(course, "autograde", env={**LIMITS, **sandboxes.env})
    print(f"graded on SQLite in {time.monotonic() - started:.0f} s")
    return course, result.stdout, sandboxes


def stopped_kernels(course):
    """The graded notebooks whose kernel died or was stopped by a cell's time limit, from their notes (the
    hostile ones; an honest cell can run past a short limit on a busy machine). The submission's clock
    stopping a notebook is not one of them: it starts no worker."""
    notes = ("the kernel died while running this cell", "(the time limit per cell), so the kernel was stopped")
    found = []
    for path in sorted((course / "autograded").glob("*/*/*.ipynb")):
        errors = [o.get("evalue", "") for c in nbformat.read(path, as_version=4).cells
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if any(note in error for note in notes for error in errors):
            found.append(str(path.relative_to(course / "autograded")))
    return found


def test_the_batch_grades_each_submission_for_what_it_is(on_sqlite):
    course, output, _ = on_sqlite
    grades = read_grades(course)
    assert sorted(grades) == STUDENTS
    assert grades["correct"] > grades["no_scale"] > grades["exits_its_kernel"] > 0
    assert grades["loops_forever"] == grades["exits_its_kernel"], "both keep exactly the masks they wrote"
    assert grades["blank"] == grades["broken_json"] == grades[SLOW] == 0
    feedback = (course / "feedback" / SLOW / "attention_surgeon" / f"{NB1}.html").read_text()
    assert f"grading your submission took more than {SUBMISSION_S} s in all" in feedback
    assert read_grades(course, BONUS)["correct"] > 0
    _, rows = every_grade(sqlite_url(course))
    assert set(rows.values()) == {1} and len(rows) == len(STUDENTS) + 1


def test_progress_shows_counts_as_submissions_finish_and_ends_with_the_summary(on_sqlite):
    _, output, _ = on_sqlite
    total = len(STUDENTS) + 1
    counts = [int(n) for n in re.findall(rf"^  \[(\d+)/{total}\] ", output, re.M)]
    assert counts == list(range(1, total + 1)), output
    assert re.search(r"about \d+ s left", output)
    assert "\x1b" not in output and "\r" not in output, "no terminal control codes when stdout is not a terminal"
    last = [line for line in output.splitlines() if not line.startswith("make")][-2:]  # make[1]: under make test
    assert last[0].startswith(f"graded {total} submission(s) in ") and "make report" in last[1], output[-2000:]


def test_one_sandbox_per_submission_runs_its_notebooks_and_answers_their_checks(on_sqlite):
    """Counted from outside the grader (a bwrap that writes down what it starts): one sandbox per submission,
    its kernel template, which forks each notebook's kernel. Each grading process starts the template of its
    next submission ahead, in an empty folder of its own (named after that process), as it starts and as a
    submission takes the one waiting: so a process whose n submissions ran notebooks started n + 1
    templates, one of them never used; unanswered and unreadable submissions take none. No worker for the
    hidden checks unless a kernel died or was stopped by its cell's time limit (the notebook stopped by the
    submission's clock starts nothing more). Every sandbox has ended when the batch ends."""
    course, _, sandboxes = on_sqlite
    started = sandboxes.started()
    per_process = {}
    for _, kind, folder in started:
        if kind == "template":
            name = Path(folder).name
            assert name.startswith(NEXT_SUBMISSION_PREFIX), f"every template was started ahead: {started}"
            process = name.removeprefix(NEXT_SUBMISSION_PREFIX).split("-")[0]
            per_process[process] = per_process.get(process, 0) + 1
    ran = len(STUDENTS) + 1 - 2  # every submission but the blank one and the unreadable one runs a notebook
    assert 2 <= len(per_process) <= 3, "a grading process per worker (and one that replaced the process stopped " \
                                       "by the submission's hard limit, if it was)"
    assert sum(per_process.values()) == ran + len(per_process), started
    kinds = [kind for _, kind, _ in started]
    stopped = stopped_kernels(course)
    assert len(stopped) >= 2, "the kernel that exited and the one that looped were stopped"
    assert kinds.count("checks") == len(stopped), f"a worker each for the kernels that were stopped: {stopped}"
    assert "kernel" not in kinds, "every kernel was forked by its submission's template"
    assert set(kinds) <= {"template", "checks", "preflight"}, started
    alive = [pid for pid, _, _ in started if psutil.pid_exists(pid) and "bwrap" in psutil.Process(pid).name()]
    assert not alive, "every sandbox ended with its submission"
    for student in ("correct", "no_scale"):  # the forked kernels ran the notebooks: cells have outputs
        nb = nbformat.read(course / "autograded" / student / "attention_surgeon" / f"{NB1}.ipynb", as_version=4)
        assert any(o.get("output_type") == "stream" for c in nb.cells if "hidden_check" not in c.source
                   for o in c.get("outputs", [])), student


def test_a_stopped_kernel_still_gets_the_checks_of_what_it_defined_before(on_sqlite):
    """The masks were written before the cell that killed (or hung) the kernel: their checks are decided and
    pass, and the notebook says which cell stopped the run."""
    course, _, _ = on_sqlite
    for student, note in (("exits_its_kernel", "the kernel died while running this cell"),
                          ("loops_forever", f"ran longer than {CELL_S} s")):
        nb = nbformat.read(course / "autograded" / student / "attention_surgeon" / f"{NB1}.ipynb", as_version=4)
        text = {c.metadata.get("nbgrader", {}).get("grade_id"): json.dumps(c.get("outputs", [])) for c in nb.cells}
        assert note in json.dumps([c.get("outputs", []) for c in nb.cells]), student
        for check in ("causal_mask", "reverse_mask"):
            assert "passed" in text[f"check_{check}"] and "HiddenCheckFailed" not in text[f"check_{check}"], student


def test_a_postgresql_gradebook_holds_exactly_the_grades_sqlite_holds(server, on_sqlite, tmp_path):
    from nbgrader.api import Gradebook

    sqlite_course, _, _ = on_sqlite
    on_postgres = copy_course(tmp_path)
    postgres = {**user_env(), **LIMITS, "ATTENTION_SURGEON_GRADEBOOK_URL": server}  # every command uses it
    make(on_postgres, "release", env=postgres)
    batch(on_postgres)
    started = time.monotonic()
    make(on_postgres, "autograde", env=postgres)
    print(f"graded into PostgreSQL in {time.monotonic() - started:.0f} s")

    assert not (on_postgres / "gradebook.db").exists(), "nothing was written to an SQLite file"
    for assignment in ("attention_surgeon", BONUS):
        assert read_grades(on_postgres, assignment) == read_grades(sqlite_course, assignment)
    assert every_grade(server) == every_grade(sqlite_url(sqlite_course)), "every grade cell, and one row each"
    with Gradebook(server) as gradebook:  # the rows are in the server, where formgrader reads them
        assert sorted(s.id for s in gradebook.students) == STUDENTS
        assert gradebook.find_submission(BONUS, "correct").score == read_grades(sqlite_course, BONUS)["correct"] > 0
    assert (on_postgres / "feedback" / "correct" / "attention_surgeon" / f"{NB1}.html").exists()


def test_a_worker_killed_mid_batch_changes_no_grade(on_sqlite, tmp_path):
    """SIGKILL of a Dask worker while it grades: its task runs again on a worker the nanny starts, the
    batch finishes, every grade equals the uninterrupted run's, and no submission has two rows."""
    sqlite_course, _, _ = on_sqlite
    course = copy_course(tmp_path)
    make(course, "release")
    batch(course)
    scratch = Path(tempfile.mkdtemp(prefix="kill-", dir="/tmp"))
    try:
        grading = subprocess.Popen(["make", "-o", ".venv/.installed", "autograde"], cwd=course,
                                   env={**user_env(), **LIMITS, "TMPDIR": str(scratch)}, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        killed, deadline = None, time.monotonic() + 300
        while killed is None and grading.poll() is None and time.monotonic() < deadline:
            # A worker is mid-task while its folder holds a submission's throw-away course (not the slow
            # student's: graded again, it would hold the batch for another clock).
            busy = [f for f in scratch.glob(f"{TASK_PREFIX}*")
                    if {p.name for p in f.glob("submission-*/submitted/*")} - {SLOW}]
            if busy:
                time.sleep(2.0)
                killed = int(busy[0].name[len(TASK_PREFIX):].split("-")[0])
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        output, _ = grading.communicate(timeout=900)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert killed is not None, "no worker was seen grading"
    assert grading.returncode == 0, output[-4000:]
    print(f"killed worker {killed}\n{output[-3000:]}")
    assert every_grade(sqlite_url(course)) == every_grade(sqlite_url(sqlite_course))
    for assignment in ("attention_surgeon", BONUS):
        assert read_grades(course, assignment) == read_grades(sqlite_course, assignment)


def test_a_gradebook_url_of_another_kind_names_the_variable():
    result = subprocess.run([sys.executable, "-c", "import course_config"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "ATTENTION_SURGEON_GRADEBOOK_URL": "mysql://grader:secret@db/course"})
    assert result.returncode != 0 and "ATTENTION_SURGEON_GRADEBOOK_URL" in result.stderr
    assert "secret" not in result.stderr, "the URL's password is never printed"
