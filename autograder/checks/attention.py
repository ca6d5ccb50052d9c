"""Hidden checks of Notebook 1: attention from scratch (the contract: README.md, "The
assignment", and the source notebook source/attention_surgeon/01_attention_from_scratch.ipynb).

Trusted code. Every check compares the student's results with the float64
reference of autograder/reference.py on inputs from autograder/strategies.py,
plus pinned @examples for the named edge cases. Each check declares its points,
what it grades and the public tests that show its rule beside it (autograder/points.py).
"""
import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from ..reference import expected_results, reference_attention, reference_with_grads, tolerance_for
from ..static_scan import find_forbidden, find_tampering
from ..strategies import GRADING, AttentionCase, attention_inputs, fixed_case, random_values
from . import CheckFailed, NeedsTA, check, void_family
from .expectations import (expect_close, expect_exactly_zero, expect_finite, expect_no_error, expect_pair,
                           expect_shape, expect_tensor, shape_mentioned, what)

NOTEBOOK = "01_attention_from_scratch"

KEY_PADDING = torch.tensor([True, True, True, False, False])  # [S=5]: the last two keys are padding


def refuse_ready_made_attention(student, outcome=None):
    """Code that calls PyTorch's own attention earns no attention points at all."""
    if not hasattr(student, "forbidden_findings"):  # read once per student
        # The rule as the notebook states it: only the cells a student fills in are read; their own
        # scratch cells may compare with PyTorch's attention.
        answers = student.answers or {f"cell {i}": source for i, source in enumerate(student.sources, 1)}
        student.forbidden_findings = find_forbidden(list(answers.values()), labels=list(answers),
                                                    context=student.sources)
    if student.forbidden_findings:
        where = "; ".join(f"{word} (in your cell '{cell}', line {line})"
                          for cell, line, word in student.forbidden_findings[:5])
        void_family(student, "attention", "no-ready-made-attention", f"your code uses ready-made attention, which this assignment asks you "
                                          f"to build yourself: {where}. No attention check can pass.")
    if outcome is not None and outcome.fused:
        void_family(student, "attention", "no-ready-made-attention", f"your attention() ran PyTorch's ready-made attention "
                                          f"({', '.join(outcome.fused[:3])}); build it from matmul and softmax "
                                          f"yourself. No attention check can pass.")


def call_attention(student, case, **options):
    refuse_ready_made_attention(student)
    outcome = student.call("attention", case.Q, case.K, case.V, mask=case.mask, scale=case.scale, **options)
    refuse_ready_made_attention(student, outcome)
    return outcome


def expected_for(case, mask=None):
    """((output, tolerance), (weights, tolerance)): the float64 reference of attention on `case` (with
    `mask` in place of the case's own, when given) and the tolerances for the case's dtype."""
    return expected_results(reference_attention, case.Q, case.K, case.V, case.mask if mask is None else mask,
                            case.scale, dtype=case.Q.dtype)


def expect_attention_close(case, output, weights, call_text):
    """Output and weights match the float64 reference. Weights that are what attention gives without the
    1/sqrt(d_k) scale break that rule, by name (the report counts it apart)."""
    (ref_out, out_tol), (ref_weights, weights_tol) = expected_for(case)
    try:
        expect_close(weights, ref_weights, weights_tol, "weights", call_text)
        expect_close(output, ref_out, out_tol, "output", call_text)
    except CheckFailed as failure:
        if case.scale and case.Q.shape[-1] > 1 and failure.rule == "matches-reference":
            unscaled = AttentionCase(case.Q, case.K, case.V, case.mask, False, case.seed)
            (_, _), (plain_weights, plain_tol) = expected_for(unscaled)
            try:
                expect_close(weights, plain_weights, plain_tol, "weights", call_text)
            except CheckFailed:
                raise failure from None
            raise CheckFailed("scaled-by-sqrt-dk", f"{failure}\n  (these are the weights of unscaled scores: "
                                                   f"divide the scores by sqrt(d_k))") from None
        raise


def expect_matches_reference(student, case):
    call_text = case.describe()
    output, weights = expect_pair(call_attention(student, case), call_text)
    expect_attention_close(case, output, weights, call_text)
    return output, weights


def given_cases(strategy):
    """Run the decorated test on every case of `strategy` under the grading profile."""
    def decorate(test):
        return GRADING(given(case=strategy)(test))
    return decorate


@check("attention_matches_reference", NOTEBOOK, points=12, grades="attention",
       shown_by=("test_compute_scores", "test_attention"), family="attention")
def attention_matches_reference(student):
    @given_cases(attention_inputs())
    @example(case=fixed_case((2, 5, 4), (2, 7, 4), (2, 7, 3)))  # 3-D, L != S
    @example(case=fixed_case((2, 3, 5, 8), (2, 3, 5, 8), (2, 3, 5, 8), scale=False))  # 4-D, no scale
    @example(case=fixed_case((2, 3, 4, 4), (3, 6, 4), (3, 6, 2)))  # K, V broadcast over the batch
    def agrees(case):
        expect_matches_reference(student, case)

    agrees()


@check("attention_bool_masks", NOTEBOOK, points=8, grades="attention",
       shown_by=("test_apply_mask", "test_attention"), family="attention")
def attention_bool_masks(student):
    square = torch.tensor([[True, False, True], [True, True, False], [False, True, True]])
    per_item = torch.rand(2, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.6
    per_item[..., 0] = True  # every row keeps a key

    @given_cases(attention_inputs(mask_kind="bool"))
    @example(case=fixed_case((2, 4, 3), (2, 5, 3), (2, 5, 2), mask=KEY_PADDING))  # [S] key padding
    @example(case=fixed_case((1, 3, 2), (1, 3, 2), (1, 3, 2), mask=square))  # [L, S]
    @example(case=fixed_case((2, 4, 3), (2, 5, 3), (2, 5, 2), mask=per_item))  # [B, L, S]
    @example(case=fixed_case((2, 4, 3), (2, 5, 3), (2, 5, 2), mask=KEY_PADDING.expand(2, 1, 5)))  # [B, 1, S]
    def agrees(case):
        expect_matches_reference(student, case)

    agrees()


@check("attention_float_masks", NOTEBOOK, points=8, grades="attention",
       shown_by=("test_apply_mask", "test_attention"), family="attention")
def attention_float_masks(student):
    bias = torch.tensor([[0.0, -1.0, 2.0], [0.5, float("-inf"), 0.0]])  # [L=2, S=3]

    @given_cases(attention_inputs(mask_kind="float"))
    @example(case=fixed_case((2, 2, 4), (2, 3, 4), (2, 3, 2), mask=bias))
    @example(case=fixed_case((2, 4, 3), (2, 5, 3), (2, 5, 2),
                             mask=torch.zeros(5).masked_fill(~KEY_PADDING, float("-inf"))))
    def agrees(case):
        expect_matches_reference(student, case)

    agrees()


def fully_masked_rows(case):
    """[..., L] bool: the query rows whose every key is blocked, in the scores' shape."""
    scores_shape = np.broadcast_shapes(case.Q.shape[:-2], case.K.shape[:-2]) + (case.Q.shape[-2], case.K.shape[-2])
    blocked = ~case.mask if case.mask.dtype == torch.bool else torch.isneginf(case.mask)
    return blocked.expand(scores_shape).all(dim=-1)


def upstream_grads(case, seed_offset=100):
    """Seeded upstream gradients for the output [..., L, d_v] and the weights [..., L, S]."""
    (out, _), (weights, _) = expected_for(case)
    return (random_values(case.seed + seed_offset, out.shape, case.Q.dtype),
            random_values(case.seed + seed_offset + 1, weights.shape, case.Q.dtype))


def expect_gradients_match(student, case, rows=None):
    """Backward through the student's attention; compare dQ, dK, dV with the float64 reference."""
    call_text = case.describe() + "\n  then backward()"
    g_out, g_weights = upstream_grads(case)
    outcome = call_attention(student, case, grad=(0, 1, 2), grad_outputs=[g_out, g_weights])
    output, weights = expect_pair(outcome, call_text)
    if not (output.has_grad_fn or output.requires_grad):
        raise CheckFailed("gradients-flow", f"{call_text}\n  the output is not connected to Q, K and V: no gradient can flow "
                          f"(did you use .detach(), .numpy() or torch.no_grad()?)")
    if outcome.backward_raised:
        kind, message = outcome.backward_raised
        raise CheckFailed("gradients-flow", f"{call_text}\n  backward() raised {kind}: {message}")
    _, _, ref_grads = reference_with_grads(case.Q, case.K, case.V, case.mask, case.scale, g_out, g_weights)
    _, _, low_grads = reference_with_grads(case.Q, case.K, case.V, case.mask, case.scale, g_out, g_weights,
                                           dtype=case.Q.dtype)
    for name, got, ref, low in zip(("Q.grad", "K.grad", "V.grad"), outcome.grads, ref_grads, low_grads):
        if got is None and bool((ref == 0).all()):
            continue  # PyTorch leaves .grad None where the true gradient is zero: both are right
        if got is None:
            raise CheckFailed("gradients-flow", f"{call_text}\n  {name} is None: no gradient reached {name[0]}")
        got = expect_tensor(got, name, call_text)
        expect_finite(got, name, call_text)
        if rows is not None and name == "Q.grad":
            expect_exactly_zero(got, rows, name, call_text, "the fully masked query rows")
        expect_close(got, ref, tolerance_for(case.Q.dtype, ref, low), name, call_text, rule="gradients-match-reference")


@check("attention_fully_masked_rows", NOTEBOOK, points=8, grades="attention",
       shown_by=("test_masked_softmax", "test_attention"), family="attention")
def attention_fully_masked_rows(student):
    nobody_row = torch.tensor([[True, True, False], [False, False, False], [False, True, True]])  # row 1 blocked
    minus_inf_row = torch.zeros(3, 4).index_fill(0, torch.tensor([2]), float("-inf"))  # row 2 blocked

    def examine(case):
        call_text = case.describe()
        rows = fully_masked_rows(case)
        output, weights = expect_pair(call_attention(student, case), call_text)
        expect_finite(output, "output", call_text)
        expect_finite(weights, "weights", call_text)
        expect_exactly_zero(weights, rows, "weights", call_text)
        expect_exactly_zero(output, rows, "output", call_text)
        expect_attention_close(case, output, weights, call_text)  # the same call's values: no second call
        expect_gradients_match(student, case, rows=rows)

    @given_cases(attention_inputs(mask_kind="fully_masked_bool", broadcast=False))
    @example(case=fixed_case((1, 3, 4), (1, 3, 4), (1, 3, 2), mask=nobody_row))
    def with_bool_masks(case):
        examine(case)

    @given_cases(attention_inputs(mask_kind="fully_masked_float", broadcast=False))
    @example(case=fixed_case((2, 3, 2), (2, 4, 2), (2, 4, 3), mask=minus_inf_row))
    def with_float_masks(case):
        examine(case)

    with_bool_masks()
    with_float_masks()


@check("attention_empty_sequences", NOTEBOOK, points=5, grades="attention",
       shown_by=("test_check_attention_inputs", "test_attention"), family="attention")
def attention_empty_sequences(student):
    @given_cases(attention_inputs(min_len=0, min_batch=0))
    @example(case=fixed_case((2, 0, 4), (2, 5, 4), (2, 5, 3)))  # L = 0
    @example(case=fixed_case((2, 3, 4), (2, 0, 4), (2, 0, 3)))  # S = 0
    @example(case=fixed_case((0, 3, 4), (0, 5, 4), (0, 5, 3)))  # a batch of 0
    @example(case=fixed_case((2, 2, 0, 4), (2, 2, 0, 4), (2, 2, 0, 3)))  # L = S = 0, 4-D
    @example(case=fixed_case((2, 3, 4), (2, 0, 4), (2, 0, 3), mask=torch.ones(3, 0, dtype=torch.bool)))
    def agrees(case):
        output, _ = expect_matches_reference(student, case)
        expect_finite(output, "output", case.describe())

    agrees()


# Each fault: (name, builder from a good case -> (bad Q, K, V, mask), the shapes the message must name)
def _d_k_zero(case):
    Q, K = case.Q[..., :0], case.K[..., :0]
    return (Q, K, case.V, None), [Q.shape]


def _d_k_mismatch(case):
    K = torch.cat([case.K, case.K[..., :1]], dim=-1)
    return (case.Q, K, case.V, None), [case.Q.shape, K.shape]


def _s_mismatch(case):
    V = torch.cat([case.V, case.V[..., :1, :]], dim=-2)
    return (case.Q, case.K, V, None), [case.K.shape, V.shape]


def _integer_mask(case):
    return (case.Q, case.K, case.V, torch.ones(case.K.shape[-2], dtype=torch.int64)), []


def _mask_too_many_keys(case):
    mask = torch.ones(case.K.shape[-2] + 1, dtype=torch.bool)
    return (case.Q, case.K, case.V, mask), [mask.shape]


def _mask_too_many_rows(case):
    mask = torch.zeros(case.Q.shape[-2] + 1, case.K.shape[-2])
    return (case.Q, case.K, case.V, mask), [mask.shape]


FAULTS = {
    "d_k = 0": _d_k_zero,
    "Q and K disagree on d_k": _d_k_mismatch,
    "K and V disagree on S": _s_mismatch,
    "an int64 mask": _integer_mask,
    "a mask with one key too many": _mask_too_many_keys,
    "a mask with one row too many": _mask_too_many_rows,
}


@check("attention_rejects_bad_inputs", NOTEBOOK, points=5, grades="attention",
       shown_by=("test_check_attention_inputs", "test_attention"), family="attention")
def attention_rejects_bad_inputs(student):
    @GRADING
    @given(case=attention_inputs(broadcast=False), fault=st.sampled_from(sorted(FAULTS)))
    @example(case=fixed_case((2, 3, 4), (2, 5, 4), (2, 5, 2)), fault="d_k = 0")
    def rejects(case, fault):
        (Q, K, V, mask), shapes = FAULTS[fault](case)
        bad = AttentionCase(Q, K, V, mask, case.scale, case.seed)
        call_text = bad.describe() + f"  ({fault})"
        outcome = call_attention(student, bad)
        if outcome.raised is None:
            raise CheckFailed("rejects-bad-input", f"{call_text}\n  returned {what(outcome.value)}; expected a ValueError")
        kind, message = outcome.raised
        if kind != "ValueError":
            raise CheckFailed("rejects-bad-input", f"{call_text}\n  raised {kind}: {message}\n  expected a ValueError whose message "
                              f"names the shapes")
        missing = [list(s) for s in shapes if not shape_mentioned(message, s)]
        if missing:
            raise CheckFailed("error-names-shapes", f"{call_text}\n  raised ValueError: {message}\n  the message should name the "
                              f"shape(s) {missing}")

    rejects()


@check("attention_numerically_stable", NOTEBOOK, points=5, grades="attention",
       shown_by=("test_masked_softmax", "test_attention"), family="attention")
def attention_numerically_stable(student):
    # Scores of exactly +1e4 and -1e4: exp(1e4) overflows float32 unless the row max is subtracted.
    q = torch.tensor([[[100.0]]])  # [1, L=1, d_k=1]
    k = torch.tensor([[[100.0], [-100.0], [99.0]]])  # [1, S=3, d_k=1]
    exact = AttentionCase(q, k, random_values(0, (1, 3, 2)), None, False, 0)
    with_mask = AttentionCase(q, k, exact.V, torch.tensor([False, True, True]), False, 0)

    @given_cases(attention_inputs(magnitude=60.0, mask_kind=None))
    @example(case=exact)
    @example(case=with_mask)
    def stays_finite(case):
        output, weights = expect_matches_reference(student, case)
        expect_finite(output, "output", case.describe())
        expect_finite(weights, "weights", case.describe())

    stays_finite()


@check("attention_keeps_dtype_and_inputs", NOTEBOOK, points=5, grades="attention",
       shown_by="test_attention", family="attention")
def attention_keeps_dtype_and_inputs(student):
    dtypes = st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16])

    @GRADING
    @given(data=st.data(), dtype=dtypes)
    def keeps(data, dtype):
        case = data.draw(attention_inputs(dtype=dtype, mask_kind=data.draw(st.sampled_from([None, "bool", "float"]))))
        call_text = case.describe()
        outcome = call_attention(student, case)
        output, weights = expect_pair(outcome, call_text)
        wanted = str(dtype).replace("torch.", "")
        for name, got in (("output", output), ("weights", weights)):
            if got.dtype != wanted:
                raise CheckFailed("keeps-dtype", f"{call_text}\n  returned {name} of dtype {got.dtype}; with {wanted} inputs it "
                                  f"must be {wanted}")
            if got.device != "cpu":
                raise CheckFailed("keeps-device", f"{call_text}\n  returned {name} on device {got.device}; the inputs are on cpu")
        changed = [name for name, modified in zip(("Q", "K", "V", "mask"), outcome.inputs_modified) if modified]
        if changed:
            raise CheckFailed("inputs-untouched", f"{call_text}\n  modified its input(s) {', '.join(changed)} in place; attention "
                              f"must leave its inputs untouched")
        expect_attention_close(case, output, weights, call_text)

    keeps()


@check("attention_gradients", NOTEBOOK, points=5, grades="attention",
       shown_by="test_attention", family="attention")
def attention_gradients(student):
    @given_cases(attention_inputs(mask_kind=None))
    @example(case=fixed_case((2, 3, 4), (2, 5, 4), (2, 5, 2)))
    @example(case=fixed_case((1, 2, 3, 2), (1, 2, 4, 2), (1, 2, 4, 3), mask=torch.tensor([True, False, True, True])))
    def flows(case):
        expect_gradients_match(student, case)

    flows()


@check("attention_no_fused_kernels", NOTEBOOK, points=2, grades="attention",
       shown_by="test_attention", family="attention")
def attention_no_fused_kernels(student):
    """The static scan, the worker's tripwires and a trace of the dispatcher's ops (call_attention).
    The last two live in the student's process: code that takes a route to switch them off is
    marked for a TA (NeedsTA) instead of passing on their word."""
    refuse_ready_made_attention(student)
    routes = find_tampering(student.sources)
    if routes:
        where = "; ".join(f"{what} (cell {cell}, line {line})" for cell, line, what in routes[:5])
        raise NeedsTA(f"flagged for a TA: your code reaches into the grader's worker or PyTorch's dispatcher "
                      f"({where}), which could hide ready-made attention from this check. A TA will read it "
                      f"and decide this check by hand.")
    for case in (fixed_case((2, 3, 4), (2, 5, 4), (2, 5, 2)),
                 fixed_case((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), mask=torch.ones(3, 3, dtype=torch.bool).tril())):
        outcome = call_attention(student, case, trace=True)  # raises CheckFailed on any sign of it
        expect_pair(outcome, case.describe())  # an attention that does not run cannot earn this


def _mask_check(student, function, keep):
    """create_*_mask(n): float32 [n, n], 0 where keep(i, j), -inf elsewhere; honours device."""
    @GRADING
    @given(n=st.integers(0, 16))
    @example(n=0)
    @example(n=1)
    @example(n=4)
    def builds(n):
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        expected = torch.from_numpy(np.where(keep(i, j), 0.0, -np.inf).astype(np.float64))
        for kwargs in ({}, {"device": "cpu"}):
            call_text = f"{function}({n}{', device=' + repr(kwargs['device']) if kwargs else ''})"
            outcome = student.call(function, n, **kwargs)
            expect_no_error(outcome, call_text)
            mask = expect_tensor(outcome.value, "the mask", call_text)
            if mask.dtype != "float32":
                raise CheckFailed("mask-float32", f"{call_text}\n  returned a mask of dtype {mask.dtype}; expected float32")
            expect_shape(mask, (n, n), "the mask", call_text)
            got = torch.from_numpy(mask.array.astype(np.float64))
            if not torch.equal(got, expected):
                where = tuple(int(x) for x in (got != expected).nonzero()[0])
                raise CheckFailed("mask-values", f"{call_text}\n  returned mask{list(where)} = {got[where].item()}; expected "
                                  f"{expected[where].item()} (row = query i, column = key j)")
        call_text = f"{function}({n}, device='meta')"
        outcome = student.call(function, n, device="meta")
        expect_no_error(outcome, call_text)
        mask = expect_tensor(outcome.value, "the mask", call_text)
        if mask.device != "meta" or mask.dtype != "float32" or tuple(mask.shape) != (n, n):
            raise CheckFailed("mask-on-device", f"{call_text}\n  returned a {mask.dtype} mask of shape {list(mask.shape)} on "
                              f"{mask.device}; expected float32 [{n}, {n}] on meta (build it on `device`)")

    builds()


@check("causal_mask", NOTEBOOK, points=4, grades="create_causal_mask",
       shown_by="test_masks")
def causal_mask(student):
    _mask_check(student, "create_causal_mask", lambda i, j: j <= i)


@check("reverse_mask", NOTEBOOK, points=3, grades="create_reverse_mask",
       shown_by="test_masks")
def reverse_mask(student):
    _mask_check(student, "create_reverse_mask", lambda i, j: j >= i)
