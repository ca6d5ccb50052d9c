"""Fairness: correct implementations written differently get full marks.

Graded through the same path as test_mutations.py: einsum instead of matmul, float64 inside and
cast back, hand-written softmax variants, an additive version of the bool mask, Python loops.
"""
import pytest

from tests.grading import decidable_points, grade_checks, rewrite, score
from tests.students import reference_answers, student_notebook
from tests.test_mutations import full_marks, graded, undecided  # noqa: F401 - full_marks is a fixture

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


def test_reference_answers_get_full_marks(full_marks):
    verdicts = grade_checks(student_notebook(reference_answers()))
    assert {c: v.status for c, v in verdicts.items() if v.status != "passed" and c in decidable_points()} == {}
    assert undecided(verdicts) == []
    assert score(verdicts) == full_marks


@pytest.mark.parametrize("variant", sorted(CORRECT_VARIANTS))
def test_correct_variant_gets_full_marks(variant, full_marks):
    verdicts = grade_checks(graded(CORRECT_VARIANTS[variant]))
    lost = {c: v.message for c, v in verdicts.items() if v.status != "passed" and c in decidable_points()}
    assert lost == {}, f"{variant!r} lost points:\n" + "\n".join(f"{c}: {m}" for c, m in lost.items())
    assert score(verdicts) == full_marks


def test_there_are_enough_variants():
    assert len(CORRECT_VARIANTS) >= 5
