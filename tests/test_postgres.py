"""The gradebook on PostgreSQL (course_config.GRADEBOOK_URL): a throw-away server started here
(Debian's postgresql, initdb and pg_ctl as the postgres user, a Unix socket only, no TCP), and a
batch graded into it by `make autograde` gives exactly the grades the default SQLite gradebook gives.
.ci/run installs the postgresql package, as a course's grading host would."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import copy_course, make, read_grades, user_env
from tests.students import BONUS, NB1, NB2, NB4, reference_answers, student_notebook, write_submission

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


def batch(course):
    """Honest, buggy, blank and unreadable submissions, and one student's bonus."""
    answers = reference_answers()
    write_submission(course, "correct", {NB1: student_notebook(answers),
                                         NB2: student_notebook(reference_answers(NB2), name=NB2)})
    write_submission(course, "no_scale", {NB1: student_notebook(answers, mutate=lambda c: c.replace(*NO_SCALE))})
    write_submission(course, "blank", {NB1: student_notebook({})})
    write_submission(course, "broken_json", {NB1: '{"cells": [ this is not json'})
    write_submission(course, "correct", {NB4: student_notebook(reference_answers(NB4), name=NB4)}, assignment=BONUS)


def test_a_postgresql_gradebook_holds_exactly_the_grades_sqlite_holds(server, tmp_path):
    from nbgrader.api import Gradebook

    (tmp_path / "sqlite").mkdir()
    (tmp_path / "postgres").mkdir()
    on_sqlite, on_postgres = copy_course(tmp_path / "sqlite"), copy_course(tmp_path / "postgres")
    postgres = {**user_env(), "ATTENTION_SURGEON_GRADEBOOK_URL": server}  # every command of that course uses it
    for course, env in ((on_sqlite, None), (on_postgres, postgres)):
        make(course, "release", env=env)
        batch(course)
    started = time.monotonic()
    make(on_postgres, "autograde", env=postgres)
    print(f"graded into PostgreSQL in {time.monotonic() - started:.0f} s")
    make(on_sqlite, "autograde")

    assert not (on_postgres / "gradebook.db").exists(), "nothing was written to an SQLite file"
    for assignment in ("attention_surgeon", BONUS):
        assert read_grades(on_postgres, assignment) == read_grades(on_sqlite, assignment)
    assert read_grades(on_postgres)["correct"] > read_grades(on_postgres)["no_scale"] > 0
    with Gradebook(server) as gradebook:  # the rows are in the server, where formgrader reads them
        assert sorted(s.id for s in gradebook.students) == ["blank", "broken_json", "correct", "no_scale"]
        score = gradebook.find_submission(BONUS, "correct").score
        assert score == read_grades(on_sqlite, BONUS)["correct"] > 0
    assert (on_postgres / "feedback" / "correct" / "attention_surgeon" / f"{NB1}.html").exists()


def test_a_gradebook_url_of_another_kind_names_the_variable():
    result = subprocess.run([sys.executable, "-c", "import course_config"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "ATTENTION_SURGEON_GRADEBOOK_URL": "mysql://grader:secret@db/course"})
    assert result.returncode != 0 and "ATTENTION_SURGEON_GRADEBOOK_URL" in result.stderr
    assert "secret" not in result.stderr, "the URL's password is never printed"
