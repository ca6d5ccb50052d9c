"""Hypothesis strategies for the hidden checks, and the grading profile.

Trusted code. Hypothesis draws the *shapes*, flags and a seed; the tensor
values come from that seed. So a failing case shrinks to the smallest shapes,
which is what a student needs to see ("attention(Q[1, 0, 2], ...)").

Every student gets the same examples: the profile is derandomized and keeps
no example database.
"""
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import course_config

# Hypothesis keeps a small cache; keep it in one ignored place, not beside each notebook.
set_hypothesis_home_dir(course_config.COURSE_ROOT / ".hypothesis")

settings.register_profile(
    "grading",
    derandomize=True,
    database=None,
    max_examples=course_config.HYPOTHESIS_MAX_EXAMPLES,
    deadline=None,  # time is limited per call by the grader, not by hypothesis
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
    verbosity=Verbosity.quiet,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    print_blob=False,
)
GRADING = settings.get_profile("grading")



def random_values(seed, shape, dtype=torch.float32, magnitude=1.0):
    """Seeded normal values, rounded to `dtype` (the reference uses the rounded values)."""
    values = np.random.default_rng(seed).standard_normal(tuple(shape)) * magnitude
    return torch.from_numpy(values).to(dtype)


@dataclass
class AttentionCase:
    """One set of inputs for attention(), with a description in the student's terms."""
    Q: torch.Tensor
    K: torch.Tensor
    V: torch.Tensor
    mask: torch.Tensor | None = None
    scale: bool = True
    seed: int = 0

    def kwargs(self):
        return {"mask": self.mask, "scale": self.scale}

    def describe(self):
        parts = [_shape_text("Q", self.Q), _shape_text("K", self.K), _shape_text("V", self.V)]
        if self.mask is not None:
            parts.append("mask=" + _shape_text(str(self.mask.dtype).replace("torch.", ""), self.mask))
        if not self.scale:
            parts.append("scale=False")
        call = f"attention({', '.join(parts)})"
        return call + _values_text(self)

    def __repr__(self):  # what hypothesis would print
        return self.describe()


def _shape_text(name, tensor):
    return f"{name}{list(tensor.shape)}"


def _values_text(case, limit=12):
    """Small inputs are shown in full: a student can rerun them."""
    tensors = {"Q": case.Q, "K": case.K, "V": case.V}
    if case.mask is not None:
        tensors["mask"] = case.mask
    if any(t.numel() > limit for t in tensors.values()):
        return f"  (values: seeded normal, seed {case.seed})"
    lines = []
    for name, t in tensors.items():
        values = t.tolist() if t.dtype == torch.bool else t.to(torch.float64).round(decimals=4).tolist()
        lines.append(f"\n    {name} = torch.tensor({values}, dtype={t.dtype})")
    return "  with" + "".join(lines)


def fixed_case(q_shape, k_shape, v_shape, mask=None, scale=True, seed=0, dtype=torch.float32, magnitude=1.0):
    """A pinned case for @example: shapes given, values from the seed."""
    return AttentionCase(random_values(seed, q_shape, dtype, magnitude),
                         random_values(seed + 1, k_shape, dtype, magnitude),
                         random_values(seed + 2, v_shape, dtype, magnitude), mask, scale, seed)


@st.composite
def batch_shapes(draw, min_rank=1, max_rank=2, min_size=1):
    """Leading dimensions: [B] for 3-D inputs, [B, H] for 4-D inputs."""
    rank = draw(st.integers(min_rank, max_rank))
    sizes = [course_config.MAX_BATCH, course_config.MAX_HEADS][:rank]
    return tuple(draw(st.integers(min_size, size)) for size in sizes)


@st.composite
def broadcast_variant(draw, batch):
    """A shape that broadcasts to `batch` as in torch.matmul: some dims 1, some leading dims dropped."""
    drop = draw(st.integers(0, len(batch)))
    kept = batch[drop:]
    return tuple(1 if draw(st.booleans()) and n > 1 else n for n in kept)


@st.composite
def attention_inputs(draw, dtype=torch.float32, min_len=1, mask_kind=None, broadcast=True,
                     magnitude=1.0, min_batch=1):
    """Q, K, V (3-D or 4-D, L != S allowed, maybe broadcast leading dims) and maybe a mask."""
    batch = draw(batch_shapes(min_size=min_batch))
    q_batch = batch
    kv_batch = draw(broadcast_variant(batch)) if broadcast and draw(st.booleans()) else batch
    if broadcast and kv_batch == batch and draw(st.booleans()):
        q_batch = draw(broadcast_variant(batch))
    L = draw(st.integers(min_len, course_config.MAX_SEQ_LEN))
    S = draw(st.integers(min_len, course_config.MAX_SEQ_LEN))
    d_k = draw(st.integers(1, course_config.MAX_HEAD_DIM))
    d_v = draw(st.integers(1, course_config.MAX_HEAD_DIM))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.booleans())
    case = fixed_case((*q_batch, L, d_k), (*kv_batch, S, d_k), (*kv_batch, S, d_v), scale=scale,
                      seed=seed, dtype=dtype, magnitude=magnitude)
    if mask_kind is not None:
        scores_shape = np.broadcast_shapes(q_batch, kv_batch) + (L, S)  # numpy's: torch's imports sympy
        case.mask = draw(masks_for(scores_shape, mask_kind, dtype=dtype))
    return case


@st.composite
def mask_shapes(draw, scores_shape, keep_rows=False):
    """A shape that broadcasts to `scores_shape` = [..., L, S]: [S], [L, S], [B, L, S], [B, 1, S], ..."""
    lead, (L, S) = scores_shape[:-2], scores_shape[-2:]
    if keep_rows:
        row_part = (L, S)
    else:
        row_part = draw(st.sampled_from([(S,), (1, S), (L, S)]))
    if len(row_part) < 2:
        return row_part
    drop = draw(st.integers(0, len(lead)))
    kept = tuple(1 if draw(st.booleans()) else n for n in lead[drop:])
    return kept + row_part


@st.composite
def masks_for(draw, scores_shape, kind, dtype=torch.float32):
    """A mask for scores of `scores_shape`.

    kind "bool": True = may attend; "float": finite biases and some -inf;
    "fully_masked_bool" / "fully_masked_float": some query rows block every key.
    Outside the fully_masked kinds every row keeps at least one key.
    """
    fully = kind.startswith("fully_masked")
    shape = draw(mask_shapes(scores_shape, keep_rows=fully))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    allowed = rng.random(shape) < 0.7
    allowed[..., rng.integers(0, shape[-1])] = True  # no accidental fully masked rows
    if fully:
        rows = allowed.reshape(-1, shape[-2], shape[-1])
        blocked = rng.random(rows.shape[:2]) < 0.4
        blocked[:, rng.integers(0, shape[-2])] = True  # at least one fully masked row
        rows[blocked] = False
        allowed = rows.reshape(shape)
    allowed = torch.from_numpy(allowed)
    if kind in ("bool", "fully_masked_bool"):
        return allowed
    biases = torch.from_numpy(rng.uniform(-2.0, 2.0, shape)).to(dtype)
    if kind == "fully_masked_float":
        biases = torch.zeros(shape, dtype=dtype)
    return biases.masked_fill(~allowed, float("-inf"))


# ---------------------------------------------------------------------------
# Notebook 2: attention maps (row-stochastic matrices) for the statistics and the plots
# ---------------------------------------------------------------------------
WORDS = ["the", "cat", "sat", "on", "a", "mat", ",", "and", "dog", "."]  # tick labels; repeats are allowed


def tokens_for(length, seed=0):
    """`length` words for the tick labels of a map (the same for the same seed)."""
    rng = np.random.default_rng(seed)
    return [WORDS[i] for i in rng.integers(0, len(WORDS), length)]


def map_values(seed, shape, masked_rows=0.0, sharpness=2.0):
    """Seeded row-stochastic weights of `shape` = [..., L, L]: some keys blocked (weight exactly 0),
    and a fraction `masked_rows` of the query rows fully masked (all 0); at least one row is kept."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(shape) * sharpness
    keep = rng.random(shape) < 0.7
    keep[..., rng.integers(0, shape[-1])] = True
    if masked_rows:
        rows = keep.reshape(-1, shape[-2], shape[-1])
        blocked = rng.random(rows.shape[:2]) < masked_rows
        blocked.flat[rng.integers(0, blocked.size)] = False  # at least one row keeps its weight
        rows[blocked] = False
        keep = rows.reshape(shape)
    scores = np.where(keep, scores, -np.inf)
    row_max = np.max(np.where(keep, scores, -1e300), axis=-1, keepdims=True)
    exp = np.where(keep, np.exp(scores - row_max), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    return torch.from_numpy(np.where(total > 0, exp / np.where(total > 0, total, 1.0), 0.0)).to(torch.float32)


@dataclass
class MapCase:
    """Inputs for analyze_attention_patterns(), with a description in the student's terms."""
    weights: torch.Tensor  # [..., L, L]
    window: int = 1
    seed: int = 0

    def describe(self):
        call = f"analyze_attention_patterns(attention_weights{list(self.weights.shape)}, window={self.window})"
        if self.weights.numel() > 16:
            return call + f"  (weights: seeded, seed {self.seed})"
        values = self.weights.to(torch.float64).round(decimals=4).tolist()
        return call + f"  with\n    attention_weights = torch.tensor({values})"

    def __repr__(self):
        return self.describe()


def fixed_map(shape, window=1, seed=0, masked_rows=0.0):
    return MapCase(map_values(seed, shape, masked_rows), window, seed)


@st.composite
def attention_maps(draw, masked_rows=None):
    """Row-stochastic [..., L, L] weights (as attention returns them) and a window.

    Windows run from 0 to wider than L; with `masked_rows` some rows are fully masked (all 0).
    """
    lead = draw(st.sampled_from([(), (course_config.MAX_HEADS,), (2,), (2, course_config.MAX_HEADS)]))
    L = draw(st.integers(1, course_config.MAX_SEQ_LEN))
    seed = draw(st.integers(0, 2**31 - 1))
    fraction = draw(st.sampled_from([0.0, 0.3])) if masked_rows is None else masked_rows
    window = draw(st.integers(0, L + 1))
    return MapCase(map_values(seed, (*lead, L, L), fraction), window, seed)


# ---------------------------------------------------------------------------
# Notebook 4: multi-head, grouped-query and cross-attention
# ---------------------------------------------------------------------------
@dataclass
class MultiHeadCase:
    """Inputs for multi_head_attention(): x, context (x itself for self-attention), the four weights."""
    x: torch.Tensor
    context: torch.Tensor
    W_q: torch.Tensor
    W_k: torch.Tensor
    W_v: torch.Tensor
    W_o: torch.Tensor
    num_heads: int
    num_kv_heads: int | None = None
    mask: torch.Tensor | None = None
    seed: int = 0

    @property
    def kv_heads(self):
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    def args(self):
        return (self.x, self.context, self.W_q, self.W_k, self.W_v, self.W_o)

    def kwargs(self):
        return {"num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads, "mask": self.mask}

    def describe(self):
        context = "x" if self.context is self.x else _shape_text("context", self.context)
        parts = [_shape_text("x", self.x), context] + [_shape_text(n, getattr(self, n))
                                                       for n in ("W_q", "W_k", "W_v", "W_o")]
        parts.append(f"num_heads={self.num_heads}")
        if self.num_kv_heads is not None:
            parts.append(f"num_kv_heads={self.num_kv_heads}")
        if self.mask is not None:
            parts.append("mask=" + _shape_text(str(self.mask.dtype).replace("torch.", ""), self.mask))
        return f"multi_head_attention({', '.join(parts)})  (values: seeded normal, seed {self.seed})"

    def __repr__(self):
        return self.describe()


def multi_head_case(batch, L, S, num_heads, d_head, num_kv_heads=None, cross=True, mask=None, seed=0):
    """A pinned case: weights scaled by 1/sqrt(d_model) so the scores stay of order 1."""
    d_model = num_heads * d_head
    kv_width = (num_heads if num_kv_heads is None else num_kv_heads) * d_head
    x = random_values(seed, (batch, L, d_model))
    context = random_values(seed + 1, (batch, S, d_model)) if cross else x
    weights = [random_values(seed + 2 + i, shape, magnitude=d_model ** -0.5) for i, shape in
               enumerate([(d_model, d_model), (d_model, kv_width), (d_model, kv_width), (d_model, d_model)])]
    return MultiHeadCase(x, context, *weights, num_heads=num_heads, num_kv_heads=num_kv_heads, mask=mask, seed=seed)


@st.composite
def multi_head_inputs(draw, grouped=False, mask_kind=None):
    """Self- or cross-attention inputs; with `grouped`, num_kv_heads is a divisor of num_heads (1 = MQA)."""
    num_heads = draw(st.sampled_from([1, 2, 3, 4, 6]))
    num_kv_heads = draw(st.sampled_from([k for k in range(1, num_heads + 1) if num_heads % k == 0])) if grouped \
        else None
    cross = draw(st.booleans())
    L = draw(st.integers(1, course_config.MAX_SEQ_LEN))
    S = draw(st.integers(1, course_config.MAX_SEQ_LEN)) if cross else L
    case = multi_head_case(draw(st.integers(1, course_config.MAX_BATCH)), L, S, num_heads,
                           draw(st.integers(1, 4)), num_kv_heads, cross, seed=draw(st.integers(0, 2**31 - 1)))
    if mask_kind is not None:
        kind = draw(mask_kind) if isinstance(mask_kind, st.SearchStrategy) else mask_kind
        case.mask = draw(masks_for((case.x.shape[0], num_heads, L, S), kind))
    return case


@st.composite
def head_shapes(draw):
    """[B, L, H*d] inputs for split_heads, with L = 0 and B = 0 allowed: (shape, num_heads)."""
    num_heads = draw(st.integers(1, 4))
    return (draw(st.integers(0, course_config.MAX_BATCH)), draw(st.integers(0, course_config.MAX_SEQ_LEN)),
            num_heads * draw(st.integers(1, 4))), num_heads
