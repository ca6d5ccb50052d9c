"""nbgrader preprocessors that keep the hidden checks out of the student's kernel.

Trusted code. course_config.py puts them into nbgrader's autograde pipeline:

    PlanTrustedChecks    which hidden checks this notebook has, and the student's
                         code they are decided against
    SandboxedExecute     run the notebook in the student's (sandboxed) kernel, with
                         every hidden-check call left out; once every cell has run,
                         decide each hidden check here, asking that same kernel to
                         call the student's functions (a fresh worker instead, when
                         the kernel died, ran out of time or hung on a call)
    TrustedChecks        each verdict becomes its cell's output (an error output =
                         no points)
    SaveAutoGrades       nbgrader's own: scores from outputs into the gradebook
    RecordPendingChecks  checks that could not be decided here (GPU checks on a
                         host without CUDA) become "needs manual grade"

Plain nbgrader would run the hidden tests inside the student's kernel, where
one student cell can rewrite them. Here that kernel never sees them: it only
answers calls with values, which the checks judge in this process.
"""
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import IPython.lib.pretty  # noqa: F401 - see below
import nbformat
import torch

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_output
from nbgrader.api import Gradebook
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from nbgrader.utils import is_grade, is_solution
from traitlets import Bool, Integer, Unicode

import course_config

from .checks import Verdict, run_checks
from .checks.rules import sentence
from .sandbox import sandboxed_kernel_manager_class
from .feedback import FLAGS
from .safe_text import one_line
from .student import KernelConnection, SandboxedStudent
from .time_budget import submission_deadline

# IPython.lib.pretty is imported above, in this process's main thread, before any checks thread
# starts: hypothesis reads it from sys.modules when it prints an example, and while the kernel's run
# imported it in the main thread, a check once found it half-initialised ("partially initialized
# module 'IPython.lib.pretty'") and was left pending.
HIDDEN_CHECK_CALL = re.compile(r"""hidden_check\(\s*["']([\w\-]+)["']\s*\)""")
SKIP_TAG = "grader-skip"  # a read-only cell the worker need not run (a slow demo, say)


def is_test_cell(cell):
    return cell.cell_type == "code" and is_grade(cell) and not is_solution(cell)


def hidden_check_name(cell):
    """The check a hidden-check cell names, or None for any other cell."""
    if not is_test_cell(cell):
        return None
    match = HIDDEN_CHECK_CALL.search(cell.source)
    return match.group(1) if match else None


def _is_student_code(cell):
    return cell.cell_type == "code" and not is_test_cell(cell) and SKIP_TAG not in cell.metadata.get("tags", [])


def student_code(nb):
    """The code a worker loads: every code cell but the test cells, in notebook order."""
    return [cell.source for cell in nb.cells if _is_student_code(cell)]


def student_code_position(nb, cell_index):
    """Where notebook cell `cell_index` is in `student_code(nb)`, or None when it is not there."""
    if cell_index is None or not _is_student_code(nb.cells[cell_index]):
        return None
    return sum(map(_is_student_code, nb.cells[:cell_index]))


def student_written_code(nb):
    """The cells a student could write in: what the static scan reads."""
    return [cell.source for cell in nb.cells
            if cell.cell_type == "code" and not is_test_cell(cell)
            and not cell.metadata.get("nbgrader", {}).get("locked")]


def graded_answers(nb):
    """{grade id: source} of the code cells a student fills in (nbgrader's solution cells)."""
    return {cell.metadata["nbgrader"]["grade_id"]: cell.source for cell in nb.cells
            if cell.cell_type == "code" and is_solution(cell)}


UNANSWERED = ("this notebook has no code of yours (it is the release version, or was not submitted), so it "
              "was not run and none of its checks can pass")


def is_unanswered(nb, resources):
    """Is every code cell a student could write in exactly as released? Then running it changes nothing:
    every stub raises and every check fails. Grading such a notebook (an unsubmitted one, say) skips
    the kernel and the worker."""
    info = resources.setdefault("nbgrader", {})
    if "unanswered" not in info:
        release = (course_config.COURSE_ROOT / "release" / info.get("assignment", course_config.ASSIGNMENT) /
                   f"{info.get('notebook', '')}.ipynb")
        try:
            released = nbformat.read(release, as_version=4)
        except (OSError, ValueError):
            info["unanswered"] = False
        else:
            info["unanswered"] = student_written_code(nb) == student_written_code(released)
    return info["unanswered"]


class SandboxedExecute(Execute):
    """nbgrader's Execute, with the student's kernel in the sandbox.

    * hidden-check calls are not run there: their cells run as a comment, and
      TrustedChecks writes their outputs;
    * what a cell prints is capped (`max_output_chars`, `max_output_lines`), whatever its shape;
    * once the last cell has run, the hidden checks (PlanTrustedChecks) are decided
      here, against this same kernel: one process per notebook runs it and answers the
      checks' calls (sandboxed_worker/kernel.py; while a submission is graded, its
      kernels are forked by the submission's template: sandbox.SubmissionTemplate);
    * a cell that runs past the time limit, or a kernel that dies, stops the
      run with a note on that cell; the notebook is still graded as far as it
      can be: the checks ask a fresh worker, which loads the student's code
      without that cell (a run stopped by the submission's clock decides nothing more).
    """

    max_output_chars = Integer(course_config.OUTPUT_MAX_CHARS,
                               help="Characters of output kept per cell; the rest is dropped.").tag(config=True)
    max_output_lines = Integer(course_config.OUTPUT_MAX_LINES,
                               help="Lines of output kept per cell; the rest is dropped.").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", sandboxed_kernel_manager_class())
        super().__init__(*args, **kwargs)
        self.interrupt_on_timeout = False  # a looping kernel is stopped, not interrupted
        self.timeout_func = self._cell_timeout
        self._output_chars = {}
        self._current_cell = None
        self._plan = self._verdicts = None

    def preprocess(self, nb, resources):
        info = resources.setdefault("nbgrader", {})
        plan = info.get("trusted_checks")  # a ChecksPlan, or verdicts decided without a kernel
        self._plan, self._verdicts = (plan if isinstance(plan, ChecksPlan) else None), None
        if is_unanswered(nb, resources):
            self._current_cell = None
            self._note(nb, UNANSWERED, ename="NotRun")
            return nb, resources
        originals = {}
        for index, cell in enumerate(nb.cells):
            name = hidden_check_name(cell)
            if name:
                originals[index] = cell.source
                cell.source = f"# hidden check {name!r}: decided by the autograder, outside this kernel"
        self._output_chars, self._current_cell = {}, None
        stopped = {}  # how a worker must load the code if the kernel cannot answer (ChecksPlan.decide)
        try:
            nb, resources = super().preprocess(nb, resources)
        except CellTimeoutError:
            message = self._timed_out_message()
            self._note(nb, message)
            clock = submission_deadline()
            if clock is not None and clock.remaining() <= 1:
                stopped = {"broken": clock.reason}
            else:
                stopped = self._skip_current(nb, f"did not finish within {course_config.CELL_TIMEOUT_S} s")
        except DeadKernelError:
            self._note(nb, "the kernel died while running this cell (out of memory, os._exit or a crash); "
                           "the cells after it were not run")
            stopped = self._skip_current(nb, "killed the process running it (the notebook's kernel died)")
        except Exception as err:  # noqa: BLE001 - the rest of the pipeline still grades what it can
            self._note(nb, f"the notebook could not be run: {type(err).__name__}: {str(err)[:300]}")
        finally:
            for index, source in originals.items():
                nb.cells[index].source = source
        if self._plan is not None:
            if self._verdicts is None:  # the kernel could not answer: a worker does
                self._verdicts = self._plan.decide(self.log, **stopped)
            info["trusted_checks"] = self._verdicts
        return nb, resources

    def preprocess_cell(self, cell, resources, index):
        self._current_cell = index
        cell, resources = super().preprocess_cell(cell, resources, index)
        if index == len(self.nb.cells) - 1 and self._plan is not None:
            self._verdicts = self._plan.decide(self.log, kernel=self._kernel_connection())
        return cell, resources

    def _kernel_connection(self):
        """The kernel that has just run every cell, ready to answer the checks; None if it cannot."""
        if not hasattr(self.km, "checks_socket"):
            return None
        return KernelConnection.open(self.km.checks_socket, self.km.stop_sandbox, self.km.checks_peer(), self.log)

    def _skip_current(self, nb, reason):
        """A worker leaves out the cell that stopped the kernel, rather than wait for it again."""
        position = student_code_position(nb, self._current_cell)
        return {} if position is None else {"skipped_cells": {position: reason}}

    def _cell_timeout(self, cell):
        """The cell's limit, or what is left of the submission's clock if that is less (at least 1 s:
        nbclient reads 0 as "no limit")."""
        clock = submission_deadline()
        left = self.timeout if clock is None else min(self.timeout, clock.remaining())
        return max(1, int(left))

    def _timed_out_message(self):
        clock = submission_deadline()
        if clock is not None and clock.remaining() <= 1:
            return f"this cell was stopped because {clock.reason}; the cells after it were not run"
        return (f"this cell ran longer than {self.timeout} s (the time limit per cell), so the "
                f"kernel was stopped; the cells after it were not run")

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        text = str(content)
        lines = str(content.get("text", "")).count("\n") if isinstance(content, dict) and "text" in content else 1
        used, used_lines = self._output_chars.get(cell_index, (0, 0))
        self._output_chars[cell_index] = (used + len(text), used_lines + lines)
        if used + len(text) <= self.max_output_chars and used_lines + lines <= self.max_output_lines:
            return super().output(outs, msg, display_id, cell_index)
        if used <= self.max_output_chars and used_lines <= self.max_output_lines:
            self._output_chars[cell_index] = (self.max_output_chars + 1, self.max_output_lines + 1)  # noted once
            outs.append(new_output("stream", name="stdout", text=(
                f"\n[output truncated: this cell printed more than {self.max_output_chars} characters or "
                f"{self.max_output_lines} lines]\n")))
        return None

    def _note(self, nb, message, ename="NotebookStopped"):
        index = self._current_cell
        if index is None:
            index = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)
        if index is None:
            return
        nb.cells[index].outputs.append(new_output(
            "error", ename=ename, evalue=message, traceback=[f"{ename}: {message}"]))


def cuda_seen_by_the_grader():
    """torch in the grader sees a CUDA device and course_config.GRADE_ON_CUDA allows using it."""
    import torch

    return course_config.GRADE_ON_CUDA != "off" and torch.cuda.is_available()


def grading_on_cuda():
    """Whether GPU checks are decided here: the grader sees CUDA (`cuda_seen_by_the_grader`) and CUDA works
    in a sandbox like the students' (the grader's own probe, `preflight.cuda_problem_in_the_sandbox`, asked
    once per process, logged). Where they are not decided, they stay pending."""
    if not cuda_seen_by_the_grader():
        return False
    from .preflight import cuda_problem_in_the_sandbox

    return cuda_problem_in_the_sandbox() is None


# The grader's own tensors (generated inputs, float64 references, comparisons) are tiny, and it takes
# turns with the student's kernel, which runs torch's threads on the same cores. With the grader on
# torch's default threads too, an op of the grader can wait for the cores. Measured on 2 cores, both
# busy (the kernel and another job): the 734 softmaxes of the float64 references of Notebook 1's
# checks took 4.4 s in all with 2 grader threads (about 6 ms for a [1, 5, 4] tensor) and 0.006 s with
# 1. On an idle machine the two are alike.
GRADER_TORCH_THREADS = 1


@contextmanager
def grader_threads(count=GRADER_TORCH_THREADS):
    """torch's intra-op threads of this process (the grader's, not the student's kernel's) while it
    decides checks; as they were afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ChecksPlan:
    """The hidden checks of one notebook, and the student's code they are decided against."""
    names: list  # the checks, in notebook order
    code: list  # the cells a worker loads, if one is needed (student_code)
    sources: list  # the cells the static scan reads (student_written_code)
    answers: dict  # grade id -> the answer cell (graded_answers)
    cuda_available: bool

    def decide(self, log, kernel=None, skipped_cells=None, broken=None):
        """{check name: Verdict}. Calls go to the notebook's kernel (`kernel`, a KernelConnection) when
        given, else, or once it fails, to a fresh worker that loads `code` without `skipped_cells`;
        `broken` says why nothing can be called (every check then fails or waits with that reason)."""
        with SandboxedStudent(self.code, sources=self.sources, answers=self.answers, kernel=kernel,
                              skipped_cells=skipped_cells, broken=broken) as student, grader_threads():
            verdicts = run_checks(self.names, student, cuda_available=self.cuda_available)
        for name, verdict in verdicts.items():
            log.info("hidden check %s: %s", name, verdict.status)
        return verdicts


class PlanTrustedChecks(NbGraderPreprocessor):
    """Which hidden checks this notebook has, and against what; SandboxedExecute decides them. A notebook
    nobody answered (`is_unanswered`) fails every check here, without a kernel."""

    cuda_available = Bool(None, allow_none=True, help="Override CUDA detection (None: ask torch).").tag(config=True)

    def preprocess(self, nb, resources):
        names = [name for cell in nb.cells if (name := hidden_check_name(cell))]
        if not names:
            return nb, resources
        info = resources.setdefault("nbgrader", {})
        if is_unanswered(nb, resources):
            info["trusted_checks"] = {name: Verdict("failed", UNANSWERED, rule="answered") for name in names}
            return nb, resources
        cuda = grading_on_cuda() if self.cuda_available is None else self.cuda_available
        info["trusted_checks"] = ChecksPlan(names, student_code(nb), student_written_code(nb), graded_answers(nb), cuda)
        return nb, resources


class TrustedChecks(NbGraderPreprocessor):
    """Write each hidden check's verdict as its cell's output; remember the undecided ones."""

    flags_directory = Unicode(str(FLAGS), help="Where <student>.txt lists the checks a TA must decide (a grading "
                                               "host's throw-away course has its own).").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources.setdefault("nbgrader", {})
        pending = info.setdefault("pending_checks", {})
        verdicts = info.pop("trusted_checks", None)  # {name: Verdict}, or a plan nothing decided yet
        if verdicts is None:
            return nb, resources
        if isinstance(verdicts, ChecksPlan):  # a pipeline without SandboxedExecute: a worker decides
            verdicts = verdicts.decide(self.log)
        for cell in nb.cells:
            name = hidden_check_name(cell)
            if name:
                cell.outputs = verdict_outputs(name, verdicts[name])
                if verdicts[name].status == "pending":
                    pending[cell.metadata["nbgrader"]["grade_id"]] = verdicts[name].message
        record_flags(info, {name: v.message for name, v in verdicts.items() if v.flagged}, self.flags_directory)
        return nb, resources


def record_flags(info, flagged, folder=FLAGS):
    """Checks a TA must decide by looking at the code: one line each in .grading/flags/<student>.txt,
    which `make autograde` prints in its summary (the gradebook says "needs manual grade")."""
    if not flagged or "student" not in info:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{info['student']}.txt", "a") as out:
        for name, message in flagged.items():
            out.write(f"{info.get('notebook', '?')}: {name}: {one_line(message, 1000)}\n")  # one line each


def verdict_outputs(name, verdict):
    """The cell outputs nbgrader scores: an error output means no points."""
    if verdict.status == "passed":
        return [new_output("stream", name="stdout", text=f"✓ hidden check {name}: passed\n")]
    if verdict.status == "pending":
        return [new_output("stream", name="stdout", text=f"… hidden check {name}: pending. {verdict.message}\n")]
    lines = verdict.message.splitlines() or ["failed"]
    return [new_output("error", ename="HiddenCheckFailed", evalue=f"{name}: {lines[0]}",
                       traceback=[f"HiddenCheckFailed: {name}", rule_line(verdict.rule)] + lines)]


RULE_LINE = re.compile(r"^The rule: (?P<sentence>.*) \[(?P<rule>[a-z0-9-]+)\]$")


def rule_line(rule):
    """The line of a failed check's output that names the rule broken (the report reads it back with
    RULE_LINE, from hidden-check cells only, whose outputs only this module writes)."""
    rule = rule or "contract"
    return f"The rule: {sentence(rule)} [{rule}]"


class RecordPendingChecks(NbGraderPreprocessor):
    """Mark undecided checks in the gradebook as needing a grade: neither passed nor failed."""

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        pending = info.get("pending_checks", {})
        if not pending:
            return nb, resources
        with Gradebook(info["db_url"]) as gradebook:
            for grade_id in pending:
                grade = gradebook.find_grade(grade_id, info["notebook"], info["assignment"], info["student"])
                grade.auto_score = None
                grade.needs_manual_grade = True
            gradebook.db.commit()
        return nb, resources
