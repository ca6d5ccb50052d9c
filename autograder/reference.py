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
