"""The hidden checks: every check passes on the reference solution, in the sandboxed worker and
in-process; a broken worker fails checks, never passes them. (That the registry and the notebooks
agree, points and public tests included, is tests/test_points.py.)"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autograder.checks import run_check
from autograder.checks.expectations import shape_mentioned
from autograder.student import InProcessStudent, SandboxedStudent
from tests.grading import decidable_points, gpu_checks, grade_checks
from tests.students import NB1, NB4, ROOT, reference_answers, source_notebook, student_notebook



def test_every_check_passes_on_the_reference_solution_in_the_sandbox():
    verdicts = grade_checks(student_notebook(reference_answers()))
    assert {n: v.message for n, v in verdicts.items() if v.status != "passed" and n in decidable_points()} == {}
    for name in gpu_checks(NB1) - set(decidable_points()):
        assert verdicts[name].status == "pending" and "CUDA" in verdicts[name].message


def test_every_check_passes_on_the_reference_solution_in_process():
    namespace = {}
    exec("import math, torch\nNEG_INF = float('-inf')\n" + "\n\n".join(reference_answers().values()), namespace)
    student = InProcessStudent(namespace, sources=list(reference_answers().values()))
    for name in decidable_points():
        verdict = run_check(name, student)
        assert verdict.status == "passed", f"{name}: {verdict.message}"


SETUP = "import math, torch\nNEG_INF = float('-inf')"


def test_a_cell_that_kills_the_worker_is_skipped_and_the_rest_is_graded():
    cells = [SETUP, "import os\nos._exit(3)", *reference_answers().values()]
    with SandboxedStudent(cells) as student:
        verdicts = {name: run_check(name, student) for name in ("attention_gradients", "causal_mask")}
        assert all(v.status == "passed" for v in verdicts.values()), verdicts
        assert "exit status 3" in student.skipped_cells[1]


def test_a_cell_that_hangs_is_skipped_within_the_cell_limit(monkeypatch):
    import course_config

    monkeypatch.setattr(course_config, "CELL_TIMEOUT_S", 5)
    cells = [SETUP, "while True:\n    pass", *reference_answers().values()]
    with SandboxedStudent(cells) as student:
        assert run_check("causal_mask", student).status == "passed"
        assert "did not finish within 5 s" in student.skipped_cells[1]


def test_code_that_never_defines_the_functions_fails_every_check():
    with SandboxedStudent(["import os\nos._exit(3)"]) as student:
        verdicts = {name: run_check(name, student) for name in decidable_points()}
    assert all(v.status == "failed" for v in verdicts.values())
    assert "not defined in your notebook" in verdicts["attention_gradients"].message


def test_a_hanging_call_is_stopped_and_reported(monkeypatch):
    import course_config

    monkeypatch.setattr(course_config, "CALL_TIMEOUT_S", 4)
    code = reference_answers()
    code["attention"] = "def attention(Q, K, V, mask=None, scale=True):\n    while True:\n        pass"
    with SandboxedStudent([SETUP, *code.values()]) as student:
        verdict = run_check("attention_matches_reference", student)
        assert verdict.status == "failed" and "took more than 4 s on one call" in verdict.message
        assert run_check("causal_mask", student).status == "passed", "the next check gets a fresh worker"


def slow_but_correct(seconds):
    """The stalling attack: attention answers correctly, just under the time limit, every time."""
    code = reference_answers()
    code["attention"] = (code["attention"].replace("def attention(", "def _attention(") +
                         f"\n\nimport time\ndef attention(*args, **kwargs):\n    time.sleep({seconds})\n"
                         f"    return _attention(*args, **kwargs)\n")
    return [SETUP, *code.values()]


def test_a_slow_function_is_stopped_by_the_checks_budget(monkeypatch):
    """Before: 10 s a call, 25 examples, ten checks: one student held the batch for 2715 s."""
    import time

    import course_config

    monkeypatch.setattr(course_config, "CALL_TIMEOUT_S", 4)
    monkeypatch.setattr(course_config, "CHECK_TIME_BUDGET_S", 5)
    with SandboxedStudent(slow_but_correct(1.5)) as student:
        student.call("create_causal_mask", 2)  # the worker is up
        started = time.monotonic()
        verdict = run_check("attention_matches_reference", student)
        elapsed = time.monotonic() - started
    assert verdict.status == "failed" and "took more than 5 s in all during this check" in verdict.message
    assert elapsed < 5 + 4, "the budget ends the check, not the per-call limit of every example"


def test_the_submission_clock_stops_the_checks_still_to_run(monkeypatch):
    import time

    from autograder import time_budget

    monkeypatch.setattr(time_budget, "_submission", None)
    with SandboxedStudent(slow_but_correct(0)) as student:
        time_budget.start_submission(600)
        assert run_check("causal_mask", student).status == "passed", "what is checked in time counts"
        time_budget.start_submission(1)  # the same student's clock, now about to run out
        time.sleep(1.1)
        started = time.monotonic()
        verdict = run_check("reverse_mask", student)
        assert time.monotonic() - started < 1, "a check after the clock ran out calls nothing"
    assert verdict.status == "failed" and "grading your submission took more than 1 s in all" in verdict.message


def test_unknown_check_is_pending_not_passed():
    assert run_check("no_such_check", None).status == "pending"


def test_the_corpus_is_seeded_and_the_checks_read_the_released_generator():
    """Notebook 3's corpus: the same text for the same seed, another for another seed, no downloads."""
    import importlib.util

    from autograder.checks.breaking_attention import check_corpus

    spec = importlib.util.spec_from_file_location("released_corpus", ROOT / "release" / "attention_surgeon" /
                                                  "make_corpus.py")
    released = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(released)
    text = released.make_corpus(seed=0)
    assert text == released.make_corpus(seed=0) != released.make_corpus(seed=1)
    assert 10_000 < len(text) < 20_000 and text.count("\n") == released.NUM_SENTENCES
    assert check_corpus() == released.make_corpus(seed=1, num_sentences=120)


def test_an_answer_too_large_to_read_fails_in_the_students_terms():
    """Before: a 4.2M-element bool tensor made every check it touched 'pending' (ProtocolError), TA work.
    Now it is a wrong answer, with a message that names its size."""
    code = reference_answers()
    code["attention"] = ("def attention(Q, K, V, mask=None, scale=True):\n"
                         "    big = torch.zeros(4097, 1024, dtype=torch.bool)  # just over the 4,194,304 elements the grader reads\n"
                         "    return big, big\n")
    with SandboxedStudent([SETUP, *code.values()]) as student:
        verdicts = {name: run_check(name, student) for name in decidable_points()}
    assert not [name for name, v in verdicts.items() if v.status == "pending"]
    message = verdicts["attention_matches_reference"].message
    assert verdicts["attention_matches_reference"].status == "failed"
    assert "a bool tensor of 4,195,328 elements (shape [4097, 1024])" in message and "expected [" in message


def test_a_fully_masked_row_failure_says_the_rule_in_words():
    import numpy as np
    import torch

    from autograder.checks import CheckFailed
    from autograder.checks.expectations import expect_exactly_zero
    from autograder.sandboxed_worker.protocol import Returned

    output = np.zeros((1, 3, 2))
    output[0, 1, 0] = 0.25
    rows = torch.tensor([[False, True, False]])  # [B, L]: query 1 of batch 0 sees no key
    with pytest.raises(CheckFailed, match=r"row \[0, 1\] of the query rows is one of the fully masked rows \(the mask "
                                          r"blocks every key\), so its output must be exactly 0; found "
                                          r"output\[0, 1, 0\] = 0\.25"):
        expect_exactly_zero(Returned(output, "float32", (1, 3, 2), "cpu"), rows, "output", "attention(...)")
    expect_exactly_zero(Returned(np.zeros((1, 3, 2)), "float32", (1, 3, 2), "cpu"), rows, "output", "attention(...)")


def test_a_scratch_cell_may_compare_with_pytorch_but_an_answer_may_not():
    """Before: F.scaled_dot_product_attention in a scratch cell voided all ten attention checks (63 points)."""
    from autograder.pipeline import graded_answers, student_code, student_written_code

    scratch = ("import torch.nn.functional as F\nQ, K, V = torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)\n"
               "print((attention(Q, K, V)[0] - F.scaled_dot_product_attention(Q, K, V)).abs().max())")
    nb = student_notebook(reference_answers(), extra_cells=[("attention", scratch)])
    with SandboxedStudent(student_code(nb), sources=student_written_code(nb), answers=graded_answers(nb)) as student:
        assert run_check("attention_no_fused_kernels", student).status == "passed"
    answers = reference_answers()
    answers["attention"] += "\n\n_compare = torch.nn.functional.scaled_dot_product_attention\n"
    nb = student_notebook(answers)
    with SandboxedStudent(student_code(nb), sources=student_written_code(nb), answers=graded_answers(nb)) as student:
        verdict = run_check("attention_matches_reference", student)
    assert verdict.status == "failed" and "scaled_dot_product_attention (in your cell 'attention', line" in verdict.message


@st.composite
def error_messages(draw):
    """(message, shape): a ValueError's text naming some shapes, in the spellings students use."""
    shapes = draw(st.lists(st.lists(st.integers(0, 12), min_size=1, max_size=4).map(tuple), min_size=1, max_size=3))
    def spell(shape):
        dims = [str(n) for n in shape]
        gap = draw(st.sampled_from(["", " ", "  ", "\n"]))
        return draw(st.sampled_from([f"[{(',' + gap).join(dims)}]", f"({(',' + gap).join(dims)})",
                                     "x".join(dims), f"torch.Size([{(',' + gap).join(dims)}])",
                                     f"({dims[0]},)" if len(dims) == 1 else "x".join(dims)]))
    message = "got " + " and ".join(spell(s) for s in shapes)
    asked = draw(st.one_of(st.sampled_from(shapes), st.lists(st.integers(0, 12), min_size=1, max_size=4).map(tuple)))
    return message, asked


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(error_messages())
def test_the_notebooks_shape_rule_is_the_graders(case):
    """The public tests of Notebooks 1 and 4 and the hidden checks accept the same spellings of a shape in
    a ValueError (issue 19: Notebook 1's mentions() differed on 1-tuples and whitespace)."""
    message, shape = case
    for name in (NB1, NB4):
        assert notebook_mentions(name)(message, shape) == shape_mentioned(message, shape), (name, message, shape)


def notebook_mentions(name):
    cell = next(c for c in source_notebook(name).cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_helpers")
    namespace = {"torch": torch, "FLOAT32_RTOL": 0, "FLOAT32_ATOL": 0, "get_ipython": None}
    exec(compile(cell.source, "test_helpers", "exec"), namespace)  # noqa: S102 - the course's own notebook
    return namespace["mentions"]


def test_a_reply_nested_too_deep_is_refused_and_never_crashes_the_check():
    """Student code shares the worker's process and can write any reply: JSON nested past Python's
    recursion limit is an unreadable message, and a description nested past MAX_DEPTH is Opaque."""
    from autograder.sandboxed_worker import protocol

    with pytest.raises(protocol.ProtocolError, match="RecursionError"):
        protocol.loads(b"[" * 200_000 + b"]" * 200_000)
    spec = {"kind": "scalar", "value": 1}
    for _ in range(5000):
        spec = {"kind": "sequence", "type": "list", "items": [spec]}
    value = protocol.decode_value(spec)
    for _ in range(protocol.MAX_DEPTH + 2):
        value = value[0]
    assert isinstance(value, protocol.Opaque)
