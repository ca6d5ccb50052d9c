"""The hidden checks: a registry of named checks and the verdicts they reach.

Trusted code. A source notebook's hidden-check cell names one check here:

    from autograder import hidden_check; hidden_check("attention_matches_reference")

A check declares, beside its code, its points, the student's names it grades and
the public tests that show its rule first (`@check(..., points=, grades=,
shown_by=)`); `make release` writes the points into the hidden cell and the
README (autograder/points.py). The check itself lives only in this package,
never in a notebook. A check gets a `StudentCode`
(autograder/student.py) and raises `CheckFailed` with a message in the
student's terms; `run_check` turns that into a `Verdict`.
"""
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

from hypothesis.errors import Flaky, HypothesisException

from ..student import StudentUnresponsive
from ..time_budget import check_deadline
from .rules import RULES


class CheckFailed(AssertionError):
    """The student's code did something the contract forbids: `rule` is the id of the rule it broke
    (rules.RULES; the instructor's report counts failures by it), the message is for the student."""

    def __init__(self, rule, message):
        if rule not in RULES:
            raise ValueError(f"a check failed with the rule {rule!r}, which rules.RULES does not have")
        super().__init__(message)
        self.rule = rule


class NeedsTA(Exception):
    """The grader cannot decide this check on its own (code that could have switched off a defence):
    it stays pending, "needs manual grade" in the gradebook, and the batch's summary names it."""


@dataclass(frozen=True)
class Check:
    name: str
    notebook: str
    run: Callable
    points: float  # what its hidden cell is worth (written there by make release)
    grades: tuple  # the student's functions or values it calls (defined in cells the student fills in)
    shown_by: tuple  # the public tests (0-point cells before it) that show its rule first
    gpu: bool = False
    family: str | None = None  # checks of one function; a forbidden shortcut voids the whole family


@dataclass(frozen=True)
class Verdict:
    status: str  # "passed", "failed" or "pending"
    message: str = ""
    flagged: bool = False  # pending because a TA must look at the code (see NeedsTA)
    rule: str = ""  # a failed verdict: the id of the rule that was broken (rules.RULES)


REGISTRY: dict[str, Check] = {}


def _names(value):
    return (value,) if isinstance(value, str) else tuple(value)


def check(name, notebook, *, points, grades, shown_by, gpu=False, family=None):
    """Register a check function under `name` (the name a hidden-check cell uses), worth `points`,
    grading the student's `grades` (a name or a tuple), whose rule the public tests `shown_by` show."""
    def register(function):
        if name in REGISTRY:
            raise ValueError(f"two checks are named {name!r}")
        if not float(points) > 0:
            raise ValueError(f"check {name!r} is worth {points!r} points; a check is worth more than 0")
        REGISTRY[name] = Check(name, notebook, function, float(points), _names(grades), _names(shown_by),
                               gpu, family)
        return function
    return register


def void_family(student, family, rule, message):
    """Fail every check of `family` for this student (e.g. attention that calls PyTorch's own)."""
    if not hasattr(student, "voided"):
        student.voided = {}
    student.voided.setdefault(family, (rule, message))
    raise CheckFailed(rule, message)


def run_checks(names, student, cuda_available=None):
    """{name: Verdict} for `names`; a family voided by any check fails as a whole, and a family flagged
    for a TA by any check has its passed checks pending, whatever the order."""
    verdicts = {name: run_check(name, student, cuda_available) for name in names}
    voided = getattr(student, "voided", {})
    flagged = {REGISTRY[name].family: v.message for name, v in verdicts.items()
               if v.flagged and name in REGISTRY and REGISTRY[name].family}
    for name in names:
        family = REGISTRY[name].family if name in REGISTRY else None
        if family in voided and verdicts[name].status == "passed":
            rule, message = voided[family]
            verdicts[name] = Verdict("failed", message, rule=rule)
        elif family in flagged and verdicts[name].status == "passed":
            # what passed may have passed because a defence was switched off: a TA decides
            verdicts[name] = Verdict("pending", flagged[family], flagged=True)
    return verdicts


def run_check(name, student, cuda_available=None):
    """Run one check against one student's code and return its verdict. Never raises."""
    if name not in REGISTRY:
        return Verdict("pending", f"the grader has no check named {name!r}; a TA will grade this by hand")
    registered = REGISTRY[name]
    if registered.gpu:
        if cuda_available is None:  # as the grader decides it (the pipeline passes its answer)
            from ..pipeline import grading_on_cuda

            cuda_available = grading_on_cuda()
        if not cuda_available:
            return Verdict("pending", "this GPU check needs a CUDA device that the grader's sandbox can use, and "
                                      "this grader has none; it stays pending (neither passed nor failed) until a "
                                      "grader with CUDA runs it")
    student.check_deadline = check_deadline()  # all this check's calls together
    try:
        registered.run(student)
    except CheckFailed as failure:
        return Verdict("failed", str(failure), rule=failure.rule)
    except NeedsTA as flagged:
        return Verdict("pending", str(flagged), flagged=True)
    except StudentUnresponsive as gone:
        return Verdict("failed", f"Your code could not be checked: {gone}", rule="answers-in-time")
    except Flaky as flaky:
        return Verdict("failed", "your code gave different results for the same input "
                                 f"(it must be deterministic): {_first_line(flaky)}", rule="deterministic")
    except HypothesisException as err:
        return Verdict("pending", f"the grader could not finish this check ({_first_line(err)}); "
                                  "a TA will look at it")
    except Exception as err:  # noqa: BLE001 - a bug in a check must not cost the student points
        # The traceback shows check code: it goes to the grader's log, never to feedback.
        print(f"internal error in check {name}:\n{traceback.format_exc()}", file=sys.stderr)
        return Verdict("pending", f"the grader hit an internal error in this check "
                                  f"({type(err).__name__}); a TA will look at it")
    finally:
        student.check_deadline = None
    return Verdict("passed")


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# Importing the check modules registers their checks.
from . import attention, attention_on_cuda, beyond_one_head, breaking_attention, seeing_attention  # noqa: E402,F401


def prepare(folder=None):
    """Compute now what the checks compute once per process from the grader's own inputs alone (a
    module's `prepare(folder)`: reference statistics, corpora). A grading process calls this before its
    first submission comes, while the batch is still preparing, so that no submission's time pays for it.
    `folder`: where this host keeps what this version of the package computed once (read, else written)."""
    for module in (attention, attention_on_cuda, beyond_one_head, breaking_attention, seeing_attention):
        if hasattr(module, "prepare"):
            module.prepare(folder)
