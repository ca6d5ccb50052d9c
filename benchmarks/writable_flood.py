"""How much of the host's RAM one student can take through the sandbox's writable places, this tree
next to a baseline tree, in one process.

A student cell writes files of 60 MB into /tmp and into its working folder until the sandbox
refuses (at most 40 each). /tmp in a sandbox is a tmpfs: its pages are the host's shared memory
(/proc/meminfo Shmem), which neither the memory cap nor the file-size cap counts. For each tree
this runs `make autograde` on that one submission, samples Shmem every 0.1 s and prints the peak
growth, how many files each place took and the batch's seconds.

Run:  .venv/bin/python benchmarks/writable_flood.py [--baseline PATH] [--writable-mb 128]
PATH is another checkout of this repository (e.g. `git worktree add /tmp/base <commit>`); its
.venv may be a symlink to this one's. Everything runs in temporary copies of the courses.
"""
import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLOOD = """import os
for folder in ("/tmp", "."):
    written = 0
    for i in range(40):
        try:
            with open(os.path.join(folder, f"flood{i}"), "wb") as f:
                f.write(b"x" * (60 << 20))
            written += 1
        except OSError:
            break
    print("FLOOD", folder, written)
"""


def shmem_mb():
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("Shmem:")) / 1024


def peak_growth_while(action):
    """The largest growth of Shmem (MB) while `action()` runs, sampled every 0.1 s."""
    base, peak, done = shmem_mb(), [0.0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], shmem_mb() - base)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return peak[0]


def measure(tree, writable_mb):
    """(peak Shmem growth in MB, the flood's own report, seconds) for `make autograde` in `tree`."""
    sys.path.insert(0, str(tree))
    for name in [m for m in sys.modules if m == "tests" or m.startswith("tests.")]:
        del sys.modules[name]
    from tests.conftest import copy_course, make
    from tests.students import NB1, reference_answers, student_notebook, write_submission

    sys.path.remove(str(tree))
    with tempfile.TemporaryDirectory() as parent:
        course = copy_course(parent)
        make(course, "release")
        masks = {k: v for k, v in reference_answers().items() if k in ("create_causal_mask", "create_reverse_mask")}
        write_submission(course, "flood", {NB1: student_notebook(masks, extra_cells=[("setup", FLOOD)])})
        started = time.monotonic()
        growth = peak_growth_while(lambda: make(course, "autograde", timeout=1800,
                                                env={"ATTENTION_SURGEON_SANDBOX_WRITABLE_MB": str(writable_mb)}))
        seconds = time.monotonic() - started
        graded = (course / "autograded" / "flood" / "attention_surgeon" / f"{NB1}.ipynb").read_text()
        said = [line for out in json.loads(graded)["cells"] for o in out.get("outputs", [])
                for line in "".join(o.get("text", "")).splitlines() if line.startswith("FLOOD")]
    return growth, said, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--writable-mb", type=int, default=128, help="SANDBOX_WRITABLE_MB for both runs")
    args = parser.parse_args()
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for label, tree in trees:
        growth, said, seconds = measure(tree, args.writable_mb)
        print(f"{label:10s} peak shared-memory growth {growth:7.0f} MB   {' / '.join(said)}   batch {seconds:.0f} s")


if __name__ == "__main__":
    main()
