"""The float64 reference and the tolerances, in the style of PyTorch's test_transformers.py.

Trusted code. Written independently of the solution notebook: checks compare a
student's result with `reference_attention` computed in float64 on the very
same (rounded) input values.
"""
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


# PyTorch's defaults for comparing SDPA outputs against a float64 reference.
DEFAULT_TOLERANCES = {
    torch.float64: Tolerance(rtol=1e-7, atol=1e-7),
    torch.float32: Tolerance(rtol=1.3e-6, atol=1e-5),
    torch.float16: Tolerance(rtol=1e-3, atol=1e-3),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=1e-3),
}
# As in PyTorch's get_tolerances(): the allowed error also grows with how far a
# plain low-precision computation of the same case strays from float64.
FUDGE_FACTOR = 5


def reference_attention(Q, K, V, mask=None, scale=True):
    """Scaled dot-product attention with the course's rules, in the inputs' dtype.

    Fully masked rows get weights and output of exactly 0; S = 0 gives zeros.
    """
    d_k = Q.shape[-1]
    scores = torch.matmul(Q, K.transpose(-1, -2))  # [..., L, S]
    if scale:
        scores = scores * (1.0 / math.sqrt(d_k))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    if scores.shape[-1] == 0:
        weights = scores
    else:
        blocked_row = torch.isneginf(scores).all(dim=-1, keepdim=True)  # [..., L, 1]
        safe = torch.where(blocked_row, torch.zeros_like(scores), scores)
        weights = torch.softmax(safe, dim=-1) * (~blocked_row)
    return torch.matmul(weights, V), weights


def reference_with_grads(Q, K, V, mask, scale, grad_output, grad_weights, dtype=torch.float64):
    """Reference output, weights and the gradients of sum(out*g_out)+sum(w*g_w) w.r.t. Q, K, V."""
    q, k, v = (t.detach().to(dtype).requires_grad_(True) for t in (Q, K, V))
    m = None if mask is None else (mask if mask.dtype == torch.bool else mask.to(dtype))
    out, weights = reference_attention(q, k, v, m, scale)
    loss = (out * grad_output.to(dtype)).sum() + (weights * grad_weights.to(dtype)).sum()
    grads = torch.autograd.grad(loss, (q, k, v), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip((q, k, v), grads)]
    return out.detach(), weights.detach(), [g.detach() for g in grads]


def tolerance_for(dtype, reference, low_precision=None):
    """The tolerance for comparing a `dtype` result with a float64 `reference`."""
    base = DEFAULT_TOLERANCES[dtype]
    if low_precision is None or reference.numel() == 0:
        return base
    deviation = (low_precision.to(torch.float64) - reference).abs()
    deviation = deviation[torch.isfinite(deviation)]
    worst = float(deviation.max()) if deviation.numel() else 0.0
    return Tolerance(rtol=base.rtol, atol=max(base.atol, FUDGE_FACTOR * worst))


def _in_float64(value):
    """A floating tensor in float64; anything else (a bool mask, None, a number) as it is."""
    return value.to(torch.float64) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def expected_results(reference, *args, dtype=torch.float32, **kwargs):
    """[(float64 result, its tolerance)] for each result of `reference(*args, **kwargs)`.

    The one helper for "the reference and the tolerance for this case": `reference` runs on the
    inputs in float64 (the expected values) and on the inputs as they are (a plain computation in
    their own precision, whose distance from float64 widens the tolerance, as PyTorch's
    get_tolerances does). `dtype` is the precision the student's result is compared in."""
    high = reference(*map(_in_float64, args), **{k: _in_float64(v) for k, v in kwargs.items()})
    low = reference(*args, **kwargs)
    return [(h, tolerance_for(dtype, h, l)) for h, l in zip(high, low)]


# ---------------------------------------------------------------------------
# Notebooks 2 and 3
# ---------------------------------------------------------------------------
def reference_pattern_statistics(weights, window=1):
    """The statistics of analyze_attention_patterns() for [..., L, L] weights, in float64."""
    w = weights.to(torch.float64)
    L = w.shape[-1]
    distance = (torch.arange(L).unsqueeze(-1) - torch.arange(L).unsqueeze(0)).abs()  # [L, L]
    rows = w.reshape(-1, L)  # [rows, L]
    live = rows.sum(-1) > 0  # fully masked rows (all 0) are left out of the entropy
    entropy = -torch.special.xlogy(rows, rows).sum(-1)  # 0 ln 0 = 0
    total = float(w.sum())
    near, far = float(w[..., distance <= window].sum()), float(w[..., distance > window].sum())
    return {
        "max_attention": float(w.max()),
        "entropy": float(entropy[live].mean()) if live.any() else 0.0,
        "diagonal_mass": float(w.diagonal(dim1=-2, dim2=-1).sum()) / total if total > 0 else 0.0,
        "local_vs_global": near / far if far > 0 else float("inf"),
    }


def scaling_statistics(d_k, scaled, seq_len, num_samples, seed):
    """One row of the scaling experiment, as Notebook 3 defines it, for random Q, K ~ N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    Q = torch.randn(num_samples, seq_len, d_k, generator=generator, dtype=torch.float64)
    K = torch.randn(num_samples, seq_len, d_k, generator=generator, dtype=torch.float64)
    upstream = torch.randn(num_samples, seq_len, seq_len, generator=generator, dtype=torch.float64)
    scores = Q @ K.transpose(-2, -1)  # [n, L, L]
    if scaled:
        scores = scores / math.sqrt(d_k)
    scores.requires_grad_(True)
    weights = torch.softmax(scores, dim=-1)
    (weights * upstream).sum().backward()
    weights = weights.detach()
    return {"max_weight": float(weights.max(dim=-1).values.mean()),
            "entropy": float(-torch.special.xlogy(weights, weights).sum(-1).mean()),
            "grad_magnitude": float(scores.grad.abs().mean())}


# ---------------------------------------------------------------------------
# Notebook 4
# ---------------------------------------------------------------------------
def reference_multi_head_attention(x, context, W_q, W_k, W_v, W_o, num_heads, num_kv_heads=None, mask=None):
    """Multi-head attention in the inputs' dtype by the design's rules: each group of
    num_heads // num_kv_heads consecutive query heads uses one key/value head (expanded in place)."""
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    B, L, d_model = x.shape
    S, d_head = context.shape[1], d_model // num_heads
    q = (x @ W_q).reshape(B, L, num_heads, d_head).transpose(1, 2)          # [B, H, L, d]
    k = (context @ W_k).reshape(B, S, num_kv_heads, d_head).transpose(1, 2)  # [B, H_kv, S, d]
    v = (context @ W_v).reshape(B, S, num_kv_heads, d_head).transpose(1, 2)
    group = num_heads // num_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out, weights = reference_attention(q, k, v, mask, True)                 # [B, H, L, d], [B, H, L, S]
    return out.transpose(1, 2).reshape(B, L, d_model) @ W_o, weights


def torch_multi_head_attention(x, context, W_q, W_k, W_v, W_o, num_heads):
    """PyTorch's own torch.nn.MultiheadAttention (no bias) with the same weights, in float64."""
    d_model = x.shape[-1]
    module = torch.nn.MultiheadAttention(d_model, num_heads, bias=False, batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # PyTorch computes x @ W.T: its weights are ours transposed
        module.in_proj_weight.copy_(torch.cat([W_q.T, W_k.T, W_v.T]).to(torch.float64))
        module.out_proj.weight.copy_(W_o.T.to(torch.float64))
        c = context.to(torch.float64)
        out, weights = module(x.to(torch.float64), c, c, need_weights=True, average_attn_weights=False)
    return out, weights
