"""`make feedback`: nbgrader's feedback pages, and beside each the student's grading notes.

nbgrader's generate_feedback --force rewrites feedback/<student>/<assignment>/ from scratch, so
the notes that say why a student got 0 (a notebook that could not be read, a batch that ran out
of time, files left out) would vanish at the next `make feedback`. `make autograde` keeps the
notes in .grading/report.json; every feedback run writes them back.

`make autograde` makes each submission's pages as soon as its grades are in the gradebook, while
the batch goes on (`FeedbackPages`: one process of its own, `python -m autograder.feedback
--follow`, which imports nbgrader once and makes one submission's pages at a time); `make
feedback` makes everyone's again, after a TA's manual grading.
"""
import collections
import copy
import json
import logging
import os
import select
import subprocess
import sys
import time
from html import escape

from nbgrader.preprocessors import GetGrades

import course_config

from .nbgrader_cli import nbgrader_env, run_nbgrader, validate_metadata_against_a_checked_schema
from .safe_text import one_line

log = logging.getLogger("attention_surgeon.feedback")
REPORTS = course_config.COURSE_ROOT / ".grading" / "report.json"
FLAGS = course_config.COURSE_ROOT / ".grading" / "flags"  # <student>.txt: checks a TA must decide (pipeline.py)
NOTES_NAME = "grading_notes.html"


def drop_flags(student, prefixes):
    """Remove the lines of .grading/flags/<student>.txt ("<notebook>: <check>: why") that start with one
    of `prefixes`; the file goes when no line is left."""
    path = FLAGS / f"{student}.txt"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if not line.startswith(tuple(prefixes))]
    if kept:
        path.write_text("\n".join(kept) + "\n")
    else:
        path.unlink()


def pending_reason(cell):
    """Why a grade is not decided yet, in the student's words."""
    if cell.cell_type == "markdown" or cell.metadata.nbgrader.get("solution"):
        return "a TA grades it"
    said = " ".join(str(output.get("text", "")) for output in cell.get("outputs", []))
    return "it runs on a grader with CUDA" if "CUDA device" in said else "a TA decides it"


class GetGradesAndPending(GetGrades):
    """nbgrader's GetGrades, and for each grade nobody has decided yet (a written answer before a TA
    grades it, a GPU check on a host without CUDA) `pending` in the cell's nbgrader metadata and its
    points in resources["nbgrader"]["pending_points"]: the feedback page says "pending", not "0 / 4"."""

    def preprocess(self, nb, resources):
        resources.setdefault("nbgrader", {})["pending_points"] = 0.0
        return super().preprocess(nb, resources)

    def _get_score(self, cell, resources):
        super()._get_score(cell, resources)
        grade = self.gradebook.find_grade(cell.metadata["nbgrader"]["grade_id"], self.notebook_id,
                                          self.assignment_id, self.student_id)
        if grade.needs_manual_grade and grade.manual_score is None and grade.auto_score is None:
            cell.metadata.nbgrader["pending"] = pending_reason(cell)
            resources["nbgrader"]["pending_points"] += grade.max_score or 0.0


def save_reports(reports):
    """[{student, problems, ...}] of the last `make autograde`, for every later feedback run."""
    REPORTS.parent.mkdir(parents=True, exist_ok=True)
    partial = REPORTS.with_suffix(".partial")
    partial.write_text(json.dumps(reports, indent=1))
    os.replace(partial, REPORTS)  # whole or not at all: a batch killed while writing leaves the old file


def load_reports():
    try:
        return json.loads(REPORTS.read_text())
    except (OSError, ValueError):
        return []


def write_problem_notes(reports):
    """A short page beside each student's feedback that says what went wrong, if anything did.
    The text is the grader's, but it names the student's files: it is escaped."""
    for report in reports:
        assignment = report.get("assignment", course_config.ASSIGNMENT)
        note = course_config.COURSE_ROOT / "feedback" / report["student"] / assignment / NOTES_NAME
        if report["problems"]:
            note.parent.mkdir(parents=True, exist_ok=True)
            items = "".join(f"<li>{escape(p)}</li>" for p in report["problems"])
            note.write_text(f"<html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'\">"
                            f"</head><body><h2>Grading notes for {escape(report['student'])}</h2>"
                            f"<ul>{items}</ul></body></html>\n")
        elif note.exists():
            note.unlink()


def generate_feedback(assignments=None, quiet=True):
    """nbgrader's feedback for everyone graded in `assignments` (default: those the last `make autograde`
    graded, else the main one), then the notes; the worst exit status of nbgrader."""
    output = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if quiet else {}
    reports = load_reports()
    if assignments is None:
        graded = {r.get("assignment", course_config.ASSIGNMENT) for r in reports}
        assignments = [a for a in course_config.ASSIGNMENTS if a in graded] or [course_config.ASSIGNMENT]
    status = 0
    for assignment in assignments:
        result = run_nbgrader("generate_feedback", assignment, "--force", check=False, **output)
        status = status or result.returncode
    write_problem_notes(reports)
    return status


class FeedbackPages:
    """The batch's feedback process: `add(assignment, student)` once that submission's grades are in the
    gradebook; `finish()` waits for every page and returns the submissions whose pages could not be made.

    The process starts when the first submission is added, not with the batch, whose start has the
    cluster and the first grading process to start first. It makes one submission's pages at a time, in
    the order they were added. At most WINDOW requests are in its pipe (the rest wait here), so neither
    pipe ever fills and blocks the batch.
    A submission that takes more than FEEDBACK_TIMEOUT_S (a notebook built to make nbconvert hang, say)
    is given up: the process is killed and a fresh one goes on with the rest."""

    WINDOW = 64
    MAX_RESTARTS = 3  # in a row, with no page made in between

    def __init__(self, log_path, command=None):
        self.log_path = log_path
        self.command = command or [sys.executable, "-m", "autograder.feedback", "--follow"]
        self.waiting, self.sent, self.failed = collections.deque(), collections.deque(), []
        self.process, self.buffer, self.since, self.restarts = None, b"", time.monotonic(), 0

    def _start(self):
        """Start the process; if it cannot start (no process or file left to this account, say), the pages
        waiting now fail, named in the batch's summary, and the batch goes on."""
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log_file:
                self.process = subprocess.Popen(self.command, cwd=course_config.COURSE_ROOT, env=nbgrader_env(),
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file)
        except OSError as err:
            log.error("the feedback process did not start: %s", one_line(f"{type(err).__name__}: {err}", 2000))
            self.process = None
            self.failed += list(self.sent) + list(self.waiting)
            self.sent.clear()
            self.waiting.clear()
        self.buffer, self.since = b"", time.monotonic()

    def _stop(self):
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:  # a request it never read
                pass

    def add(self, assignment, student):
        self.waiting.append((assignment, student))
        self._pump(0)

    def finish(self):
        """Wait for every page; [(assignment, student)] of those that could not be made."""
        while self.waiting or self.sent:
            self._pump(1.0)
        self.close()
        return self.failed

    def close(self):
        """End the process: at once, when pages are still waiting (the batch stopped early)."""
        if self.process is None:
            return
        if self.process.poll() is None and not (self.waiting or self.sent):
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._stop()  # killed if it still runs; its pipes closed

    def _pump(self, wait):
        """Read the replies that came (waiting up to `wait` s for one), send more, and give up on the
        submission at the head when it is past FEEDBACK_TIMEOUT_S or the process died."""
        if self.waiting and self.process is None:
            self._start()
        while self.waiting and len(self.sent) < self.WINDOW:
            item = self.waiting.popleft()
            if not self.sent:
                self.since = time.monotonic()
            self.sent.append(item)
            try:
                self.process.stdin.write((json.dumps(item) + "\n").encode())
                self.process.stdin.flush()
            except OSError:  # it died: found below
                break
        ended = False
        if self.sent and select.select([self.process.stdout], [], [], wait)[0]:
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
            ended = not chunk
            self.buffer += chunk
            while b"\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition(b"\n")
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if self.sent and reply.get("done") == list(self.sent[0]):
                    item = self.sent.popleft()
                    if not reply.get("ok"):
                        self.failed.append(item)
                    self.since, self.restarts = time.monotonic(), 0
        late = self.sent and time.monotonic() - self.since > course_config.FEEDBACK_TIMEOUT_S
        if self.sent and (ended or late or self.process.poll() is not None):
            item = self.sent.popleft()
            log.error("feedback for %s: %s", one_line("/".join(item)),
                      f"more than {course_config.FEEDBACK_TIMEOUT_S} s" if late else "the feedback process died")
            self.failed.append(item)
            self._stop()
            self.waiting.extendleft(reversed(self.sent))  # sent again, to a fresh process
            self.sent.clear()
            self.restarts += 1
            if self.restarts > self.MAX_RESTARTS:  # it cannot start here: no page gets made
                log.error("the feedback process stopped %d times in a row; no more feedback pages in this batch",
                          self.restarts)
                self.failed += self.waiting
                self.waiting.clear()
            self.process = None  # a fresh one starts for the next page, if any


def follow():
    """The feedback process: for each line {[assignment, student]} of stdin, that submission's pages
    (nbgrader's generate_feedback for that one student); a line {"done": [...], "ok": ...} for each,
    on a private copy of stdout (nbgrader's own output goes to stderr, the batch's feedback log)."""
    from nbgrader.apps import NbGraderAPI

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    validate_metadata_against_a_checked_schema()
    api = NbGraderAPI(config=copy.deepcopy(course_config.c))
    for line in sys.stdin:
        assignment, student = json.loads(line)
        result = api.generate_feedback(assignment, student, force=True)
        if not result["success"]:
            log.error("feedback for %s/%s failed:\n%s", one_line(assignment), one_line(student),
                      one_line(result.get("error") or result.get("log") or "", 20_000))
        print(json.dumps({"done": [assignment, student], "ok": bool(result["success"])}), file=channel)


if __name__ == "__main__":
    if sys.argv[1:] == ["--follow"]:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        follow()
    else:
        from .course_lock import run_alone

        sys.exit(run_alone(lambda: generate_feedback(quiet=False)))
