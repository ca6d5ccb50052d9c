"""Grading time per submission next to the floor, measured side by side in one process.

    floor    = the submissions' notebooks (all four: the main assignment and the bonus), each executed
               once in a plain Jupyter kernel (nbclient)
    grading  = `make autograde` over the same submissions, one at a time (parallelism 1): the
               sandboxed kernel, the trusted hidden checks, feedback and grades.csv; its total
               divided by the number of submissions, so start-up costs are counted
    batch    = `make autograde` with course_config.GRADING_PARALLELISM (every core)
    per notebook: its plain execution time; then, as SandboxedExecute grades it, its execution in
               the sandboxed kernel and the wall time of its hidden checks asked of that same kernel
               afterwards. Grader and kernel take turns (request, reply), so this wall time bounds
               their CPU time; the kernel's own CPU cannot be read from here (its sandbox is killed).

Run:  .venv/bin/python benchmarks/grading_time.py [--students 4] [--rounds 2]
It works in a temporary copy of the course; nothing here is touched.
"""
import argparse
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

from autograder.pipeline import (ChecksPlan, grading_on_cuda, graded_answers, student_code,  # noqa: E402
                                 student_written_code)
from autograder.sandbox import sandboxed_kernel_manager_class  # noqa: E402
from autograder.student import KernelConnection  # noqa: E402
from tests.grading import check_points  # noqa: E402
from tests.students import (ASSIGNMENT_OF, BONUS, NB4, NOTEBOOKS, reference_answers, student_notebook,  # noqa: E402
                            write_submission)

COURSE_FILES = ["course_config.py", "nbgrader_config.py", "Makefile", "requirements.lock", "autograder", "source",
                "release", "tests"]


def copy_course(into):
    course = Path(into) / "course"
    course.mkdir()
    for name in COURSE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, course / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        else:
            shutil.copy2(src, course / name)
    (course / ".venv").symlink_to(ROOT / ".venv")
    return course


def env():
    e = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", MPLBACKEND="Agg")
    e.pop("ATTENTION_SURGEON_SANDBOX", None)
    return e


def floor_seconds(notebook_paths):
    started = time.perf_counter()
    for path in notebook_paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - started


def sandboxed_seconds(path, name):
    """(execution, hidden checks): wall seconds of one notebook in the grader's sandboxed kernel, then of
    its hidden checks asked of that same kernel, as SandboxedExecute does both."""
    nb = nbformat.read(path, as_version=4)
    plan = ChecksPlan(list(check_points(name)), student_code(nb), student_written_code(nb), graded_answers(nb),
                      grading_on_cuda())
    client = NotebookClient(nb, timeout=600, allow_errors=True, kernel_manager_class=sandboxed_kernel_manager_class(),
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        executed = time.perf_counter()
        kernel = KernelConnection.open(client.km.checks_socket, client.km.stop_sandbox, client.km.checks_peer())
        assert kernel is not None, "the kernel did not answer the checks"
        verdicts = plan.decide(logging.getLogger("benchmark"), kernel=kernel)
        checked = time.perf_counter()
    assert all(v.status != "failed" for v in verdicts.values()), verdicts
    return executed - started, checked - executed


# make autograde's summary line of one submission: "  <student>  <assignment>  ok  12.3 s  <notes>"
SUBMISSION_LINE = re.compile(r"^  \S+\s+\S+\s+ok\s+(?P<seconds>\d+\.\d) s", re.M)


def autograde_seconds(course, parallelism):
    """(wall seconds of the whole `make autograde`, the sum of the seconds it reports per submission: the
    grading host's time from the submission's files in to its notebooks and grades out)."""
    started = time.perf_counter()
    result = subprocess.run(["make", "-o", ".venv/.installed", "autograde", "FORCE=1"], cwd=course, check=True,
                            capture_output=True, text=True,
                            env=dict(env(), ATTENTION_SURGEON_GRADING_PARALLELISM=str(parallelism)))
    return time.perf_counter() - started, sum(float(m["seconds"]) for m in SUBMISSION_LINE.finditer(result.stdout))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        course = copy_course(tmp)
        subprocess.run(["make", "-o", ".venv/.installed", "release"], cwd=course, env=env(), check=True,
                       capture_output=True)
        students = [f"student{i:02d}" for i in range(args.students)]
        for student in students:  # the main assignment and the bonus (Notebook 4)
            write_submission(course, student, {name: student_notebook(reference_answers(name), name=name)
                                               for name in NOTEBOOKS})
            write_submission(course, student, {NB4: student_notebook(reference_answers(NB4), name=NB4)},
                             assignment=BONUS)
        floors, gradings, hosts = [], [], []
        for _ in range(args.rounds):  # alternated, so both see the same machine state
            floors.append(sum(floor_seconds(sorted((course / "submitted" / s).glob("*/*.ipynb")))
                              for s in students) / len(students))
            total, on_hosts = autograde_seconds(course, parallelism=1)
            gradings.append(total / len(students))
            hosts.append(on_hosts / len(students))
        cores = os.cpu_count() or 1
        batch, _ = autograde_seconds(course, parallelism=cores)
        floor, grading, host = statistics.median(floors), statistics.median(gradings), statistics.median(hosts)
        print(f"machine: {cores} cores; {len(students)} correct submissions; {args.rounds} rounds (median)")
        print(f"floor   (notebooks executed once in a plain kernel):       {floor:6.2f} s per submission")
        print(f"grading (make autograde, one at a time, all costs counted): {grading:6.2f} s per submission")
        print(f"ratio grading / floor: {grading / floor:.2f}  (the goal: at most 1.0, the floor itself)")
        print(f"  of which the submissions themselves (the seconds make autograde reports for each, summed): "
              f"{host:6.2f} s per submission, {host / floor:.2f} of the floor")
        print(f"  and the batch's own costs, once per batch (staging, preflight, the cluster, feedback/, "
              f"grades.csv), shared by its {len(students)}: {grading - host:6.2f} s per submission")
        print(f"batch: {len(students)} submissions in {batch:.1f} s with {cores} at a time "
              f"= {60 * len(students) / batch:.1f} submissions per minute")
        print("per notebook (reference answers): plain execution | sandboxed kernel: execution + hidden checks")
        for name in (*NOTEBOOKS, NB4):
            path = course / "submitted" / students[0] / ASSIGNMENT_OF[name] / f"{name}.ipynb"
            execution, checks = sandboxed_seconds(path, name)
            print(f"  {name:28s} {floor_seconds([path]):6.2f} s | {execution:6.2f} s + {checks:6.2f} s")


if __name__ == "__main__":
    main()
