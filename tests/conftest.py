"""Shared fixtures: a private copy of the course per test, driven through `make` like a user would."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COURSE_FILES = ["course_config.py", "nbgrader_config.py", "Makefile", "requirements.lock", "requirements.txt",
                "autograder", "source", "release", "solutions", "tests"]


def _copy(src, dst):
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis", ".ipynb_checkpoints"))
    else:
        shutil.copy2(src, dst)  # keep mtimes: make must not think the venv is stale


def copy_course(parent):
    """A copy of the course in `parent`/course: its own gradebook, submitted/, feedback/.

    It shares the repository's .venv (a symlink), so nothing is reinstalled.
    """
    root = Path(parent) / "course"
    root.mkdir()
    for name in COURSE_FILES:
        _copy(ROOT / name, root / name)
    (root / ".venv").symlink_to(ROOT / ".venv")
    return root


@pytest.fixture
def course(tmp_path):
    return copy_course(tmp_path)


def user_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))}
    env.pop("ATTENTION_SURGEON_SANDBOX", None)  # grade as the hub does: sandbox required
    return env


def make(course_root, *targets, timeout=900, check=True, env=None):
    """Run `make <targets>` in a course folder, as a user would (`env` adds variables)."""
    result = subprocess.run(["make", "-o", ".venv/.installed", *targets], cwd=course_root,
                            env={**user_env(), **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"make {' '.join(targets)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def grade_rows(course_root, assignment="attention_surgeon"):
    """grades.csv -> {student: row} for one assignment (the main one unless told; the bonus has rows of its own)."""
    with open(Path(course_root) / "grades.csv", newline="") as f:
        return {row["student_id"]: row for row in csv.DictReader(f) if row["assignment"] == assignment}


def read_grades(course_root, assignment="attention_surgeon"):
    """grades.csv -> {student: raw score} for one assignment."""
    return {student: float(row["raw_score"]) for student, row in grade_rows(course_root, assignment).items()}


def tree_digest(folder):
    """{relative path: (size, mtime_ns, sha256)} of every file below `folder`."""
    import hashlib

    digest = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns,
                                                     hashlib.sha256(path.read_bytes()).hexdigest())
    return digest


def pytest_terminal_summary(terminalreporter):
    """Print the mutation suite's kill rate (works with xdist: reports reach the controller)."""
    killed = total = 0
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if "test_mutant_loses_points" in report.nodeid and report.when == "call":
                total += 1
                killed += outcome == "passed"
    if total:
        terminalreporter.write_line(f"mutation kill rate: {killed}/{total} plausible bugs lose points "
                                    f"({100 * killed / total:.0f}%)")


class SandboxRecorder:
    """A stand-in for bwrap that writes down each sandbox started (its pid, its command line), then becomes
    the real bwrap: what the grader starts, observed from outside the grader. Use `env` with `make`."""

    def __init__(self, folder):
        self.log = Path(folder) / "sandboxes.log"
        self.launcher = Path(folder) / "bwrap"
        real = shutil.which("bwrap") or "/usr/bin/bwrap"
        self.launcher.write_text(f'#!/bin/sh\nprintf "%s %s\\n" "$$" "$*" >> "{self.log}"\nexec "{real}" "$@"\n')
        self.launcher.chmod(0o755)
        self.env = {"ATTENTION_SURGEON_BWRAP": str(self.launcher)}

    def started(self):
        """[(pid, kind, the submission's or the kernel's folder, or None)]; kind: template (a submission's
        kernel template), kernel (a kernel in a sandbox of its own), or the worker's purpose."""
        found = []
        for line in self.log.read_text().splitlines() if self.log.exists() else []:
            pid, *argv = line.split(" ")
            kind = next((a.split("/")[-1] for a in argv if a.endswith(("/kernel.py", "/worker.py"))), "?")
            if kind == "worker.py":
                kind = argv[argv.index(next(a for a in argv if a.endswith("/worker.py"))) + 1]
            elif kind == "kernel.py" and "--template" in argv:
                kind = "template"
            folder = argv[argv.index("/assignment") - 1] if "/assignment" in argv else None
            found.append((int(pid), kind.removesuffix(".py"), folder))
        return found
