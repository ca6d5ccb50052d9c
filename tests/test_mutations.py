"""Mutation suite: plausible student bugs must lose points; correct-but-different code must not.

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

LOOP_ATTENTION = '''
def attention(Q, K, V, mask=None, scale=True):
    """Plain Python loops over every batch item and every query row."""
    check_attention_inputs(Q, K, V, mask)
    batch = torch.broadcast_shapes(Q.shape[:-2], K.shape[:-2], V.shape[:-2])
    L, S, d_k, d_v = Q.shape[-2], K.shape[-2], Q.shape[-1], V.shape[-1]
    n = math.prod(batch)
    qs = Q.expand(*batch, L, d_k).reshape(n, L, d_k)
    ks = K.expand(*batch, S, d_k).reshape(n, S, d_k)
    vs = V.expand(*batch, S, d_v).reshape(n, S, d_v)
    if mask is None:
        ms = torch.zeros(qs.shape[0], L, S, dtype=Q.dtype)
    elif mask.dtype == torch.bool:
        ms = torch.zeros(mask.shape, dtype=Q.dtype).masked_fill(~mask, NEG_INF).expand(*batch, L, S).reshape(n, L, S)
    else:
        ms = mask.to(Q.dtype).expand(*batch, L, S).reshape(n, L, S)
    outputs, all_weights = [], []
    for b in range(qs.shape[0]):
        rows_out, rows_w = [], []
        for i in range(L):
            row = torch.stack([(qs[b, i] * ks[b, j]).sum() for j in range(S)]) if S else qs.new_zeros(0)
            if scale:
                row = row / math.sqrt(d_k)
            row = row + ms[b, i]
            if S and torch.isfinite(row).any():
                w = torch.exp(row - row.max().detach())
                w = w / w.sum()
            else:
                w = torch.zeros_like(row)
            rows_w.append(w)
            rows_out.append((w.unsqueeze(-1) * vs[b]).sum(0) if S else vs.new_zeros(d_v))
        outputs.append(torch.stack(rows_out) if L else Q.new_zeros(0, d_v))
        all_weights.append(torch.stack(rows_w) if L else Q.new_zeros(0, S))
    output = torch.stack(outputs).reshape(*batch, L, d_v) if outputs else Q.new_zeros(*batch, L, d_v)
    weights = torch.stack(all_weights).reshape(*batch, L, S) if all_weights else Q.new_zeros(*batch, L, S)
    return output, weights
'''

CORRECT_VARIANTS = {
    "einsum scores": rewrite("compute_scores", (
        "def compute_scores(Q, K, scale=True):\n"
        "    scores = torch.einsum('...ld,...sd->...ls', Q, K)\n"
        "    return scores * (Q.shape[-1] ** -0.5) if scale else scores")),
    "float64 inside, cast back": rewrite("attention", (
        "def attention(Q, K, V, mask=None, scale=True):\n"
        "    check_attention_inputs(Q, K, V, mask)\n"
        "    q, k, v = Q.double(), K.double(), V.double()\n"
        "    m = mask if mask is None or mask.dtype == torch.bool else mask.double()\n"
        "    weights = masked_softmax(apply_mask(compute_scores(q, k, scale), m))\n"
        "    return (weights @ v).to(Q.dtype), weights.to(Q.dtype)")),
    "torch.softmax with a zeroed fully masked row": rewrite("masked_softmax", (
        "def masked_softmax(scores):\n"
        "    if scores.shape[-1] == 0:\n        return scores\n"
        "    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)\n"
        "    safe = scores.masked_fill(dead, 0.0)\n"
        "    return torch.softmax(safe, dim=-1).masked_fill(dead, 0.0)")),
    "log-sum-exp softmax": rewrite("masked_softmax", (
        "def masked_softmax(scores):\n"
        "    if scores.shape[-1] == 0:\n        return scores\n"
        "    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)\n"
        "    safe = scores.masked_fill(dead, 0.0)\n"
        "    lse = torch.logsumexp(safe, dim=-1, keepdim=True)\n"
        "    return torch.exp(safe - lse).masked_fill(dead, 0.0)")),
    "bool mask turned into an additive mask": rewrite("apply_mask", (
        "def apply_mask(scores, mask):\n"
        "    if mask is None:\n        return scores\n"
        "    if mask.dtype == torch.bool:\n"
        "        mask = torch.zeros(mask.shape, dtype=scores.dtype).masked_fill(~mask, NEG_INF)\n"
        "    return scores + mask.to(scores.dtype)")),
    "Python loops over rows": rewrite("attention", LOOP_ATTENTION),
}


def graded(change):
    return student_notebook(change(reference_answers()))


@pytest.fixture(scope="module")
def full_marks():
    """Full marks on this host: GPU checks count only where CUDA is available."""
    return sum(decidable_points().values())


def undecided(verdicts):
    """Checks left pending that should have been decided here (GPU checks may wait for CUDA)."""
    return [c for c, v in verdicts.items() if v.status == "pending" and c in decidable_points()]


def test_reference_answers_get_full_marks(full_marks):
    verdicts = grade_checks(student_notebook(reference_answers()))
    assert {c: v.status for c, v in verdicts.items() if v.status != "passed" and c in decidable_points()} == {}
    assert undecided(verdicts) == []
    assert score(verdicts) == full_marks


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_loses_points(mutant, full_marks):
    verdicts = grade_checks(graded(MUTANTS[mutant]))
    failed = {c: v.message.splitlines()[0] for c, v in verdicts.items() if v.status == "failed"}
    assert undecided(verdicts) == [], "a check could not decide"
    assert score(verdicts) < full_marks, f"{mutant!r} kept full marks"
    print(f"{mutant}: {score(verdicts):.0f}/{full_marks:.0f}, failed {sorted(failed)}")


@pytest.mark.parametrize("variant", sorted(CORRECT_VARIANTS))
def test_correct_variant_gets_full_marks(variant, full_marks):
    verdicts = grade_checks(graded(CORRECT_VARIANTS[variant]))
    lost = {c: v.message for c, v in verdicts.items() if v.status != "passed" and c in decidable_points()}
    assert lost == {}, f"{variant!r} lost points:\n" + "\n".join(f"{c}: {m}" for c, m in lost.items())
    assert score(verdicts) == full_marks


def test_there_are_enough_cases():
    assert len(MUTANTS) >= 30 and len(CORRECT_VARIANTS) >= 5
