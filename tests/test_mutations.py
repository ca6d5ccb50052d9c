"""Mutation suite: plausible student bugs must lose points (correct-but-different code: test_fairness.py).

Each case is a student notebook made from the release version, graded through
the same path as `make autograde` uses for hidden checks (sandboxed worker,
trusted checks). The kill rate is printed at the end of the run.
"""
import pytest

from tests.grading import decidable_points, grade_checks, regex_in, replace_in, rewrite, score
from tests.students import reference_answers, student_notebook

SCALE = "scores = scores / math.sqrt(Q.shape[-1])"

MUTANTS = {
    # step 2: scores and scale
    "no scale": replace_in("compute_scores", SCALE, "scores = scores"),
    "scale by d_k instead of sqrt(d_k)": replace_in("compute_scores", "math.sqrt(Q.shape[-1])", "Q.shape[-1]"),
    "scale flag ignored": replace_in("compute_scores", "if scale:", "if True:"),
    "scale applied twice": replace_in("compute_scores", SCALE, SCALE + " / math.sqrt(Q.shape[-1])"),
    "scale by sqrt(d_v)": replace_in("attention", "scores = compute_scores(Q, K, scale)",
                                     "scores = compute_scores(Q, K, False) / (math.sqrt(V.shape[-1]) if scale else 1)"),
    "transpose of the wrong dims": replace_in("compute_scores", "K.transpose(-2, -1)", "K.transpose(0, 1)"),
    "K @ Q^T (scores transposed)": replace_in("compute_scores", "Q @ K.transpose(-2, -1)", "K @ Q.transpose(-2, -1)"),
    # step 3: masks
    "blocked filled with 0": replace_in("apply_mask", "masked_fill(~mask, NEG_INF)", "masked_fill(~mask, 0.0)"),
    "bool mask inverted": replace_in("apply_mask", "masked_fill(~mask, NEG_INF)", "masked_fill(mask, NEG_INF)"),
    "blocked filled with -1e9": replace_in("apply_mask", "masked_fill(~mask, NEG_INF)", "masked_fill(~mask, -1e9)"),
    "float mask multiplied": replace_in("apply_mask", "scores + mask.to(scores.dtype)", "scores * mask.to(scores.dtype)"),
    "float mask ignored": replace_in("apply_mask", "return scores + mask.to(scores.dtype)", "return scores"),
    "float mask read as keep/block": replace_in("apply_mask", "return scores + mask.to(scores.dtype)",
                                                "return scores.masked_fill(mask == 0, NEG_INF)"),
    "key padding applied to queries": replace_in("apply_mask", "masked_fill(~mask, NEG_INF)",
                                                 "masked_fill(~mask.unsqueeze(-1), NEG_INF)"),
    # step 4: softmax
    "softmax over queries": replace_in("masked_softmax", "dim=-1", "dim=-2", count=None),
    "no max subtraction": replace_in("masked_softmax", "torch.exp(scores - row_max)", "torch.exp(scores)"),
    "fully masked rows give NaN": regex_in("masked_softmax", r"\n    row_max = torch\.where\(.*\n", "\n"),
    "softmax then nan_to_num (NaN gradients)": rewrite("masked_softmax", (
        "def masked_softmax(scores):\n    return torch.softmax(scores, dim=-1).nan_to_num(0.0)")),
    "not normalised": replace_in("masked_softmax", "return exp / torch.where(total > 0, total, torch.ones_like(total))",
                                 "return exp"),
    "S = 0 crashes": replace_in("masked_softmax", "if scores.shape[-1] == 0:", "if False:"),
    "fully masked rows uniform": replace_in("masked_softmax", "torch.where(total > 0, total, torch.ones_like(total))",
                                            "total"),
    # step 5: attention
    "weights detached": replace_in("attention", "output = weights @ V", "output = weights.detach() @ V"),
    "through numpy (no gradients)": replace_in("attention", "output = weights @ V", (
        "output = torch.from_numpy(weights.detach().numpy() @ V.detach().numpy())")),
    "outputs cast to float32": replace_in("attention", "return output, weights",
                                          "return output.float(), weights.float()"),
    "returns only the output": replace_in("attention", "return output, weights", "return output"),
    "returns (weights, output)": replace_in("attention", "return output, weights", "return weights, output"),
    "scales Q in place": rewrite("compute_scores", (
        "def compute_scores(Q, K, scale=True):\n"
        "    if scale:\n        Q.data.div_(math.sqrt(Q.shape[-1]))\n"
        "    return Q @ K.transpose(-2, -1)")),
    "output from unmasked weights": replace_in("attention", "output = weights @ V",
                                               "output = torch.softmax(compute_scores(Q, K, scale), dim=-1) @ V"),
    # step 1: validation
    "no validation at all": replace_in("attention", "check_attention_inputs(Q, K, V, mask)", "pass"),
    "RuntimeError instead of ValueError": replace_in("check_attention_inputs", "raise ValueError(", "raise RuntimeError(",
                                                     count=None),
    "messages without shapes": regex_in("check_attention_inputs", r"; got \{shapes\}", ""),
    "mask dtype not checked": replace_in("check_attention_inputs",
                                         "if mask.dtype != torch.bool and not mask.dtype.is_floating_point:",
                                         "if False:"),
    "mask shape not checked": replace_in("check_attention_inputs", "if not fits:", "if False:"),
    "d_k = 0 allowed": replace_in("check_attention_inputs", "if d_k == 0:", "if False:"),
    # step 6: masks
    "causal mask blocks the diagonal": replace_in("create_causal_mask", "triu(diagonal=1)", "triu(diagonal=0)"),
    "causal mask is the reverse one": replace_in("create_causal_mask", "triu(diagonal=1)", "tril(diagonal=-1)"),
    "causal mask ignores device": replace_in("create_causal_mask", "torch.zeros(seq_len, seq_len, device=device)",
                                             "torch.zeros(seq_len, seq_len)"),
    "causal mask is bool": replace_in("create_causal_mask",
                                      "return torch.zeros(seq_len, seq_len, device=device).masked_fill(future, NEG_INF)",
                                      "return ~future"),
    "causal mask in float64": replace_in("create_causal_mask", "torch.zeros(seq_len, seq_len, device=device)",
                                         "torch.zeros(seq_len, seq_len, device=device, dtype=torch.float64)"),
    "reverse mask off by one": replace_in("create_reverse_mask", "tril(diagonal=-1)", "tril(diagonal=0)"),
    # cheating
    "calls F.scaled_dot_product_attention": replace_in("attention", "output = weights @ V", (
        "output = torch.nn.functional.scaled_dot_product_attention(Q, K, V, attn_mask=mask, "
        "scale=None if scale else 1.0)")),
    "fused attention through getattr": replace_in("attention", "output = weights @ V", (
        "output = getattr(torch.nn.functional, 'scaled_dot' + '_product_attention')(Q, K, V, "
        "attn_mask=mask, scale=None if scale else 1.0)")),
    "fused attention through an obfuscated name": replace_in("attention", "output = weights @ V", (
        "output = getattr(torch.nn.functional, ''.join(reversed('noitnetta_tcudorp_tod_delacs')))"
        "(Q, K, V, attn_mask=mask if mask is None or mask.dim() > 1 else mask.expand(Q.shape[-2], -1), "
        "scale=None if scale else 1.0)")),
}

def graded(change):
    """A student notebook: the reference answers with `change` applied."""
    return student_notebook(change(reference_answers()))


@pytest.fixture(scope="module")
def full_marks():
    """Full marks on this host: GPU checks count only where CUDA is available."""
    return sum(decidable_points().values())


def undecided(verdicts):
    """Checks left pending that should have been decided here (GPU checks may wait for CUDA)."""
    return [c for c, v in verdicts.items() if v.status == "pending" and c in decidable_points()]


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_loses_points(mutant, full_marks):
    verdicts = grade_checks(graded(MUTANTS[mutant]))
    failed = {c: v.message.splitlines()[0] for c, v in verdicts.items() if v.status == "failed"}
    assert undecided(verdicts) == [], "a check could not decide"
    assert score(verdicts) < full_marks, f"{mutant!r} kept full marks"
    print(f"{mutant}: {score(verdicts):.0f}/{full_marks:.0f}, failed {sorted(failed)}")


def test_there_are_enough_mutants():
    assert len(MUTANTS) >= 30
