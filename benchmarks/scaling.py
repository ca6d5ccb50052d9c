"""How the batch scales with Dask workers, measured side by side in one process.

    1 worker   = `make autograde FORCE=1` over N submissions with an embedded LocalCluster of one
                 worker process (ATTENTION_SURGEON_GRADING_PARALLELISM=1)
    2 workers  = the same N submissions, the same command, two worker processes
    Rounds alternate (1, 2, 1, 2, ...) so both see the same machine; the median of each is reported,
    as submissions per minute, with the speed-up of 2 workers over 1 and the seconds the batch's one
    writer spent applying results to the gradebook (its summary line says).

The estimate at the end is arithmetic on these measurements, not a measurement: the grading hosts of
16 cores that would grade 10,000 submissions in one hour at the core-seconds per submission measured
here; and the time the one writer needs for 10,000 applies, one at a time.

Run:  .venv/bin/python benchmarks/scaling.py [--students 6] [--rounds 1]
It works in a temporary copy of the course; nothing here is touched.
"""
import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.grading_time import copy_course, env  # noqa: E402
from tests.students import NOTEBOOKS, reference_answers, student_notebook, write_submission  # noqa: E402

TARGET_SUBMISSIONS, TARGET_SECONDS, HOST_CORES = 10_000, 3600, 16


def batch_seconds(course, workers):
    """(wall seconds of `make autograde FORCE=1`, seconds its one writer spent applying results)."""
    started = time.perf_counter()
    result = subprocess.run(["make", "-o", ".venv/.installed", "autograde", "FORCE=1"], cwd=course, check=True,
                            capture_output=True, text=True,
                            env=dict(env(), ATTENTION_SURGEON_GRADING_PARALLELISM=str(workers)))
    wall = time.perf_counter() - started
    applied = re.search(r"writing them into the gradebook took ([\d.]+) s", result.stdout)
    return wall, float(applied.group(1)) if applied else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        course = copy_course(tmp)
        subprocess.run(["make", "-o", ".venv/.installed", "release"], cwd=course, env=env(), check=True,
                       capture_output=True)
        for i in range(args.students):  # correct submissions of the main assignment, as a class hands in
            write_submission(course, f"student{i:02d}", {name: student_notebook(reference_answers(name), name=name)
                                                         for name in NOTEBOOKS})
        n = args.students
        runs = {1: [], 2: []}
        for _ in range(args.rounds):
            for workers in (1, 2):
                runs[workers].append(batch_seconds(course, workers))
        one = statistics.median(w for w, _ in runs[1])
        two = statistics.median(w for w, _ in runs[2])
        apply_each = statistics.median(a for w, a in runs[1] + runs[2]) / n
        print(f"{n} submissions (the main assignment, all three notebooks correct); {args.rounds} round(s), median")
        print(f"1 worker : {one:7.1f} s = {60 * n / one:5.2f} submissions per minute")
        print(f"2 workers: {two:7.1f} s = {60 * n / two:5.2f} submissions per minute")
        print(f"speed-up of 2 workers over 1: {one / two:.2f} (2.00 would be perfect)")
        print(f"the one writer: {apply_each:.2f} s per submission applied to the gradebook")
        # One submission keeps more than one core busy (its kernel and the worker that answers the
        # hidden checks run side by side), so the cost is counted in core-seconds of this whole machine
        # at its fastest run: every core of it busy for that long per submission.
        here = os.cpu_count() or 1
        core_seconds = min(one, two) / n * here
        cores = TARGET_SUBMISSIONS * core_seconds / TARGET_SECONDS
        print(f"cost: {core_seconds:.1f} core-seconds per submission ({here} cores busy for {min(one, two) / n:.1f} s, "
              f"start-up of each batch included)")
        print(f"estimate (arithmetic, not measured): {TARGET_SUBMISSIONS} submissions in {TARGET_SECONDS // 60} min "
              f"need {cores:.0f} cores = {math.ceil(cores / HOST_CORES)} hosts of {HOST_CORES} cores, if a host's "
              f"cores grade as these do; the one writer needs {TARGET_SUBMISSIONS * apply_each / 60:.0f} min for "
              f"{TARGET_SUBMISSIONS} applies at the pace measured here (it applies while the hosts grade)")


if __name__ == "__main__":
    main()
