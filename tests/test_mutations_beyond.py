"""Notebook 4 (the bonus, beyond one head): the solution passes every hidden check in the sandbox;
plausible bugs lose points; correct-but-different code keeps them.

Each case changes one graded cell of the reference answers and is graded on the hidden
checks of that cell through the sandboxed worker (tests/mutation_helpers.py).
"""
import pytest

from tests.grading import check_points, grade_checks, replace_in, rewrite
from tests.mutation_helpers import expect_full_marks, expect_points_lost
from tests.students import NB4, reference_answers, student_notebook

MHA_CHECKS = ["multi_head_attention_matches_torch", "grouped_query_attention", "multi_head_attention_masks",
              "multi_head_attention_rejects_bad_inputs"]
CHECKS = {
    "split_merge_heads": ["split_merge_heads"],
    "multi_head_attention": MHA_CHECKS,
    "attention_with_dropout": ["dropout_off_is_attention", "dropout_scales_survivors",
                               "dropout_is_seeded_and_checks_p"],
}
# attention() pasted from Notebook 1 is graded through the functions built on it.
CHECKS["attention_from_notebook_1"] = MHA_CHECKS + CHECKS["attention_with_dropout"]

MUTANTS = {
    # split_heads / merge_heads
    "heads split by reshape without transpose": ("split_merge_heads", replace_in(
        "split_merge_heads", "x.view(B, L, num_heads, width // num_heads).transpose(1, 2)",
        "x.reshape(B, num_heads, L, width // num_heads)")),
    "heads merged by reshape without transpose": ("split_merge_heads", replace_in(
        "split_merge_heads", "x.transpose(1, 2).reshape(B, L, H * d)", "x.reshape(B, L, H * d)")),
    "features dealt out to heads in turn": ("split_merge_heads", replace_in(
        "split_merge_heads", "x.view(B, L, num_heads, width // num_heads).transpose(1, 2)",
        "x.view(B, L, width // num_heads, num_heads).permute(0, 3, 1, 2)")),
    "no ValueError for a width that does not divide": ("split_merge_heads", replace_in(
        "split_merge_heads", "if num_heads <= 0 or width % num_heads != 0:", "if num_heads <= 0:")),
    # multi_head_attention
    "queries split by reshape without transpose": ("multi_head_attention", replace_in(
        "multi_head_attention", "Q = split_heads(x @ W_q, num_heads)",
        "Q = (x @ W_q).reshape(B, num_heads, L, d_head)")),
    "GQA groups built with repeat, not repeat_interleave": ("multi_head_attention", replace_in(
        "multi_head_attention", "K.repeat_interleave(group, dim=1), V.repeat_interleave(group, dim=1)",
        "K.repeat(1, group, 1, 1), V.repeat(1, group, 1, 1)")),
    "W_o skipped": ("multi_head_attention", replace_in(
        "multi_head_attention", "return merge_heads(out) @ W_o, weights", "return merge_heads(out), weights")),
    "scaled by sqrt(d_model), not sqrt(d_head)": ("multi_head_attention", replace_in(
        "multi_head_attention", "out, weights = attention(Q, K, V, mask=mask)",
        "out, weights = attention(Q * math.sqrt(d_head / d_model), K, V, mask=mask)")),
    "mask ignored": ("multi_head_attention", replace_in(
        "multi_head_attention", "out, weights = attention(Q, K, V, mask=mask)",
        "out, weights = attention(Q, K, V)")),
    "keys from x, not from the context": ("multi_head_attention", replace_in(
        "multi_head_attention", "K = split_heads(context @ W_k, num_kv_heads)", "K = split_heads(x @ W_k, num_kv_heads)")),
    # attention_with_dropout
    "dropout without the 1/(1-p) rescale": ("attention_with_dropout", replace_in(
        "attention_with_dropout", "weights = weights * keep / (1.0 - p)", "weights = weights * keep")),
    "dropout in eval too": ("attention_with_dropout", replace_in(
        "attention_with_dropout", "if not training or p == 0.0:", "if p == 0.0:")),
    "keeps with probability p, not 1 - p": ("attention_with_dropout", replace_in(
        "attention_with_dropout", ">= p   #", "< p   #")),
    "output from the weights before dropout": ("attention_with_dropout", replace_in(
        "attention_with_dropout", "return weights @ V, weights", "return out, weights")),
    "generator ignored": ("attention_with_dropout", replace_in(
        "attention_with_dropout", "generator=generator, device", "device")),
    # attention() pasted from Notebook 1
    "pasted attention() forgets the scale": ("attention_from_notebook_1", replace_in(
        "attention_from_notebook_1", "scores = scores / math.sqrt(Q.shape[-1])", "pass")),
}

EINSUM_MHA = '''
def multi_head_attention(x, context, W_q, W_k, W_v, W_o, num_heads, num_kv_heads=None, mask=None):
    """einsum for the projections and the heads; attention() on [B, H, L, d]."""
    num_kv_heads = num_kv_heads or num_heads
    B, L, d_model = x.shape
    if d_model % num_heads or num_heads % num_kv_heads:
        raise ValueError(f"x {list(x.shape)} cannot have {num_heads} heads and {num_kv_heads} kv heads")
    if context.shape[0] != B or context.shape[-1] != d_model:
        raise ValueError(f"context {list(context.shape)} does not fit x {list(x.shape)}")
    d = d_model // num_heads
    for W, cols in ((W_q, d_model), (W_k, num_kv_heads * d), (W_v, num_kv_heads * d), (W_o, d_model)):
        if tuple(W.shape) != (d_model, cols):
            raise ValueError(f"a weight of shape {list(W.shape)} should be {[d_model, cols]}")
    Q = torch.einsum("bld,dhe->bhle", x, W_q.view(d_model, num_heads, d))
    K = torch.einsum("bsd,dhe->bhse", context, W_k.view(d_model, num_kv_heads, d))
    V = torch.einsum("bsd,dhe->bhse", context, W_v.view(d_model, num_kv_heads, d))
    K = K[:, torch.arange(num_heads) // (num_heads // num_kv_heads)]
    V = V[:, torch.arange(num_heads) // (num_heads // num_kv_heads)]
    out, weights = attention(Q, K, V, mask=mask)
    return torch.einsum("bhle,hef->blf", out, W_o.view(num_heads, d, d_model)), weights
'''

HEAD_BY_HEAD_MHA = '''
def multi_head_attention(x, context, W_q, W_k, W_v, W_o, num_heads, num_kv_heads=None, mask=None):
    """One head at a time, in a loop, each with its own slice of the weights."""
    if num_kv_heads is None:
        num_kv_heads = num_heads
    B, L, d_model = x.shape
    if d_model % num_heads != 0 or num_heads % num_kv_heads != 0:
        raise ValueError(f"x {list(x.shape)}: {d_model} features, {num_heads} heads, {num_kv_heads} kv heads")
    if context.shape[0] != B or context.shape[2] != d_model:
        raise ValueError(f"context {list(context.shape)} and x {list(x.shape)} differ")
    d = d_model // num_heads
    if W_q.shape != (d_model, d_model) or W_o.shape != (d_model, d_model):
        raise ValueError(f"W_q {list(W_q.shape)} and W_o {list(W_o.shape)} must be [{d_model}, {d_model}]")
    if W_k.shape != (d_model, num_kv_heads * d) or W_v.shape != (d_model, num_kv_heads * d):
        raise ValueError(f"W_k {list(W_k.shape)} and W_v {list(W_v.shape)} must be [{d_model}, {num_kv_heads * d}]")
    if mask is not None:
        mask = mask.expand(*torch.broadcast_shapes(mask.shape, (B, num_heads, L, context.shape[1])))
    outputs, all_weights = [], []
    for h in range(num_heads):
        g = h // (num_heads // num_kv_heads)
        q = x @ W_q[:, h * d:(h + 1) * d]
        k = context @ W_k[:, g * d:(g + 1) * d]
        v = context @ W_v[:, g * d:(g + 1) * d]
        out, weights = attention(q, k, v, mask=None if mask is None else mask[:, h])
        outputs.append(out)
        all_weights.append(weights)
    return torch.cat(outputs, dim=-1) @ W_o, torch.stack(all_weights, dim=1)
'''

UNFLATTEN_HEADS = '''
def split_heads(x, num_heads):
    if x.shape[-1] % num_heads:
        raise ValueError(f"cannot split x of shape {tuple(x.shape)} into {num_heads} heads")
    return x.unflatten(-1, (num_heads, -1)).permute(0, 2, 1, 3)


def merge_heads(x):
    return x.permute(0, 2, 1, 3).flatten(2)
'''

BERNOULLI_DROPOUT = '''
def attention_with_dropout(Q, K, V, mask=None, scale=True, p=0.1, training=True, generator=None):
    """torch.bernoulli with the generator; the output recomputed from the kept weights."""
    if p < 0 or p > 1:
        raise ValueError(f"p must be a probability, got {p}")
    out, weights = attention(Q, K, V, mask=mask, scale=scale)
    if training and p > 0:
        keep = torch.bernoulli(torch.full_like(weights, 1 - p), generator=generator)
        weights = weights * keep / (1 - p) if p < 1 else weights * 0
        out = weights @ V
    return out, weights
'''

CORRECT_VARIANTS = {
    "einsum multi-head attention with gathered kv heads": ("multi_head_attention", rewrite(
        "multi_head_attention", EINSUM_MHA)),
    "a loop over heads": ("multi_head_attention", rewrite("multi_head_attention", HEAD_BY_HEAD_MHA)),
    "heads by unflatten and permute": ("split_merge_heads", rewrite("split_merge_heads", UNFLATTEN_HEADS)),
    "dropout by torch.bernoulli": ("attention_with_dropout", rewrite("attention_with_dropout", BERNOULLI_DROPOUT)),
}


def test_every_check_passes_on_the_reference_solution_in_the_sandbox():
    verdicts = grade_checks(student_notebook(reference_answers(NB4), name=NB4), NB4)
    assert set(verdicts) == set(check_points(NB4))
    assert {n: v.message for n, v in verdicts.items() if v.status != "passed"} == {}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_loses_points(mutant):
    cell, change = MUTANTS[mutant]
    expect_points_lost(NB4, CHECKS[cell], change, mutant)


@pytest.mark.parametrize("variant", sorted(CORRECT_VARIANTS))
def test_correct_variant_gets_full_marks(variant):
    cell, change = CORRECT_VARIANTS[variant]
    expect_full_marks(NB4, CHECKS[cell], change, variant)


def test_every_graded_function_has_four_mutants_and_its_checks_are_the_notebooks():
    assert sorted({c for checks in CHECKS.values() for c in checks}) == sorted(check_points(NB4))
    for cell in ("split_merge_heads", "multi_head_attention", "attention_with_dropout"):
        assert sum(c == cell for c, _ in MUTANTS.values()) >= 4, cell
