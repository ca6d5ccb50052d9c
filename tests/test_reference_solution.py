"""The instructor's solution (source notebook) against PyTorch's SDPA and every rule of the contract (README.md, "The assignment").

The functions are taken from the source notebook's code cells, so what is
tested is exactly what students are measured against.
"""
import math

import nbformat
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.students import reference_answers, source_notebook

# Tolerances per dtype, as in PyTorch's test_transformers.py (float64 reference).
FLOAT32 = dict(rtol=1.3e-6, atol=1e-5)
TEST_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def solution():
    """The namespace after running the source notebook's setup and solution cells."""
    namespace = {}
    for cell in source_notebook().cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and not meta.get("grade") and meta.get("grade_id") != "demo":
            exec(compile(cell.source, meta.get("grade_id", "cell"), "exec"), namespace)  # noqa: S102
    assert set(reference_answers()) <= set(namespace), "every solution cell defines its function"
    return namespace


def close(actual, expected, rtol, atol):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


@st.composite
def sdpa_inputs(draw):
    """Q, K, V of 3-D or 4-D shape with L != S allowed, plus a mask SDPA accepts (or None)."""
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    L, S, d_k, d_v = (draw(st.integers(1, 8)) for _ in range(4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    Q = torch.randn(*batch, L, d_k, generator=gen)
    K = torch.randn(*batch, S, d_k, generator=gen)
    V = torch.randn(*batch, S, d_v, generator=gen)
    kind = draw(st.sampled_from([None, "bool", "float"]))
    mask = None
    if kind:
        shape = draw(st.sampled_from([(L, S), (*batch[:-1], 1, S) if len(batch) > 1 else (1, S), (*batch, L, S)]))
        keep = torch.rand(*shape, generator=gen) < 0.7
        keep[..., 0] = True  # no fully masked rows here: SDPA's float path gives NaN for those
        mask = keep if kind == "bool" else torch.randn(*shape, generator=gen).masked_fill(~keep, -math.inf)
    return Q, K, V, mask, draw(st.booleans())


@TEST_SETTINGS
@given(sdpa_inputs())
def test_agrees_with_sdpa(solution, inputs):
    Q, K, V, mask, scale = inputs
    output, weights = solution["attention"](Q, K, V, mask=mask, scale=scale)
    expected = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask, scale=None if scale else 1.0)
    close(output, expected, **FLOAT32)
    assert weights.shape == Q.shape[:-1] + (K.shape[-2],)
    close(weights.sum(-1), torch.ones(weights.shape[:-1]), **FLOAT32)


def test_key_padding_mask_of_shape_S(solution):
    Q, K, V = torch.randn(2, 4, 3), torch.randn(2, 6, 3), torch.randn(2, 6, 5)
    padding = torch.tensor([True, True, True, True, False, False])  # [S]
    output, weights = solution["attention"](Q, K, V, mask=padding)
    expected = F.scaled_dot_product_attention(Q, K, V, attn_mask=padding.expand(4, 6))
    close(output, expected, **FLOAT32)
    assert (weights[..., 4:] == 0).all()


def test_broadcast_leading_dimensions_like_matmul(solution):
    Q = torch.randn(2, 3, 4, 5, dtype=torch.float64)  # [B, H, L, d_k]
    K, V = torch.randn(3, 6, 5, dtype=torch.float64), torch.randn(3, 6, 2, dtype=torch.float64)  # [H, S, .]
    output, weights = solution["attention"](Q, K, V)
    expected = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(5), dim=-1) @ V
    close(output, expected, rtol=1e-7, atol=1e-7)
    assert weights.shape == (2, 3, 4, 6)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_are_zero_with_finite_gradients(solution, kind):
    Q = torch.randn(2, 3, 4, requires_grad=True)
    K = torch.randn(2, 5, 4, requires_grad=True)
    V = torch.randn(2, 5, 2, requires_grad=True)
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[1] = False  # query 1 may see nothing
    mask = keep if kind == "bool" else torch.zeros(3, 5).masked_fill(~keep, -math.inf)
    output, weights = solution["attention"](Q, K, V, mask=mask)
    assert (output[:, 1] == 0).all() and (weights[:, 1] == 0).all()
    assert torch.isfinite(output).all() and torch.isfinite(weights).all()
    (output.sum() + (weights * torch.randn_like(weights)).sum()).backward()
    for grad in (Q.grad, K.grad, V.grad):
        assert torch.isfinite(grad).all()
    assert (Q.grad[:, 1] == 0).all(), "the fully masked query gets zero gradient"
    assert Q.grad[:, 0].abs().sum() > 0, "the other queries still get gradient"


def test_empty_sequences(solution):
    attention = solution["attention"]
    out, w = attention(torch.randn(2, 0, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 3))  # L = 0
    assert out.shape == (2, 0, 3) and w.shape == (2, 0, 5)
    out, w = attention(torch.randn(2, 3, 4), torch.randn(2, 0, 4), torch.randn(2, 0, 3))  # S = 0
    assert out.shape == (2, 3, 3) and w.shape == (2, 3, 0) and (out == 0).all()
    out, w = attention(torch.randn(0, 3, 4), torch.randn(0, 5, 4), torch.randn(0, 5, 3))  # batch 0
    assert out.shape == (0, 3, 3) and w.shape == (0, 3, 5)


@pytest.mark.parametrize("bad, words", [
    (dict(Q=(2, 3, 0), K=(2, 5, 0), V=(2, 5, 2)), ["d_k", "[2, 3, 0]"]),
    (dict(Q=(2, 3, 4), K=(2, 5, 3), V=(2, 5, 2)), ["[2, 3, 4]", "[2, 5, 3]"]),
    (dict(Q=(2, 3, 4), K=(2, 5, 4), V=(2, 6, 2)), ["[2, 5, 4]", "[2, 6, 2]"]),
    (dict(Q=(2, 3, 4), K=(2, 5, 4), V=(2, 5, 2), mask=torch.ones(5, dtype=torch.int64)), ["int64"]),
    (dict(Q=(2, 3, 4), K=(2, 5, 4), V=(2, 5, 2), mask=torch.ones(4, 5, dtype=torch.bool)), ["[4, 5]"]),
    (dict(Q=(2, 3, 4), K=(2, 5, 4), V=(2, 5, 2), mask=torch.zeros(6)), ["[6]"]),
])
def test_bad_inputs_raise_value_error_naming_shapes(solution, bad, words):
    mask = bad.pop("mask", None)
    tensors = {name: torch.randn(*shape) for name, shape in bad.items()}
    with pytest.raises(ValueError) as err:
        solution["attention"](tensors["Q"], tensors["K"], tensors["V"], mask=mask)
    for word in words:
        assert word in str(err.value)


def test_huge_scores_stay_finite(solution):
    Q = torch.full((1, 2, 1), 100.0)
    K = torch.tensor([[[100.0], [-100.0], [99.0]]])  # scores 1e4, -1e4, 9900
    output, weights = solution["attention"](Q, K, torch.randn(1, 3, 2), scale=False)
    assert torch.isfinite(output).all() and torch.isfinite(weights).all()
    close(weights[0, 0], torch.tensor([1.0, 0.0, 0.0]), **FLOAT32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtype_kept_and_inputs_untouched(solution, dtype):
    Q, K, V = (torch.randn(2, 3, 4).to(dtype) for _ in range(3))
    mask = torch.zeros(3, 3, dtype=dtype).masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), -math.inf)
    copies = [t.clone() for t in (Q, K, V, mask)]
    output, weights = solution["attention"](Q, K, V, mask=mask)
    assert output.dtype == dtype and weights.dtype == dtype and output.device == Q.device
    for original, copy in zip((Q, K, V, mask), copies):
        assert torch.equal(original, copy)


def test_gradients_match_sdpa(solution):
    torch.manual_seed(1)
    inputs = [torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    output, _ = solution["attention"](*inputs)
    ours = torch.autograd.grad(output.sum(), inputs)
    expected = torch.autograd.grad(F.scaled_dot_product_attention(*inputs).sum(), inputs)
    for a, b in zip(ours, expected):
        close(a, b, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("seq_len", [0, 1, 2, 5])
def test_causal_and_reverse_masks(solution, seq_len):
    causal = solution["create_causal_mask"](seq_len)
    reverse = solution["create_reverse_mask"](seq_len)
    assert causal.dtype == torch.float32 and causal.shape == (seq_len, seq_len)
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    assert torch.isneginf(causal[future]).all() and (causal[~future] == 0).all()
    assert torch.equal(reverse, causal.T)
    meta = solution["create_causal_mask"](seq_len, device="meta")
    assert meta.device.type == "meta" and meta.shape == (seq_len, seq_len)


def test_source_notebooks_are_stored_without_outputs():
    from tests.students import ROOT

    for path in (ROOT / "source").rglob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
