"""Hidden checks of Notebook 4 (the bonus assignment): heads, multi-head and grouped-query attention,
attention dropout, tiled and local attention, the KV cache and decoding (the contract: README.md,
"The assignment", and source/attention_surgeon_bonus/04_beyond_one_head.ipynb). A KVCache lives in
the student's worker between calls (StudentCode.call(keep=True) and StudentCode.method).

Trusted code. Multi-head attention is compared with PyTorch's own torch.nn.MultiheadAttention
(same weights, float64) where that module applies, and with an expand-the-KV-heads float64
reference built on reference_attention everywhere else (grouped queries, masks), both through
reference.expected_results. Each check declares its points beside it (autograder/points.py).
"""
import math

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import course_config

from ..reference import (expected_results, reference_multi_head_attention, tolerance_for,
                         torch_multi_head_attention)
from ..strategies import (GRADING, attention_inputs, fixed_case, head_shapes, multi_head_case, multi_head_inputs,
                          random_values)
from . import CheckFailed, NeedsTA, check
from ..static_scan import find_memory_routes, find_tampering
from ..student import Allocates
from .attention import expected_for
from . import attention_on_cuda
from .attention_on_cuda import device_hint, expect_on_cuda
from .expectations import (expect_close, expect_no_error, expect_pair, expect_shape, expect_tensor,
                           expect_value_error, shape_mentioned, what)

NOTEBOOK = "04_beyond_one_head"

FLOAT32 = torch.float32


def exactly(got, expected, name, call_text):
    """A returned tensor equal to `expected` value for value (a view or a copy: no arithmetic involved)."""
    expect_shape(got, expected.shape, name, call_text)
    actual = torch.from_numpy(got.array.astype(np.float64))
    if not torch.equal(actual, expected.to(torch.float64)):
        where = tuple(int(i) for i in (actual != expected.to(torch.float64)).nonzero()[0])
        raise CheckFailed("matches-reference", f"{call_text}\n  returned {name}{list(where)} = {actual[where].item():.6g}; expected "
                          f"{expected[where].item():.6g}")


# --- Part A ------------------------------------------------------------------------------------------
@check("split_merge_heads", NOTEBOOK, points=3, grades=("merge_heads", "split_heads"),
       shown_by="test_split_merge_heads")
def split_merge_heads(student):
    @GRADING
    @given(shape_and_heads=head_shapes())
    @example(shape_and_heads=((1, 2, 6), 3))  # the notebook's picture
    @example(shape_and_heads=((2, 5, 4), 2))  # L is not a multiple of H: a reshape without transpose mixes tokens
    @example(shape_and_heads=((2, 0, 4), 2))  # an empty sequence
    def round_trip(shape_and_heads):
        shape, heads = shape_and_heads
        x = random_values(sum(shape) + heads, shape)  # [B, L, H*d]
        call_text = f"split_heads(x{list(shape)}, {heads})"
        outcome = student.call("split_heads", x, heads)
        expect_no_error(outcome, call_text)
        split = expect_tensor(outcome.value, "heads", call_text)
        B, L, width = shape
        exactly(split, x.view(B, L, heads, width // heads).transpose(1, 2), "heads", call_text)
        heads_in = x.view(B, L, heads, width // heads).transpose(1, 2).contiguous()  # [B, H, L, d]
        call_text = f"merge_heads(heads{list(heads_in.shape)})"
        outcome = student.call("merge_heads", heads_in)
        expect_no_error(outcome, call_text)
        exactly(expect_tensor(outcome.value, "x", call_text), x, "x", call_text)

    round_trip()
    for shape, heads in (((1, 2, 7), 2), ((2, 3, 6), 4)):
        call_text = f"split_heads(x{list(shape)}, {heads})"
        outcome = student.call("split_heads", torch.zeros(shape), heads)
        expect_value_error(outcome, call_text, f"a last dimension of {shape[-1]} that does not divide into {heads} heads")
        if not shape_mentioned(outcome.raised[1], shape):
            raise CheckFailed("error-names-shapes", f"{call_text}\n  raised ValueError({outcome.raised[1]!r}), which does not name the "
                              f"shape {list(shape)}")


# --- Part B ------------------------------------------------------------------------------------------
def call_multi_head(student, case):
    call_text = case.describe()
    outcome = student.call("multi_head_attention", *case.args(), **case.kwargs())
    output, weights = expect_pair(outcome, call_text)
    B, L, d_model = case.x.shape
    expect_shape(output, (B, L, d_model), "output", call_text)
    expect_shape(weights, (B, case.num_heads, L, case.context.shape[1]), "weights", call_text)
    return call_text, output, weights


def expected_multi_head(case, mask=None):
    """((output, tolerance), (weights, tolerance)) of the float64 expand-the-KV-heads reference on `case`
    (with `mask` in place of the case's own, when given)."""
    return expected_results(reference_multi_head_attention, *case.args(), case.num_heads, case.num_kv_heads,
                            case.mask if mask is None else mask)


def expect_reference(student, case, against_torch=False):
    """The student's output and weights against float64 (PyTorch's module, or the expand-the-KV-heads reference)."""
    call_text, output, weights = call_multi_head(student, case)
    (ref_out, out_tol), (ref_weights, weights_tol) = expected_multi_head(case)
    if against_torch:  # the same tolerances; PyTorch's module computes the expected values
        ref_out, ref_weights = torch_multi_head_attention(*(t.to(torch.float64) for t in case.args()), case.num_heads)
    expect_close(weights, ref_weights, weights_tol, "weights", call_text)
    expect_close(output, ref_out, out_tol, "output", call_text)


@check("multi_head_attention_matches_torch", NOTEBOOK, points=4, grades="multi_head_attention",
       shown_by="test_multi_head_attention")
def multi_head_attention_matches_torch(student):
    @GRADING
    @given(case=multi_head_inputs())
    @example(case=multi_head_case(2, 3, 5, num_heads=2, d_head=4))             # cross-attention, L != S
    @example(case=multi_head_case(1, 4, 4, num_heads=4, d_head=2, cross=False))  # self-attention
    @example(case=multi_head_case(2, 3, 3, num_heads=1, d_head=3))             # one head
    def agrees(case):
        expect_reference(student, case, against_torch=True)

    agrees()


@check("grouped_query_attention", NOTEBOOK, points=4, grades="multi_head_attention",
       shown_by="test_multi_head_attention")
def grouped_query_attention(student):
    @GRADING
    @given(case=multi_head_inputs(grouped=True))
    @example(case=multi_head_case(2, 3, 5, num_heads=4, d_head=2, num_kv_heads=1))  # multi-query
    @example(case=multi_head_case(2, 4, 4, num_heads=6, d_head=2, num_kv_heads=2, cross=False))  # groups of 3
    @example(case=multi_head_case(1, 3, 2, num_heads=4, d_head=3, num_kv_heads=2))  # groups of 2
    def agrees(case):
        expect_reference(student, case)

    agrees()


@check("multi_head_attention_masks", NOTEBOOK, points=2, grades="multi_head_attention",
       shown_by=("test_attention_from_notebook_1", "test_multi_head_attention"))
def multi_head_attention_masks(student):
    L = 4
    causal = torch.ones(L, L, dtype=torch.bool).tril()                      # [L, L]
    padding = torch.tensor([True, True, True, False])                       # [S]: the last key is padding
    blocked_row = torch.ones(2, 1, L, L, dtype=torch.bool)
    blocked_row[:, :, 1] = False                                            # row 1 sees nothing

    @GRADING
    @given(case=multi_head_inputs(grouped=True, mask_kind=st.sampled_from(["bool", "float", "fully_masked_bool"])))
    @example(case=multi_head_case(2, L, L, num_heads=2, d_head=2, cross=False, mask=causal))
    @example(case=multi_head_case(2, L, L, num_heads=4, d_head=2, num_kv_heads=2, mask=padding))
    @example(case=multi_head_case(2, L, L, num_heads=2, d_head=3, mask=blocked_row))
    @example(case=multi_head_case(1, L, L, num_heads=2, d_head=2, cross=False,
                                  mask=torch.zeros(L, L).masked_fill(~causal, float("-inf"))))
    def agrees(case):
        expect_reference(student, case)

    agrees()


@check("multi_head_attention_rejects_bad_inputs", NOTEBOOK, points=2, grades="multi_head_attention",
       shown_by="test_multi_head_attention")
def multi_head_attention_rejects_bad_inputs(student):
    good = multi_head_case(2, 3, 4, num_heads=2, d_head=4)                 # d_model = 8
    x, context, W_q, W_k, W_v, W_o = good.args()
    bad_cases = [
        ("8 features that do not divide into 3 heads", (x, context, W_q, W_k, W_v, W_o), {"num_heads": 3}, x.shape),
        ("num_heads=2, which does not divide by num_kv_heads=3,", (x, context, W_q, W_k, W_v, W_o),
         {"num_heads": 2, "num_kv_heads": 3}, None),  # no tensor is wrong: any message
        ("num_kv_heads=None (4 key/value heads) with a W_k and W_v of [8, 4]",
         (x, context, W_q, torch.zeros(8, 4), torch.zeros(8, 4), W_o), {"num_heads": 4}, (8, 4)),
        ("a context of another batch size", (x, context[:1], W_q, W_k, W_v, W_o), {"num_heads": 2},
         context[:1].shape),
        ("a context of another width", (x, torch.zeros(2, 4, 6), W_q, W_k, W_v, W_o), {"num_heads": 2}, (2, 4, 6)),
        ("a W_k of the wrong shape", (x, context, W_q, torch.zeros(8, 6), W_v, W_o), {"num_heads": 2}, (8, 6)),
        ("a W_o of the wrong shape", (x, context, W_q, W_k, W_v, torch.zeros(6, 8)), {"num_heads": 2}, (6, 8)),
    ]
    for what_is_wrong, args, kwargs, shape in bad_cases:
        call_text = (f"multi_head_attention({', '.join(f'{list(a.shape)}' for a in args)}, "
                     f"{', '.join(f'{k}={v}' for k, v in kwargs.items())})")
        outcome = student.call("multi_head_attention", *args, **kwargs)
        expect_value_error(outcome, call_text, what_is_wrong)
        if shape is not None and not shape_mentioned(outcome.raised[1], shape):
            raise CheckFailed("error-names-shapes", f"{call_text}\n  raised ValueError({outcome.raised[1]!r}), which does not name the "
                              f"shape {list(shape)} that is wrong")


# --- Part C ------------------------------------------------------------------------------------------
DROPOUT_CASE = fixed_case((4, 16, 8), (4, 16, 8), (4, 16, 8), seed=7)        # [B, L, d]: 1,024 weights
MASKED_CASE = fixed_case((2, 5, 4), (2, 6, 4), (2, 6, 3), seed=3,
                         mask=torch.tensor([True, True, False, True, False, True]))


def call_dropout(student, case, **options):
    """Call attention_with_dropout on `case`; return the call as the student would type it, and the outcome."""
    parts = [f"Q{list(case.Q.shape)}", f"K{list(case.K.shape)}", f"V{list(case.V.shape)}"]
    if case.mask is not None:
        parts.append(f"mask={case.mask.tolist()}")
    parts += [f"{k}={v}" for k, v in options.items() if k != "generator"]
    if "generator" in options:
        parts.append(f"generator=torch.Generator().manual_seed({options['generator'].initial_seed()})")
    call_text = f"attention_with_dropout({', '.join(parts)})  (values: seeded normal, seed {case.seed})"
    return call_text, student.call("attention_with_dropout", case.Q, case.K, case.V, mask=case.mask, **options)




@check("dropout_off_is_attention", NOTEBOOK, points=2, grades="attention_with_dropout",
       shown_by="test_attention_with_dropout")
def dropout_off_is_attention(student):
    for case in (DROPOUT_CASE, MASKED_CASE):
        (ref_out, out_tol), (ref_weights, weights_tol) = expected_for(case)
        for options in ({"p": 0.5, "training": False}, {"p": 0.0, "training": True}, {"p": 0.0, "training": False}):
            call_text, outcome = call_dropout(student, case, **options)
            output, weights = expect_pair(outcome, call_text)
            expect_close(weights, ref_weights, weights_tol, "weights", call_text)
            expect_close(output, ref_out, out_tol, "output", call_text)
        call_text, outcome = call_dropout(student, case, p=1.0, training=True)
        output, weights = expect_pair(outcome, call_text)
        exactly(weights, torch.zeros(ref_weights.shape), "weights", call_text + "  (p = 1 drops every weight)")
        exactly(output, torch.zeros(ref_out.shape), "output", call_text + "  (p = 1 drops every weight)")


def binomial_bound(n, p, sigmas=5.0):
    """How far the kept count may stray from n(1-p): 5 standard deviations (a false alarm every ~3.5 million)."""
    return sigmas * math.sqrt(n * p * (1 - p))


@check("dropout_scales_survivors", NOTEBOOK, points=3, grades="attention_with_dropout",
       shown_by="test_attention_with_dropout")
def dropout_scales_survivors(student):
    _, (ref_weights, _) = expected_for(DROPOUT_CASE)
    for p, seed in ((0.1, 1), (0.5, 2), (0.9, 3)):
        call_text, outcome = call_dropout(student, DROPOUT_CASE, p=p, training=True,
                                          generator=torch.Generator().manual_seed(seed))
        output, weights = expect_pair(outcome, call_text)
        expect_shape(weights, ref_weights.shape, "weights", call_text)
        dropped = torch.from_numpy(weights.array.astype(np.float64))
        kept = dropped != 0
        n, n_kept = kept.numel(), int(kept.sum())
        if abs(n_kept - n * (1 - p)) > binomial_bound(n, p):
            raise CheckFailed("dropout", f"{call_text}\n  kept {n_kept} of {n} weights; with p = {p} about {n * (1 - p):.0f} "
                              f"(within {binomial_bound(n, p):.0f}) should survive")
        scaled = ref_weights / (1 - p)
        tol = tolerance_for(FLOAT32, scaled)
        expect_close(weights, torch.where(kept, scaled, torch.zeros_like(scaled)), tol,
                     "weights (a kept weight must be the weight / (1 - p))", call_text)
        expected_out = torch.where(kept, scaled, torch.zeros_like(scaled)) @ DROPOUT_CASE.V.to(torch.float64)
        expect_close(output, expected_out, tolerance_for(FLOAT32, expected_out), "output (made from the dropped weights)",
                     call_text)


def expect_independent_drops(call_text, kept, kept_other_seed, p):
    """What makes dropout dropout: each weight kept with probability 1 - p on its own. Two seeds give masks
    that agree only as often as two independent ones would, two neighbours are both kept (1 - p)^2 of the
    time (runs and stripes are not), and the kept count of a row and of a column varies as a binomial's
    does (a fixed pattern keeps the same count in every row, or whole columns). Each bound is 5 sigma."""
    rows = kept.reshape(-1, kept.shape[-1])                                     # [B*L, S]
    agree = float((kept == kept_other_seed).mean())
    expected_agree = p * p + (1 - p) * (1 - p)
    if abs(agree - expected_agree) > 5 * math.sqrt(expected_agree * (1 - expected_agree) / kept.size):
        raise CheckFailed("dropout", f"{call_text}\n  and the same call with seed 12 keep the same weights {agree:.0%} of the "
                          f"time; two independent draws agree about {expected_agree:.0%} of the time. Drop each "
                          f"weight on its own: torch.rand(..., generator=generator) >= p")
    both = float((rows[:, 1:] & rows[:, :-1]).mean())
    expected_both = (1 - p) ** 2
    if abs(both - expected_both) > 5 * math.sqrt(expected_both * (1 - expected_both) / rows[:, 1:].size):
        raise CheckFailed("dropout", f"{call_text}\n  keeps both of two neighbouring weights {both:.0%} of the time; independent "
                          f"drops keep both about {expected_both:.0%} of the time: the dropped weights follow a "
                          f"pattern. Drop each weight on its own: torch.rand(..., generator=generator) >= p")
    for axis, line in ((1, "row"), (0, "column")):
        counts = rows.sum(axis=axis).astype(np.float64)
        n = rows.shape[axis]
        ratio = counts.var(ddof=1) / (n * p * (1 - p))
        if not 0.15 <= ratio <= 3.0:  # a binomial's sample variance over 16 or 64 counts: beyond 5 sigma
            raise CheckFailed("dropout", f"{call_text}\n  the number of weights kept per {line} varies {ratio:.2f} times as "
                              f"much as independent drops would ({counts.min():.0f} to {counts.max():.0f} of {n}): "
                              f"the dropped weights follow a pattern. Drop each weight on its own: "
                              f"torch.rand(..., generator=generator) >= p")


@check("dropout_is_seeded_and_checks_p", NOTEBOOK, points=2, grades="attention_with_dropout",
       shown_by="test_attention_with_dropout")
def dropout_is_seeded_and_checks_p(student):
    results = []
    for seed in (11, 11, 12):
        call_text, outcome = call_dropout(student, DROPOUT_CASE, p=0.3, training=True,
                                          generator=torch.Generator().manual_seed(seed))
        output, weights = expect_pair(outcome, call_text)
        results.append((call_text, weights.array))
    if not np.array_equal(results[0][1], results[1][1]):
        raise CheckFailed("dropout", f"{results[0][0]}\n  gave different weights on two calls with the same seed; draw the "
                          f"random numbers with the generator you are given")
    if np.array_equal(results[0][1], results[2][1]):
        raise CheckFailed("dropout", f"{results[2][0]}\n  gave the same weights as seed 11; the generator must decide what is "
                          f"dropped")
    expect_independent_drops(results[0][0], results[0][1] != 0, results[2][1] != 0, p=0.3)
    for p in (-0.1, 1.5):
        call_text, outcome = call_dropout(student, DROPOUT_CASE, p=p, training=True)
        expect_value_error(outcome, call_text, f"p = {p}, which is not a probability,")


# --- Part D: tiled attention -------------------------------------------------------------------------
def tiled_call_text(case, block_size):
    return case.describe().replace("attention(", "tiled_attention(", 1).replace(
        ")  ", f", block_size={block_size})  ", 1)


def expect_attention_output(student, function, case, call_text, **options):
    """`function`'s output on `case` agrees with the float64 reference of attention()."""
    outcome = student.call(function, case.Q, case.K, case.V, mask=case.mask, scale=case.scale, **options)
    expect_no_error(outcome, call_text)
    output = expect_tensor(outcome.value, "output", call_text)
    (expected, tolerance), _ = expected_for(case)  # Notebook 1's float64 reference and tolerance
    expect_close(output, expected, tolerance, "output", call_text)


@st.composite
def tiled_inputs(draw):
    """attention()'s inputs (maybe a bool or float mask) and a block size from 1 to past S."""
    kind = draw(st.sampled_from([None, "bool", "float"]))
    case = draw(attention_inputs(mask_kind=kind))
    return case, draw(st.integers(1, case.K.shape[-2] + 2))


@check("tiled_attention_matches_attention", NOTEBOOK, points=7, grades="tiled_attention",
       shown_by="test_tiled_attention")
def tiled_attention_matches_attention(student):
    @GRADING
    @given(case_and_block=tiled_inputs())
    @example(case_and_block=(fixed_case((2, 5, 4), (2, 7, 4), (2, 7, 3)), 3))        # a short last block
    @example(case_and_block=(fixed_case((2, 3, 5, 8), (2, 3, 9, 8), (2, 3, 9, 8), magnitude=4.0), 2))  # growing max
    @example(case_and_block=(fixed_case((1, 4, 2), (1, 6, 2), (1, 6, 2)), 1))        # one key at a time
    @example(case_and_block=(fixed_case((1, 4, 2), (1, 6, 2), (1, 6, 2)), 100))      # one block for everything
    def agrees(case_and_block):
        case, block_size = case_and_block
        expect_attention_output(student, "tiled_attention", case, tiled_call_text(case, block_size),
                                block_size=block_size)

    agrees()


@check("tiled_attention_edge_cases", NOTEBOOK, points=4, grades="tiled_attention",
       shown_by=("test_attention_from_notebook_1", "test_tiled_attention"))
def tiled_attention_edge_cases(student):
    blocked = torch.ones(2, 5, 7, dtype=torch.bool)
    blocked[:, 1] = False                                       # row 1 sees nothing
    blocked[:, 3, :4] = False                                   # row 3 sees only the last block's keys
    minus_inf = torch.zeros(5, 7).masked_fill(~blocked[0], float("-inf"))
    cases = [
        (fixed_case((2, 5, 4), (2, 7, 4), (2, 7, 3), mask=blocked), 2),
        (fixed_case((2, 5, 4), (2, 7, 4), (2, 7, 3), mask=minus_inf), 3),
        (fixed_case((2, 0, 4), (2, 7, 4), (2, 7, 3)), 2),          # L = 0
        (fixed_case((2, 5, 4), (2, 0, 4), (2, 0, 3)), 2),          # S = 0: zeros
        (fixed_case((2, 5, 4), (2, 7, 4), (2, 7, 3), mask=torch.tensor([[True], [False], [True], [True], [True]])),
         2),                                                     # an [L, 1] mask: broadcast over the keys
    ]
    for case, block_size in cases:
        expect_attention_output(student, "tiled_attention", case, tiled_call_text(case, block_size),
                                block_size=block_size)
    good = fixed_case((2, 5, 4), (2, 7, 4), (2, 7, 3))
    for what_is_wrong, Q, K, V, block_size in (
            ("d_k = 0", torch.zeros(2, 5, 0), torch.zeros(2, 7, 0), good.V, 2),
            ("K and V with different S", good.Q, good.K, torch.zeros(2, 6, 3), 2),
            ("Q and K with different d_k", good.Q, torch.zeros(2, 7, 5), good.V, 2),
            ("block_size = 0", good.Q, good.K, good.V, 0),
            ("block_size = -1", good.Q, good.K, good.V, -1)):
        call_text = f"tiled_attention(Q{list(Q.shape)}, K{list(K.shape)}, V{list(V.shape)}, block_size={block_size})"
        expect_value_error(student.call("tiled_attention", Q, K, V, block_size=block_size), call_text, what_is_wrong)


def refuse_unseen_memory(student, grade_id):
    """The memory a call uses is measured in the student's own process (the worker's OpRecorder), so
    its word is only taken for code that takes no route around the measure: none that could switch
    it off or edit the worker's reply (find_tampering, in any cell), and in the function's own cell no
    work it cannot see (another thread or process, numpy: find_memory_routes). Code that takes one
    is decided by a TA (NeedsTA: pending, "needs manual grade", named in `make autograde`'s summary)."""
    routes = [(f"cell {cell}", line, what) for cell, line, what in find_tampering(student.sources)]
    own = (student.answers or {}).get(grade_id)
    routes += [(f"your {grade_id} cell", line, what) for _, line, what in find_memory_routes([own] if own else [])]
    if routes:
        where = "; ".join(f"{what} ({cell}, line {line})" for cell, line, what in routes[:5])
        raise NeedsTA(f"flagged for a TA: the grader measures memory inside the process that runs your code, "
                      f"and your code takes a route around that measure ({where}). A TA will read it and "
                      f"decide this check by hand.")


def expect_within(student, function, args, kwargs, call_text, intermediate, what_bound):
    """The largest tensor the call creates holds at most twice the inputs, the output or `intermediate`."""
    refuse_unseen_memory(student, function)
    outcome = student.call(function, *args, trace=True, **kwargs)
    expect_no_error(outcome, call_text)
    output = expect_tensor(outcome.value, "output", call_text)
    bound = 2 * max(max(t.numel() for t in args if isinstance(t, torch.Tensor)), output.elements, intermediate)
    if outcome.largest_tensor is None:
        raise CheckFailed("contract", f"{call_text}\n  the grader could not watch this call's tensors")
    if outcome.largest_tensor > bound:
        raise CheckFailed("memory-grows-as-expected", f"{call_text}\n  created a tensor of {outcome.largest_tensor:,} numbers; {what_bound} allows "
                          f"about {bound:,} (a full [L, S] score matrix here is "
                          f"{args[0].shape[-2] * args[1].shape[-2]:,})")


@check("tiled_attention_stays_within_its_blocks", NOTEBOOK, points=4, grades="tiled_attention",
       shown_by="test_tiled_attention")
def tiled_attention_stays_within_its_blocks(student):
    for shape, block_size in (((1, 64, 4), 8), ((2, 2, 48, 4), 4)):
        Q, K, V = (random_values(seed, shape) for seed in (1, 2, 3))
        lead = math.prod(shape[:-2])
        call_text = f"tiled_attention(Q{list(shape)}, K{list(shape)}, V{list(shape)}, block_size={block_size})"
        expect_within(student, "tiled_attention", (Q, K, V), {"block_size": block_size}, call_text,
                      lead * shape[-2] * block_size, f"[..., L, block_size] = [{shape[-2]}, {block_size}]")


# --- Part E: local attention -------------------------------------------------------------------------
def band(L, window):
    positions = torch.arange(L)
    return (positions[:, None] - positions[None, :]).abs() <= window       # [L, L] bool: True = may attend


@st.composite
def local_inputs(draw):
    """Self-attention-shaped inputs (L == S, 3-D or 4-D) and a window from 0 to past L."""
    lead = draw(st.sampled_from([(1,), (2,), (2, 3)]))
    L = draw(st.integers(1, course_config.MAX_SEQ_LEN))
    d_k, d_v = draw(st.integers(1, course_config.MAX_HEAD_DIM)), draw(st.integers(1, course_config.MAX_HEAD_DIM))
    seed = draw(st.integers(0, 2**31 - 1))
    case = fixed_case((*lead, L, d_k), (*lead, L, d_k), (*lead, L, d_v), seed=seed, scale=draw(st.booleans()))
    return case, draw(st.integers(0, L + 1))


@check("local_attention_matches_banded_attention", NOTEBOOK, points=4, grades="local_attention",
       shown_by="test_local_attention")
def local_attention_matches_banded_attention(student):
    @GRADING
    @given(case_and_window=local_inputs())
    @example(case_and_window=(fixed_case((2, 6, 4), (2, 6, 4), (2, 6, 3)), 1))
    @example(case_and_window=(fixed_case((2, 6, 4), (2, 6, 4), (2, 6, 3)), 0))     # each query sees itself
    @example(case_and_window=(fixed_case((1, 2, 5, 3), (1, 2, 5, 3), (1, 2, 5, 2)), 7))  # past the ends
    def agrees(case_and_window):
        case, window = case_and_window
        call_text = case.describe().replace("attention(", "local_attention(", 1).replace(
            ")  ", f", window={window})  ", 1)
        outcome = student.call("local_attention", case.Q, case.K, case.V, window, scale=case.scale)
        expect_no_error(outcome, call_text)
        output = expect_tensor(outcome.value, "output", call_text)
        (expected, tolerance), _ = expected_for(case, mask=band(case.Q.shape[-2], window))
        expect_close(output, expected, tolerance, "output", call_text)

    agrees()
    for what_is_wrong, shapes, window in (("L != S", ((2, 6, 4), (2, 7, 4), (2, 7, 3)), 1),
                                          ("window = -1", ((2, 6, 4), (2, 6, 4), (2, 6, 3)), -1)):
        tensors = [torch.zeros(s) for s in shapes]
        call_text = f"local_attention(Q{list(shapes[0])}, K{list(shapes[1])}, V{list(shapes[2])}, window={window})"
        expect_value_error(student.call("local_attention", *tensors, window), call_text, what_is_wrong)


@check("local_attention_stays_within_its_band", NOTEBOOK, points=3, grades="local_attention",
       shown_by="test_local_attention")
def local_attention_stays_within_its_band(student):
    for shape, window in (((1, 64, 4), 2), ((2, 2, 48, 4), 1)):
        Q, K, V = (random_values(seed, shape) for seed in (1, 2, 3))
        lead = math.prod(shape[:-2])
        call_text = f"local_attention(Q{list(shape)}, K{list(shape)}, V{list(shape)}, window={window})"
        # The windows of keys or values it gathers, [..., L, d, 2 * window + 1], are its own: fine.
        expect_within(student, "local_attention", (Q, K, V, window), {}, call_text,
                      lead * shape[-2] * shape[-1] * (2 * window + 1),
                      f"[..., L, d, 2 * window + 1] = [{shape[-2]}, {shape[-1]}, {2 * window + 1}]")


# --- Part F: the KV cache and decoding ---------------------------------------------------------------
def new_cache(student, max_len, batch, num_kv_heads, d_head):
    """A KVCache made by the student's class, kept in their worker; (handle, how it was made)."""
    call_text = f"KVCache(max_len={max_len}, batch={batch}, num_kv_heads={num_kv_heads}, d_head={d_head})"
    outcome = student.call("KVCache", max_len, batch, num_kv_heads, d_head, keep=True)
    expect_no_error(outcome, call_text)
    if outcome.handle is None:
        raise CheckFailed("contract", f"{call_text}\n  could not be kept for the next calls")
    return outcome.handle, f"cache = {call_text}"


def expect_length(student, cache, expected, story):
    outcome = student.method(cache, "__len__")
    expect_no_error(outcome, f"{story}\nlen(cache)")
    if outcome.value != expected:
        raise CheckFailed("kv-cache", f"{story}\nlen(cache)\n  returned {outcome.value!r}; the cache holds {expected} positions")


def append(student, cache, k, v, story, trace=False):
    """cache.append(k, v): the returned views (K, V) and the story so far, for messages."""
    story += f"\ncache.append(k{list(k.shape)}, v{list(v.shape)})"
    outcome = student.method(cache, "append", k, v, trace=trace)
    K, V = expect_pair(outcome, story, names=("K", "V"))
    return K, V, story, outcome


@check("kv_cache_appends_and_counts", NOTEBOOK, points=3, grades="KVCache",
       shown_by="test_kv_cache")
def kv_cache_appends_and_counts(student):
    cache, story = new_cache(student, max_len=7, batch=2, num_kv_heads=2, d_head=3)
    expect_length(student, cache, 0, story)
    written_k, written_v = [], []
    for step, T in enumerate((2, 1, 3, 1)):                                    # 7 positions in all
        k, v = random_values(10 + step, (2, 2, T, 3)), random_values(20 + step, (2, 2, T, 3))
        written_k.append(k)
        written_v.append(v)
        K, V, story, _ = append(student, cache, k, v, story)
        exactly(K, torch.cat(written_k, dim=2), "K (every position written so far, in order)", story)
        exactly(V, torch.cat(written_v, dim=2), "V (every position written so far, in order)", story)
        expect_length(student, cache, sum(t.shape[2] for t in written_k), story)


@check("kv_cache_overflow_keeps_the_cache", NOTEBOOK, points=2, grades="KVCache",
       shown_by="test_kv_cache")
def kv_cache_overflow_keeps_the_cache(student):
    cache, story = new_cache(student, max_len=6, batch=1, num_kv_heads=2, d_head=2)
    k, v = random_values(1, (1, 2, 5, 2)), random_values(2, (1, 2, 5, 2))
    _, _, story, _ = append(student, cache, k, v, story)
    story_overflow = story + "\ncache.append(k[1, 2, 2, 2], v[1, 2, 2, 2])"
    outcome = student.method(cache, "append", torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))
    expect_value_error(outcome, story_overflow, "writing 2 positions after 5 of max_len = 6")
    message = outcome.raised[1]
    if "6" not in message or not ("7" in message or "2" in message):
        raise CheckFailed("error-names-shapes", f"{story_overflow}\n  raised ValueError({message!r}); name both sizes: max_len = 6 and the "
                          f"7 positions (or the 2 more) that were asked for")
    expect_length(student, cache, 5, story_overflow + "  (it raised)")
    last_k, last_v = random_values(3, (1, 2, 1, 2)), random_values(4, (1, 2, 1, 2))
    K, V, story, _ = append(student, cache, last_k, last_v, story_overflow + "  (it raised)")
    exactly(K, torch.cat([k, last_k], dim=2), "K (the failed append must have written nothing)", story)
    exactly(V, torch.cat([v, last_v], dim=2), "V (the failed append must have written nothing)", story)


@check("kv_cache_allocates_once", NOTEBOOK, points=2, grades="KVCache",
       shown_by="test_kv_cache")
def kv_cache_allocates_once(student):
    refuse_unseen_memory(student, "kv_cache")
    B, H_kv, d, max_len = 2, 2, 4, 32
    cache, story = new_cache(student, max_len=max_len, batch=B, num_kv_heads=H_kv, d_head=d)
    for step in range(6):                                                      # 24 positions held
        _, _, story, _ = append(student, cache, random_values(step, (B, H_kv, 4, d)),
                                random_values(50 + step, (B, H_kv, 4, d)), story)
    _, _, story, outcome = append(student, cache, random_values(99, (B, H_kv, 1, d)),
                                  random_values(98, (B, H_kv, 1, d)), story, trace=True)
    chunk = B * H_kv * 1 * d
    if outcome.largest_tensor is None:
        raise CheckFailed("contract", f"{story}\n  the grader could not watch this call's tensors")
    if outcome.largest_tensor > 4 * chunk:
        raise CheckFailed("kv-cache", f"{story}\n  allocated a new tensor of {outcome.largest_tensor:,} numbers to append "
                          f"{chunk} (one position); write into the buffers made in __init__, in place")


@st.composite
def decoding_inputs(draw):
    """Self-attention inputs for token-by-token decoding: multi-head, grouped or multi-query heads."""
    num_heads = draw(st.sampled_from([1, 2, 4, 6]))
    num_kv_heads = draw(st.sampled_from([k for k in range(1, num_heads + 1) if num_heads % k == 0]))
    L = draw(st.integers(1, course_config.MAX_SEQ_LEN))
    return multi_head_case(draw(st.integers(1, course_config.MAX_BATCH)), L, L, num_heads, draw(st.integers(1, 3)),
                           num_kv_heads, cross=False, seed=draw(st.integers(0, 2**31 - 1)))


@check("decode_step_matches_causal_attention", NOTEBOOK, points=5, grades=("KVCache", "decode_step"),
       shown_by="test_kv_cache")
def decode_step_matches_causal_attention(student):
    @GRADING
    @given(case=decoding_inputs())
    @example(case=multi_head_case(2, 5, 5, num_heads=4, d_head=2, num_kv_heads=2, cross=False))
    @example(case=multi_head_case(1, 4, 4, num_heads=3, d_head=2, num_kv_heads=1, cross=False))   # multi-query
    @example(case=multi_head_case(2, 3, 3, num_heads=2, d_head=3, cross=False))
    def agrees(case):
        B, L, d_model = case.x.shape
        cache, story = new_cache(student, max_len=L, batch=B, num_kv_heads=case.kv_heads,
                                 d_head=d_model // case.num_heads)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        (expected, tol), _ = expected_multi_head(case, mask=causal)
        for t in range(L):
            story += (f"\ndecode_step(x[:, {t}:{t + 1}], cache, W_q, W_k, W_v, W_o, num_heads={case.num_heads}, "
                      f"num_kv_heads={case.kv_heads})")
            outcome = student.call("decode_step", case.x[:, t:t + 1], cache, *case.args()[2:],
                                   num_heads=case.num_heads, num_kv_heads=case.num_kv_heads)
            expect_no_error(outcome, story)
            step = expect_tensor(outcome.value, "output", story)
            expect_close(step, expected[:, t:t + 1], tol,
                         f"output (row {t} of causal multi_head_attention on x{list(case.x.shape)})",
                         story + f"\n  ({case.describe()})")
        expect_length(student, cache, L, story)

    agrees()


# --- Part G: the systems lab (what is deterministic: exponents of given data, the table, its memory) ---
@st.composite
def power_laws(draw):
    """(xs, ys, description): y = c * x^k at distinct positive x, maybe with seeded multiplicative noise."""
    n = draw(st.integers(2, 8))
    xs = sorted(draw(st.lists(st.integers(1, 4096), min_size=n, max_size=n, unique=True)))
    c = draw(st.floats(1e-6, 1e3))
    k = draw(st.floats(-3.0, 3.0))
    noise = draw(st.sampled_from([0.0, 0.05]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    ys = [float(c * x**k * np.exp(noise * rng.standard_normal())) for x in xs]
    return xs, ys, f"y = {c:.4g} * x^{k:.4g}" + (" with 5% noise" if noise else "")


def reference_exponent(xs, ys):
    return float(np.polyfit(np.log(np.asarray(xs, dtype=np.float64)), np.log(np.asarray(ys, dtype=np.float64)), 1)[0])


@check("fit_exponent_on_power_laws", NOTEBOOK, points=2, grades="fit_exponent",
       shown_by="test_profile_attention")
def fit_exponent_on_power_laws(student):
    @GRADING
    @given(law=power_laws())
    @example(law=([1, 2, 4, 8], [3.0, 12.0, 48.0, 192.0], "y = 3 * x^2"))
    @example(law=([64, 128, 256, 512], [1e-4, 1e-4, 1e-4, 1e-4], "a constant: exponent 0"))
    @example(law=([10, 1000], [2.0, 0.02], "y = 20 * x^-1, two points"))
    def agrees(law):
        xs, ys, what_law = law
        call_text = f"fit_exponent({xs}, {[round(y, 6) for y in ys]})  ({what_law})"
        outcome = student.call("fit_exponent", xs, ys)
        expect_no_error(outcome, call_text)
        expected = reference_exponent(xs, ys)
        if type(outcome.value) not in (int, float) or not math.isclose(outcome.value, expected, rel_tol=1e-4,
                                                                       abs_tol=1e-6):  # float32 fits are fine
            raise CheckFailed("memory-grows-as-expected", f"{call_text}\n  returned {outcome.value!r}; the least-squares slope of (ln x, ln y) "
                              f"is {expected:.6g}, as a Python float")

    agrees()


LAB_SEQ_LENS = (32, 64, 128)
LAB_D_K = 16
# The profiler measures implementations the grader makes (in the worker: Allocates), whose allocations
# the grader knows and the student's code cannot: a typed-in table cannot match them, and the lab's
# points do not hang on Parts D and E.
LAB_IMPLEMENTATIONS = {
    "grows as 3 L^1.5": Allocates(3.0, 1.5),
    "linear, 5 L + 7": Allocates(5.0, 1.0, 7),
    "L d (one [L, d_k] copy)": Allocates(1.0, 1.0, per_feature=True),  # a profiler that ignores d_k misses it
    "a constant 250": Allocates(0.0, 0.0, 250),
}


@check("profile_table_and_memory_column", NOTEBOOK, points=4, grades="profile_attention",
       shown_by="test_profile_attention")
def profile_table_and_memory_column(student):
    """one row per implementation and length, in order; the memory column is what each call allocated"""
    names = ", ".join(f"{name!r}: f(Q, K, V) making {rule}" for name, rule in (
        ("grows as 3 L^1.5", "round(3 L^1.5) numbers"), ("linear, 5 L + 7", "5 L + 7"),
        ("L d (one [L, d_k] copy)", "L * d_k"), ("a constant 250", "250")))
    call_text = f"profile_attention({{{names}}}, seq_lens={LAB_SEQ_LENS}, d_k={LAB_D_K}, repeats=1)"
    outcome = student.call("profile_attention", LAB_IMPLEMENTATIONS, LAB_SEQ_LENS, d_k=LAB_D_K, repeats=1,
                           timeout=course_config.EXPERIMENT_CALL_TIMEOUT_S)
    expect_no_error(outcome, call_text)
    rows = outcome.value
    expected_keys = [(name, L) for name in LAB_IMPLEMENTATIONS for L in LAB_SEQ_LENS]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CheckFailed("experiment-complete", f"{call_text}\n  returned {what(rows)}; expected a list of dicts, one per (name, L)")
    got_keys = [(r.get("name"), r.get("seq_len")) for r in rows]
    if got_keys != expected_keys:
        raise CheckFailed("experiment-complete", f"{call_text}\n  returned rows for {got_keys}; expected one per implementation and length, "
                          f"in order: {expected_keys}")
    for row in rows:
        seconds, peak = row.get("seconds"), row.get("peak_elements")
        if not isinstance(seconds, float) or not seconds > 0 or not math.isfinite(seconds) or type(peak) is not int:
            raise CheckFailed("contract", f"{call_text}\n  row {row}: seconds must be a positive float (a Python float, not a "
                              f"tensor) and peak_elements an int")
        made = LAB_IMPLEMENTATIONS[row["name"]].numbers(row["seq_len"], LAB_D_K)
        if peak != made:
            raise CheckFailed("contract", f"{call_text}\n  row {row}: one call of {row['name']!r} at L = {row['seq_len']} "
                              f"creates a tensor of {made:,} numbers, and the table says {peak:,}: measure each "
                              f"call with largest_new_tensor")


# --- GPU-tagged: pending without CUDA (autograder/checks/__init__.run_check), graded on a CUDA host ------
CUDA_DTYPES = [torch.float32, torch.float16]


def cuda_case(case, dtype):
    """The same case in `dtype` (the reference is computed from the rounded values)."""
    cast = {name: getattr(case, name).to(dtype) for name in ("Q", "K", "V")}
    mask = case.mask if case.mask is None or case.mask.dtype == torch.bool else case.mask.to(dtype)
    return type(case)(**cast, mask=mask, scale=case.scale, seed=case.seed)


@check("cuda_tiled_attention_matches", NOTEBOOK, points=2, grades="tiled_attention",
       shown_by="test_on_gpu", gpu=True)
def cuda_tiled_attention_matches(student):
    @GRADING
    @given(case_and_block=tiled_inputs(), dtype=st.sampled_from(CUDA_DTYPES))
    @example(case_and_block=(fixed_case((2, 3, 40, 8), (2, 3, 40, 8), (2, 3, 40, 8)), 16), dtype=torch.float32)
    def agrees_on_cuda(case_and_block, dtype):
        case, block_size = case_and_block
        case = cuda_case(case, dtype)
        call_text = tiled_call_text(case, block_size) + " on CUDA"
        outcome = student.call("tiled_attention", case.Q, case.K, case.V, mask=case.mask, scale=case.scale,
                               block_size=block_size, tensor_device=attention_on_cuda.GPU_DEVICE)
        device_hint(outcome, call_text)
        expect_no_error(outcome, call_text)
        output = expect_tensor(outcome.value, "output", call_text)
        expect_on_cuda(output, "output", call_text)
        (expected, tolerance), _ = expected_for(case)  # in the case's dtype
        expect_close(output, expected, tolerance, "output", call_text)

    agrees_on_cuda()


@check("cuda_multi_head_attention_matches", NOTEBOOK, points=2, grades="multi_head_attention",
       shown_by="test_on_gpu", gpu=True)
def cuda_multi_head_attention_matches(student):
    L = 5
    causal = torch.ones(L, L, dtype=torch.bool).tril()

    @GRADING
    @given(case=multi_head_inputs(grouped=True))
    @example(case=multi_head_case(2, L, L, num_heads=4, d_head=2, num_kv_heads=2, cross=False, mask=causal))
    @example(case=multi_head_case(2, 3, 6, num_heads=2, d_head=4))
    def agrees_on_cuda(case):
        call_text = case.describe() + " on CUDA"
        outcome = student.call("multi_head_attention", *case.args(), tensor_device=attention_on_cuda.GPU_DEVICE,
                               **case.kwargs())
        device_hint(outcome, call_text)
        output, weights = expect_pair(outcome, call_text)
        for name, value in (("output", output), ("weights", weights)):
            expect_on_cuda(value, name, call_text)
        (ref_out, out_tol), (ref_weights, weights_tol) = expected_multi_head(case)
        expect_close(weights, ref_weights, weights_tol, "weights", call_text)
        expect_close(output, ref_out, out_tol, "output", call_text)

    agrees_on_cuda()
