"""Grading time per submission next to the floor, measured side by side in one process.

    floor    = the submissions' notebooks (all four: the main assignment and the bonus), each executed
               once in a plain Jupyter kernel (nbclient)
    grading  = `make autograde` over the same submissions, one at a time (parallelism 1): the
               sandboxed kernel, the trusted hidden checks, feedback and grades.csv; its total
               divided by the number of submissions, so start-up costs are counted
    batch    = `make autograde` with course_config.GRADING_PARALLELISM (every core)
    per notebook: its plain execution time; then, as SandboxedExecute grades it, its execution in
               the sandboxed kernel and the wall time of its hidden checks asked of that same kernel
               afterwards, with the CPU seconds the grader itself spent on them (inputs, float64
               references, judging, the wire). Grader and kernel take turns (request, reply), so the
               rest of that wall time is about the student's code at work; the kernel's own CPU cannot
               be read from here (its sandbox is killed).

    steps:   where the batch's own time goes (make autograde's "time by step", .grading/logs/batch_steps.json)

Before and after, side by side: --baseline REV grades the same submissions with the course as it was at
git revision REV as well, in the same rounds, alternated with this checkout (floor, baseline, this
checkout, and again), so both meet the same machine. A baseline whose requirements.lock differs gets a
venv of its own, made by its own `make venv` (a few minutes; --baseline-venv PATH reuses one).

Run:  .venv/bin/python benchmarks/grading_time.py [--students 4] [--rounds 2] [--baseline REV]
It works in temporary copies of the course; nothing here is touched.
"""
import json
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
    """This checkout's course, in `into`/course, with this venv."""
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


def baseline_course(into, revision, venv=None):
    """The course as it was at git `revision`, in `into`/baseline, with a venv for its requirements.lock."""
    course = Path(into) / "baseline"
    course.mkdir()
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(course)], input=archive, check=True)
    if venv:
        (course / ".venv").symlink_to(Path(venv).resolve())
    elif (course / "requirements.lock").read_bytes() == (ROOT / "requirements.lock").read_bytes():
        (course / ".venv").symlink_to(ROOT / ".venv")
    else:
        print(f"making a venv for {revision}'s requirements.lock (make venv) ...", flush=True)
        subprocess.run(["make", "venv"], cwd=course, check=True, capture_output=True)
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
    """(execution, hidden checks, the grader's CPU during the checks): wall seconds of one notebook in the
    grader's sandboxed kernel, then of its hidden checks asked of that same kernel, as SandboxedExecute
    does both, and the CPU seconds this process (the grader: inputs, float64 references, judging, the
    wire) spent on those checks. The rest of the checks' wall time is the student's code at work."""
    nb = nbformat.read(path, as_version=4)
    plan = ChecksPlan(list(check_points(name)), student_code(nb), student_written_code(nb), graded_answers(nb),
                      grading_on_cuda())
    client = NotebookClient(nb, timeout=600, allow_errors=True, kernel_manager_class=sandboxed_kernel_manager_class(),
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        executed, grader_cpu = time.perf_counter(), time.process_time()
        kernel = KernelConnection.open(client.km.checks_socket, client.km.stop_sandbox, client.km.checks_peer())
        assert kernel is not None, "the kernel did not answer the checks"
        verdicts = plan.decide(logging.getLogger("benchmark"), kernel=kernel)
        checked, grader_cpu = time.perf_counter(), time.process_time() - grader_cpu
    assert all(v.status != "failed" for v in verdicts.values()), verdicts
    return executed - started, checked - executed, grader_cpu


# make autograde's summary line of one submission: "  <student>  <assignment>  ok  12.3 s  <notes>"
SUBMISSION_LINE = re.compile(r"^  \S+\s+\S+\s+ok\s+(?P<seconds>\d+\.\d) s", re.M)


def autograde_seconds(course, parallelism):
    """(wall seconds of the whole `make autograde`, the sum of the seconds it reports per submission: the
    grading host's time from the submission's files in to its notebooks and grades out, {step: seconds}
    of the batch where it reports them)."""
    started = time.perf_counter()
    result = subprocess.run(["make", "-o", ".venv/.installed", "autograde", "FORCE=1"], cwd=course, check=True,
                            capture_output=True, text=True,
                            env=dict(env(), ATTENTION_SURGEON_GRADING_PARALLELISM=str(parallelism)))
    wall = time.perf_counter() - started
    steps_file = course / ".grading" / "logs" / "batch_steps.json"
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    return wall, sum(float(m["seconds"]) for m in SUBMISSION_LINE.finditer(result.stdout)), steps


def write_submissions(course, students):
    for student in students:  # the main assignment and the bonus (Notebook 4)
        write_submission(course, student, {name: student_notebook(reference_answers(name), name=name)
                                           for name in NOTEBOOKS})
        write_submission(course, student, {NB4: student_notebook(reference_answers(NB4), name=NB4)},
                         assignment=BONUS)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="a git revision to measure side by side with this checkout")
    parser.add_argument("--baseline-venv", help="a venv for the baseline (default: this one, or made for it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        courses = {"this checkout": copy_course(tmp)}
        if args.baseline:
            courses[f"baseline {args.baseline}"] = baseline_course(tmp, args.baseline, args.baseline_venv)
        students = [f"student{i:02d}" for i in range(args.students)]
        for course in courses.values():
            subprocess.run(["make", "-o", ".venv/.installed", "release"], cwd=course, env=env(), check=True,
                           capture_output=True)
            write_submissions(course, students)
        course = courses["this checkout"]
        floors, measured = [], {name: {"grading": [], "hosts": [], "steps": []} for name in courses}
        for _ in range(args.rounds):  # alternated, so all see the same machine state
            floors.append(sum(floor_seconds(sorted((course / "submitted" / s).glob("*/*.ipynb")))
                              for s in students) / len(students))
            for name, where in (reversed(courses.items()) if len(floors) % 2 else courses.items()):
                total, on_hosts, steps = autograde_seconds(where, parallelism=1)
                measured[name]["grading"].append(total / len(students))
                measured[name]["hosts"].append(on_hosts / len(students))
                measured[name]["steps"].append(steps)
        cores = os.cpu_count() or 1
        floor = statistics.median(floors)
        print(f"machine: {cores} cores; {len(students)} students, each a correct submission of both assignments "
              f"(all four notebooks); {args.rounds} rounds, alternated (medians; floors seen: "
              f"{', '.join(f'{f:.2f}' for f in floors)} s)")
        print(f"floor   (notebooks executed once in a plain kernel): {floor:6.2f} s per student")
        for name, seen in measured.items():
            grading, host = statistics.median(seen["grading"]), statistics.median(seen["hosts"])
            batch, _, _ = autograde_seconds(courses[name], parallelism=cores)
            print(f"{name}:")
            print(f"  grading (make autograde, one at a time, all costs counted): {grading:6.2f} s per student "
                  f"(rounds: {', '.join(f'{g:.2f}' for g in seen['grading'])})")
            print(f"  ratio grading / floor: {grading / floor:.2f}  (the goal: at most 1.0, the floor itself)")
            per_round = [g / f for g, f in zip(seen["grading"], floors)]
            print(f"    each round against its own floor (the machine's speed can change between rounds): "
                  f"{', '.join(f'{r:.2f}' for r in per_round)}; median {statistics.median(per_round):.2f}")
            print(f"    of which the submissions themselves (the seconds make autograde reports for each, summed): "
                  f"{host:6.2f} s per student, {host / floor:.2f} of the floor")
            print(f"    and the batch's own costs, once per batch, shared by its {len(students)} students: "
                  f"{grading - host:6.2f} s per student")
            if any(seen["steps"]):
                names = list(dict.fromkeys(step for steps in seen["steps"] for step in steps))
                print("    the batch's steps (median seconds per batch): " + "; ".join(
                    f"{step} {statistics.median(steps.get(step, 0.0) for steps in seen['steps']):.1f}"
                    for step in names))
            print(f"  batch: {len(students)} students in {batch:.1f} s with {cores} at a time "
                  f"= {60 * 2 * len(students) / batch:.1f} submissions per minute")
        print("per notebook, this checkout (reference answers): plain execution | sandboxed kernel: execution + "
              "hidden checks (of which the grader's own CPU)")
        for name in (*NOTEBOOKS, NB4):
            path = course / "submitted" / students[0] / ASSIGNMENT_OF[name] / f"{name}.ipynb"
            execution, checks, grader = sandboxed_seconds(path, name)
            print(f"  {name:28s} {floor_seconds([path]):6.2f} s | {execution:6.2f} s + {checks:6.2f} s "
                  f"({grader:5.2f} s)")


if __name__ == "__main__":
    main()
