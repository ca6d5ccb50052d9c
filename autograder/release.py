"""`make release`: the checks' declared points into the notebooks and README.md (points.py), then
student notebooks and solutions from source/, then the leak check.

    checks' @check(points=...)  --points.sync-------------------> source/ hidden cells, README.md
    source/<assignment>/*.ipynb --nbgrader generate_assignment--> release/<assignment>/
                                --nbgrader generate_solution---> solutions/<assignment>/

The leak check refuses the release if any line of a solution block or any
hidden-check code made it into release/. Last, this host's grading is prepared for this version of
the package (grading_task.prepare_host: template gradebooks, the checks' references).
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

import course_config

from . import points
from .grading_task import host_folder, prepare_host
from .nbgrader_cli import run_nbgrader

HIDDEN_MARKERS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "hidden_check", "import autograder",
                  "from autograder")
MIN_LEAK_LINE = 12  # shorter solution lines ("return scores") may legitimately appear elsewhere


def solution_lines(source_nb):
    """Every non-trivial line inside a ### BEGIN SOLUTION ... ### END SOLUTION block."""
    lines = set()
    for cell in source_nb.cells:
        inside = False
        for line in cell.source.splitlines():
            stripped = line.strip()
            if "BEGIN SOLUTION" in stripped:
                inside = True
            elif "END SOLUTION" in stripped:
                inside = False
            elif inside and len(stripped) >= MIN_LEAK_LINE:
                lines.add(stripped)
    return lines


def find_leaks(source_dir, release_dir):
    """[(release notebook, line)] for every release line that contains a solution line or hidden-check code."""
    leaks = []
    for source_path in sorted(Path(source_dir).glob("*.ipynb")):
        release_path = Path(release_dir) / source_path.name
        if not release_path.exists():
            leaks.append((release_path, "(missing: no release version of this notebook)"))
            continue
        secret = tuple(solution_lines(nbformat.read(source_path, as_version=4)))
        for cell in nbformat.read(release_path, as_version=4).cells:
            for line in cell.source.splitlines():
                stripped = line.strip()
                if any(marker in stripped for marker in HIDDEN_MARKERS + secret):
                    leaks.append((release_path, stripped))
    return leaks


def release(assignment):
    """release/<assignment> and solutions/<assignment> from source/, then the leak check; True when clean."""
    root = course_config.COURSE_ROOT
    run_nbgrader("generate_assignment", assignment, "--force")
    run_nbgrader("generate_solution", assignment, "--force")
    leaks = find_leaks(root / "source" / assignment, root / "release" / assignment)
    if leaks:
        print("RELEASE REFUSED: solution or hidden-check lines in release/:", file=sys.stderr)
        for path, line in leaks:
            print(f"  {path.relative_to(root)}: {line}", file=sys.stderr)
    return not leaks


def main():
    started = time.monotonic()
    for path, change in points.sync():
        print(f"{path.relative_to(course_config.COURSE_ROOT)}: {change}")
    for problem in points.problems():
        print(f"RELEASE REFUSED: {problem}", file=sys.stderr)
        return 1
    for assignment in course_config.ASSIGNMENTS:  # the main assignment, then the bonus (Notebook 4)
        if not release(assignment):
            return 1
    print(f"release/ and solutions/ are up to date for {', '.join(course_config.ASSIGNMENTS)}; no leaks "
          f"({time.monotonic() - started:.1f} s)")
    prepare_grading_here()
    return 0


def prepare_grading_here():
    """What this host's first `make autograde` would make otherwise (grading_task.prepare_host), made now,
    when the course folder is this account's own: the grader's, as on the hub, where the grader account
    owns the course and releases. Another account (an instructor's, say) writes nothing under .grading/,
    which the grader must own. A failure here is said, and the release stands."""
    root = course_config.COURSE_ROOT
    if root.stat().st_uid != os.getuid():
        return
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            prepare_host(Path(scratch), remove_older=False)
    except Exception as err:  # noqa: BLE001 - the first batch makes it instead
        print(f"this host's grading was not prepared ({type(err).__name__}: {err}); the first make autograde "
              f"prepares it", file=sys.stderr)
        return
    print(f"this host's grading is prepared for this version of the course package "
          f"({host_folder().relative_to(root)}/, {time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
