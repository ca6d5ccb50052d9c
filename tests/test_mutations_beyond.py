"""Notebook 4 (the bonus, beyond one head): the solution passes every hidden check in the sandbox;
plausible bugs lose points; correct-but-different code keeps them.

Each case changes one graded cell of the reference answers and is graded on the hidden
checks of that cell through the sandboxed worker (tests/mutation_helpers.py).
"""
import pytest

from tests.grading import (check_points, decidable_points, gpu_checks, grade_checks, public_test_failure, replace_in,
                           rewrite)
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
TILED_CHECKS = ["tiled_attention_matches_attention", "tiled_attention_edge_cases", "tiled_attention_stays_within_its_blocks"]
LOCAL_CHECKS = ["local_attention_matches_banded_attention", "local_attention_stays_within_its_band"]
CHECKS["tiled_attention"] = TILED_CHECKS
CHECKS["local_attention"] = LOCAL_CHECKS
CACHE_CHECKS = ["kv_cache_appends_and_counts", "kv_cache_overflow_keeps_the_cache", "kv_cache_allocates_once",
                "decode_step_matches_causal_attention"]
CHECKS["kv_cache"] = CACHE_CHECKS
CHECKS["decode_step"] = ["decode_step_matches_causal_attention"]
CHECKS["profile_attention"] = ["fit_exponent_on_power_laws", "profile_table_and_memory_column"]
# attention() pasted from Notebook 1 is graded through the functions built on it.
CHECKS["attention_from_notebook_1"] = MHA_CHECKS + CHECKS["attention_with_dropout"]

LENGTH_FIRST_PROFILE = '''
def fit_exponent(xs, ys):
    import numpy as np
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def profile_attention(implementations, seq_lens, d_k=64, repeats=5):
    """Loops nested the other way: every implementation at one length, then the next length."""
    rows = []
    for L in seq_lens:
        Q = torch.randn(1, L, d_k, generator=torch.Generator().manual_seed(0))
        for name, function in implementations.items():
            function(Q, Q, Q)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                function(Q, Q, Q)
                times.append(time.perf_counter() - start)
            rows.append({"name": name, "seq_len": L, "seconds": statistics.median(times),
                         "peak_elements": largest_new_tensor(function, Q, Q, Q)[1]})
    return rows
'''

NUMPY_PROFILE = '''
def fit_exponent(xs, ys):
    """numpy's polyfit on the logs."""
    import numpy as np
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def profile_attention(implementations, seq_lens, d_k=64, repeats=5):
    """timeit-style: sorted times, the middle one; memory measured before timing."""
    rows = []
    for name in implementations:
        for L in seq_lens:
            x = torch.randn(1, L, d_k, generator=torch.Generator().manual_seed(0))
            _, peak = largest_new_tensor(implementations[name], x, x, x)
            implementations[name](x, x, x)
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                implementations[name](x, x, x)
                samples.append(time.perf_counter() - t0)
            rows.append(dict(name=name, seq_len=L, seconds=float(sorted(samples)[len(samples) // 2]), peak_elements=int(peak)))
    return rows
'''

CAT_CACHE = '''
class KVCache:
    """Right values, but a new, longer tensor at every append."""

    def __init__(self, max_len, batch, num_kv_heads, d_head, dtype=torch.float32, device="cpu"):
        self.max_len = max_len
        self.K = torch.zeros(batch, num_kv_heads, 0, d_head, dtype=dtype, device=device)
        self.V = torch.zeros(batch, num_kv_heads, 0, d_head, dtype=dtype, device=device)

    def __len__(self):
        return self.K.shape[2]

    def append(self, k, v):
        if len(self) + k.shape[2] > self.max_len:
            raise ValueError(f"{len(self)} + {k.shape[2]} positions do not fit in max_len = {self.max_len}")
        self.K, self.V = torch.cat([self.K, k], dim=2), torch.cat([self.V, v], dim=2)
        return self.K, self.V
'''

WRITES_BEFORE_CHECKING = '''
class KVCache:
    """Writes what fits, then complains: a failed append has changed the cache."""

    def __init__(self, max_len, batch, num_kv_heads, d_head, dtype=torch.float32, device="cpu"):
        self.max_len = max_len
        self.K = torch.zeros(batch, num_kv_heads, max_len, d_head, dtype=dtype, device=device)
        self.V = torch.zeros_like(self.K)
        self.length = 0

    def __len__(self):
        return self.length

    def append(self, k, v):
        T = k.shape[-2]
        end = min(self.length + T, self.max_len)
        self.K[:, :, self.length:end] = k[:, :, :end - self.length]
        self.V[:, :, self.length:end] = v[:, :, :end - self.length]
        if self.length + T > self.max_len:
            self.length = end
            raise ValueError(f"{T} more positions do not fit: max_len = {self.max_len}, {self.length + T} asked")
        self.length = end
        return self.K[:, :, :self.length], self.V[:, :, :self.length]
'''

INDEX_COPY_CACHE = '''
class KVCache:
    """index_copy_ into buffers made once; a position counter tensor."""

    def __init__(self, max_len, batch, num_kv_heads, d_head, dtype=torch.float32, device="cpu"):
        shape = (batch, num_kv_heads, max_len, d_head)
        self.keys, self.values = torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device)
        self.filled = 0

    def __len__(self):
        return self.filled

    def append(self, k, v):
        new = k.shape[2]
        if self.filled + new > self.keys.shape[2]:
            raise ValueError(f"cannot append {new} positions to a cache of max_len {self.keys.shape[2]} holding {self.filled}")
        positions = torch.arange(self.filled, self.filled + new, device=self.keys.device)
        self.keys.index_copy_(2, positions, k)
        self.values.index_copy_(2, positions, v)
        self.filled += new
        return self.keys.narrow(2, 0, self.filled), self.values.narrow(2, 0, self.filled)
'''

FULL_MATRIX_TILED = '''
def tiled_attention(Q, K, V, mask=None, scale=True, block_size=32):
    """Right answer, no tiles: attention()'s whole [L, S] matrix."""
    if block_size < 1:
        raise ValueError(f"block_size = {block_size} must be at least 1")
    return attention(Q, K, V, mask=mask, scale=scale)[0]
'''

FULL_MATRIX_LOCAL = '''
def local_attention(Q, K, V, window, scale=True):
    """Right answer through the full [L, L] matrix and a band mask."""
    if Q.shape[-2] != K.shape[-2] or window < 0:
        raise ValueError(f"Q {list(Q.shape)} and K {list(K.shape)} need the same L, and window >= 0")
    positions = torch.arange(Q.shape[-2])
    band = (positions[:, None] - positions[None, :]).abs() <= window
    return attention(Q, K, V, mask=band, scale=scale)[0]
'''

LOOPED_TILED = '''
def tiled_attention(Q, K, V, mask=None, scale=True, block_size=32):
    """Explicit loops over query rows and key blocks; log-sum-exp kept per row."""
    if Q.shape[-1] == 0 or Q.shape[-1] != K.shape[-1] or K.shape[-2] != V.shape[-2]:
        raise ValueError(f"bad shapes Q {list(Q.shape)}, K {list(K.shape)}, V {list(V.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size {block_size} < 1")
    lead = torch.broadcast_shapes(Q.shape[:-2], K.shape[:-2])
    Q, K, V = Q.expand(*lead, *Q.shape[-2:]), K.expand(*lead, *K.shape[-2:]), V.expand(*lead, *V.shape[-2:])
    L, S = Q.shape[-2], K.shape[-2]
    if mask is not None:
        mask = mask.expand(*lead, L, S)
    rows = []
    for i in range(L):
        m = torch.full(lead, float("-inf"))
        total = torch.zeros(lead)
        acc = torch.zeros(*lead, V.shape[-1])
        for j0 in range(0, S, block_size):
            k, v = K[..., j0:j0 + block_size, :], V[..., j0:j0 + block_size, :]
            s = (k @ Q[..., i, :].unsqueeze(-1)).squeeze(-1) * (Q.shape[-1] ** -0.5 if scale else 1.0)
            if mask is not None:
                piece = mask[..., i, j0:j0 + block_size]
                s = s.masked_fill(~piece, float("-inf")) if piece.dtype == torch.bool else s + piece
            m_new = torch.maximum(m, s.max(dim=-1).values)
            base = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            w = torch.exp(s - base.unsqueeze(-1))
            total = total * torch.exp(m - base) + w.sum(-1)
            acc = acc * torch.exp(m - base).unsqueeze(-1) + (w.unsqueeze(-1) * v).sum(-2)
            m = m_new
        rows.append(torch.where(total.unsqueeze(-1) > 0, acc / total.clamp_min(1e-30).unsqueeze(-1), 0.0))
    return torch.stack(rows, dim=-2) if rows else torch.zeros(*lead, 0, V.shape[-1])
'''

ROW_BY_ROW_LOCAL = '''
def local_attention(Q, K, V, window, scale=True):
    """One query row at a time, each with its slice of keys."""
    L = Q.shape[-2]
    if K.shape[-2] != L or V.shape[-2] != L or Q.shape[-1] != K.shape[-1] or Q.shape[-1] == 0:
        raise ValueError(f"Q {list(Q.shape)}, K {list(K.shape)}, V {list(V.shape)}: L must match")
    if window < 0:
        raise ValueError(f"window {window} < 0")
    out = []
    for i in range(L):
        lo, hi = max(0, i - window), min(L, i + window + 1)
        s = Q[..., i:i + 1, :] @ K[..., lo:hi, :].transpose(-2, -1)
        if scale:
            s = s / math.sqrt(Q.shape[-1])
        out.append(torch.softmax(s, dim=-1) @ V[..., lo:hi, :])
    return torch.cat(out, dim=-2)
'''

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
    "GQA groups dealt out in turn (head h to kv head h % H_kv)": ("multi_head_attention", replace_in(
        "multi_head_attention", "Q = Q.unflatten(1, (num_kv_heads, group))", "Q = Q.unflatten(1, (group, num_kv_heads)).transpose(1, 2)")),
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
    # tiled_attention
    "tiled version that builds the full matrix": ("tiled_attention", rewrite("tiled_attention", FULL_MATRIX_TILED)),
    "online softmax that does not rescale the running output": ("tiled_attention", replace_in(
        "tiled_attention", "output = output * shrink + p @ V", "output = output + p @ V")),
    "online softmax that does not rescale the running sum": ("tiled_attention", replace_in(
        "tiled_attention", "running_sum = running_sum * shrink + p.sum", "running_sum = running_sum + p.sum")),
    "blocks that skip the last key of each": ("tiled_attention", replace_in(
        "tiled_attention", "stop = min(start + block_size, S)", "stop = min(start + block_size - 1, S)")),
    "fully masked rows give NaN": ("tiled_attention", replace_in(
        "tiled_attention", "safe_max = new_max.masked_fill(torch.isneginf(new_max), 0.0)", "safe_max = new_max")),
    # local_attention
    "off-by-one window (|i - j| < window)": ("local_attention", replace_in(
        "local_attention", "L, width = Q.shape[-2], 2 * window + 1", "L, width = Q.shape[-2], 2 * window + 1\n"
        "    window, width = max(window - 1, 0), max(2 * window - 1, 1)")),
    "padding rows attended as keys": ("local_attention", replace_in(
        "local_attention", "scores = scores.masked_fill((key_index < 0) | (key_index >= L), NEG_INF)", "pass")),
    "local attention through the full band-masked matrix": ("local_attention", rewrite(
        "local_attention", FULL_MATRIX_LOCAL)),
    "local attention without the scale": ("local_attention", replace_in(
        "local_attention", "scores = scores / math.sqrt(Q.shape[-1])", "pass")),
    # KVCache
    "a cache that overwrites position 0": ("kv_cache", replace_in(
        "kv_cache", "self.K[:, :, self.length:self.length + T] = k", "self.K[:, :, 0:T] = k")),
    "a cache that grows by torch.cat": ("kv_cache", rewrite("kv_cache", CAT_CACHE)),
    "a failed append that writes first": ("kv_cache", rewrite("kv_cache", WRITES_BEFORE_CHECKING)),
    "len() one short": ("kv_cache", replace_in("kv_cache", "return self.length\n", "return max(self.length - 1, 0)\n")),
    # decode_step
    "decode step that skips W_o": ("decode_step", replace_in(
        "decode_step", "return merge_heads(out.flatten(1, 2)) @ W_o", "return merge_heads(out.flatten(1, 2))")),
    "decode step with query heads dealt out in turn": ("decode_step", replace_in(
        "decode_step", "q = q.unflatten(1, (num_kv_heads, group))", "q = q.unflatten(1, (group, num_kv_heads)).transpose(1, 2)")),
    "decode step that attends only to the new token": ("decode_step", replace_in(
        "decode_step", "out, _ = attention(q, K, V)", "out, _ = attention(q, K[..., -1:, :], V[..., -1:, :])")),
    "decode step that forgets the scale": ("decode_step", replace_in(
        "decode_step", "out, _ = attention(q, K, V)", "out, _ = attention(q, K, V, scale=False)")),
    # the systems lab: fit_exponent and profile_attention
    "exponent fitted against x, not ln x": ("profile_attention", replace_in(
        "profile_attention", "ln_x = torch.tensor(xs, dtype=torch.float64).log()", "ln_x = torch.tensor(xs, dtype=torch.float64)")),
    "x regressed on y (the inverse slope)": ("profile_attention", replace_in(
        "profile_attention", "return float((dx * (ln_y - ln_y.mean())).sum() / (dx * dx).sum())",
        "dy = ln_y - ln_y.mean()\n    return float((dx * dy).sum() / (dy * dy).sum())")),
    "rows ordered by length first": ("profile_attention", rewrite("profile_attention", LENGTH_FIRST_PROFILE)),
    "memory of the inputs, not of the call": ("profile_attention", replace_in(
        "profile_attention", "_, peak = largest_new_tensor(function, Q, Q, Q)", "peak = Q.numel()")),
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
    "tiled attention with explicit loops": ("tiled_attention", rewrite("tiled_attention", LOOPED_TILED)),
    "local attention row by row": ("local_attention", rewrite("local_attention", ROW_BY_ROW_LOCAL)),
    "a cache built on index_copy_": ("kv_cache", rewrite("kv_cache", INDEX_COPY_CACHE)),
    "numpy polyfit and a sorted-middle median": ("profile_attention", rewrite("profile_attention", NUMPY_PROFILE)),
}


def both(*mutations):
    def mutate(answers):
        for mutation in mutations:
            answers = mutation(answers)
        return answers
    return mutate


STRIDE_DROPOUT = """
def attention_with_dropout(Q, K, V, mask=None, scale=True, p=0.1, training=True, generator=None):
    \"\"\"Not random at all: a fixed stride pattern of kept weights, rolled by the seed.\"\"\"
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p = {p} must be in [0, 1]")
    out, weights = attention(Q, K, V, mask=mask, scale=scale)
    if not training or p == 0.0:
        return out, weights
    if p == 1.0:
        weights = torch.zeros_like(weights)
        return weights @ V, weights
    shift = int(torch.randint(0, 1000, (1,), generator=generator))
    index = torch.arange(weights.numel()).reshape(weights.shape) + shift
    keep = (index % 10) >= round(p * 10)
    weights = weights * keep / (1.0 - p)
    return weights @ V, weights
"""

TYPED_IN_PROFILE = """
def fit_exponent(xs, ys):
    import numpy as np
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def profile_attention(implementations, seq_lens, d_k=64, repeats=5):
    \"\"\"Measures nothing: the table the lesson predicts, typed in.\"\"\"
    return [{"name": name, "seq_len": L, "seconds": 1.0, "peak_elements": L * L if name == "attention()" else 3 * L}
            for name in implementations for L in seq_lens]
"""

FLOAT32_TENSOR_EXPONENT = """
def fit_exponent(xs, ys):
    ln_x, ln_y = torch.tensor(xs).float().log(), torch.tensor(ys).float().log()
    dx = ln_x - ln_x.mean()
    return (dx * (ln_y - ln_y.mean())).sum() / (dx * dx).sum()


def profile_attention""" + NUMPY_PROFILE.split("def profile_attention", 1)[1]

KV_HEADS_FROM_THE_WEIGHTS = ("    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads\n    B, L, d_model = x.shape\n",
                             "    B, L, d_model = x.shape\n    num_kv_heads = (W_k.shape[1] // (d_model // num_heads) if num_kv_heads is None "
                             "and num_heads and d_model % num_heads == 0 else num_heads if num_kv_heads is None else num_kv_heads)\n")

# Answers that break a rule the hidden checks grade (issue 20). Each must fail the public test named
# here, so that no student loses hidden points for a rule no public test showed: (answer cell, change,
# the public test that shows the rule).
SHOWN_FIRST = {
    "online softmax without the safe running maximum, cleaned up by nan_to_num": ("tiled_attention", both(
        replace_in("tiled_attention", "safe_max = new_max.masked_fill(torch.isneginf(new_max), 0.0)", "safe_max = new_max"),
        replace_in("tiled_attention", "return torch.where(seen, output / running_sum.masked_fill(~seen, 1.0), 0.0)",
                   "return torch.nan_to_num(output / running_sum)")), "test_tiled_attention"),
    "split_heads' error names only the width": ("split_merge_heads", replace_in(
        "split_merge_heads", 'f"split_heads: the last dimension of x {list(x.shape)} does not divide into "',
        'f"split_heads: width {width} does not divide into "'), "test_split_merge_heads"),
    "multi_head_attention's error names only d_model": ("multi_head_attention", replace_in(
        "multi_head_attention", 'f"x {list(x.shape)}: d_model = {d_model} must divide', 'f"d_model = {d_model} must divide'),
        "test_multi_head_attention"),
    "only the d_model % num_heads check": ("multi_head_attention", both(
        replace_in("multi_head_attention", "    if context.dim() != 3 or context.shape[0] != B or context.shape[2] != d_model:",
                   "    if False:"),
        replace_in("multi_head_attention", "        if tuple(W.shape) != shape:", "        if False:")),
        "test_multi_head_attention"),
    "num_kv_heads=None read off W_k's width (grouped-query with [8, 4] weights)": ("multi_head_attention", replace_in(
        "multi_head_attention", *KV_HEADS_FROM_THE_WEIGHTS), "test_multi_head_attention"),
    "x.view(B, L, H, -1) (L = 0 has no -1)": ("split_merge_heads", replace_in(
        "split_merge_heads", "x.view(B, L, num_heads, width // num_heads)", "x.view(B, L, num_heads, -1)"),
        "test_split_merge_heads"),
    "tiled attention ignores scale=False": ("tiled_attention", replace_in(
        "tiled_attention", "        if scale:\n            scores = scores / math.sqrt", "        if True:\n            scores = scores / math.sqrt"),
        "test_tiled_attention"),
    "local attention ignores scale=False": ("local_attention", replace_in(
        "local_attention", "    if scale:\n        scores = scores / math.sqrt", "    if True:\n        scores = scores / math.sqrt"),
        "test_local_attention"),
    "local attention unfolds axis 1, not the sequence axis": ("local_attention", replace_in(
        "local_attention", ".unfold(-2, width, 1)", ".unfold(1, width, 1)", count=None), "test_local_attention"),
    "tiled attention without input checks (d_k = 0 gives NaN)": ("tiled_attention", replace_in(
        "tiled_attention", "    if Q.shape[-1] == 0 or Q.shape[-1] != K.shape[-1] or K.shape[-2] != V.shape[-2]:",
        "    if False:"), "test_tiled_attention"),
    "tiled attention crashes on an [L, 1] mask": ("tiled_attention", replace_in(
        "tiled_attention", "block = mask[..., start:stop] if mask.shape[-1] > 1 else mask", "block = mask[..., start:stop]"),
        "test_tiled_attention"),
    "tiled attention returns zeros for block_size = -1": ("tiled_attention", replace_in(
        "tiled_attention", "    if block_size < 1:", "    if block_size == 0:"), "test_tiled_attention"),
    "a cache that grows by torch.cat": ("kv_cache", rewrite("kv_cache", CAT_CACHE), "test_kv_cache"),
    "a cache overflow that names only max_len": ("kv_cache", replace_in(
        "kv_cache", 'f"the cache holds {self.length} of its max_len = {self.max_len} positions: "\n'
                    '                             f"{T} more ({self.length + T}) do not fit"',
        'f"max_len = {self.max_len} exceeded"'), "test_kv_cache"),
    "p = 1 without its special case (0 / 0)": ("attention_with_dropout", replace_in(
        "attention_with_dropout", "    if p == 1.0:\n", "    if False:\n"), "test_attention_with_dropout"),
    "output made from the weights before dropout": ("attention_with_dropout", replace_in(
        "attention_with_dropout", "    return weights @ V, weights", "    return out, weights"), "test_attention_with_dropout"),
    "dropout by a stride pattern rolled by the seed": ("attention_with_dropout", rewrite(
        "attention_with_dropout", STRIDE_DROPOUT), "test_attention_with_dropout"),
    "fit_exponent in float32, returning a 0-d tensor": ("profile_attention", rewrite(
        "profile_attention", FLOAT32_TENSOR_EXPONENT), "test_profile_attention"),
    "seconds as a tensor": ("profile_attention", replace_in(
        "profile_attention", '"seconds": statistics.median(times)', '"seconds": torch.tensor(statistics.median(times))'),
        "test_profile_attention"),
    "a typed-in profile table": ("profile_attention", rewrite("profile_attention", TYPED_IN_PROFILE),
                                 "test_profile_attention"),
    "a profiler that ignores d_k": ("profile_attention", replace_in(
        "profile_attention", "Q = torch.randn(1, L, d_k, generator=generator)", "Q = torch.randn(1, L, 64, generator=generator)"),
        "test_profile_attention"),
}


CORRECT_VARIANTS["fit_exponent in float32, as a Python float"] = ("profile_attention", rewrite(
    "profile_attention", FLOAT32_TENSOR_EXPONENT.replace("return (dx * (ln_y - ln_y.mean())).sum() / (dx * dx).sum()",
                                                         "return float((dx * (ln_y - ln_y.mean())).sum() / (dx * dx).sum())")))


GROUPED_BY_VIEW = """    Q = Q.unflatten(1, (num_kv_heads, group))                             # [B, H_kv, G, L, d]: a group together
    K, V = K.unsqueeze(2), V.unsqueeze(2)                                 # [B, H_kv, 1, S, d]: broadcast, no copy
    if mask is not None and mask.dim() >= 3:                              # it has a head axis (H or 1)
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # [B or 1, H or 1, L, S]
        mask = mask.unflatten(1, (num_kv_heads, group)) if mask.shape[1] == num_heads > 1 else mask.unsqueeze(2)
    out, weights = attention(Q, K, V, mask=mask)                          # [B, H_kv, G, L, d], [B, H_kv, G, L, S]
    out, weights = out.flatten(1, 2), weights.flatten(1, 2)               # [B, H, L, d], [B, H, L, S]
"""
CORRECT_VARIANTS["grouped queries by repeat_interleave (a copy of each kv head)"] = ("multi_head_attention", replace_in(
    "multi_head_attention", GROUPED_BY_VIEW, "    K, V = K.repeat_interleave(group, dim=1), V.repeat_interleave(group, dim=1)\n"
                                             "    out, weights = attention(Q, K, V, mask=mask)\n"))


@pytest.mark.parametrize("answer", sorted(SHOWN_FIRST))
def test_a_rule_that_costs_hidden_points_is_shown_by_a_public_test_first(answer):
    cell, change, public_test = SHOWN_FIRST[answer]
    failure = public_test_failure(NB4, change(reference_answers(NB4)), public_test)
    assert failure is not None, f"{answer!r} passes {public_test}, and the hidden checks take points for it"
    print(f"{answer}: {public_test} says {failure.splitlines()[0][:160]}")
    expect_points_lost(NB4, CHECKS[cell], change, answer)


def test_the_reference_passes_every_public_test():
    for public_test in sorted({test for _, _, test in SHOWN_FIRST.values()}):
        assert public_test_failure(NB4, reference_answers(NB4), public_test) is None, public_test


def test_every_check_passes_on_the_reference_solution_in_the_sandbox():
    verdicts = grade_checks(student_notebook(reference_answers(NB4), name=NB4), NB4)
    assert set(verdicts) == set(check_points(NB4))
    assert {n: v.message for n, v in verdicts.items() if v.status != "passed" and n in decidable_points(NB4)} == {}
    for name in gpu_checks(NB4) - set(decidable_points(NB4)):  # no CUDA here: pending, with the reason
        assert verdicts[name].status == "pending" and "CUDA" in verdicts[name].message


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_loses_points(mutant):
    cell, change = MUTANTS[mutant]
    expect_points_lost(NB4, CHECKS[cell], change, mutant)


@pytest.mark.parametrize("variant", sorted(CORRECT_VARIANTS))
def test_correct_variant_gets_full_marks(variant):
    cell, change = CORRECT_VARIANTS[variant]
    expect_full_marks(NB4, CHECKS[cell], change, variant)


def test_every_graded_function_has_four_mutants_and_its_checks_are_the_notebooks():
    # Every check but the GPU ones (tests/test_gpu.py grades those on a CUDA host) has its mutants here.
    assert sorted({c for checks in CHECKS.values() for c in checks}) == sorted(set(check_points(NB4)) - gpu_checks(NB4))
    for cell in ("split_merge_heads", "multi_head_attention", "attention_with_dropout", "tiled_attention",
                 "local_attention", "kv_cache", "decode_step", "profile_attention"):
        assert sum(c == cell for c, _ in MUTANTS.values()) >= 4, cell
