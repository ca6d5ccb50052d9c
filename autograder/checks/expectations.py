"""Small assertions shared by the checks; each failure message speaks the student's language.

Trusted code. "attention(Q[2, 5, 4], K[2, 7, 4], V[2, 7, 3]) returned output[0, 1, 2] = 0.31;
expected 0.27" tells a student what to look at; a diff of arrays does not.
"""
import re

import numpy as np
import torch

from ..sandboxed_worker.protocol import MAX_ARRAY_ELEMENTS, Opaque, Returned
from . import CheckFailed


def what(value):
    """A short description of a returned value."""
    if isinstance(value, Returned) and value.oversized:
        return f"a {value.dtype} tensor of {value.elements:,} elements (shape {list(value.shape)})"
    if isinstance(value, Returned):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, Opaque):
        return f"a {value.type} ({value.repr[:80]})"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return repr(value)[:80]


def expect_no_error(outcome, call_text):
    if outcome.raised:
        kind, message = outcome.raised
        raise CheckFailed("runs-without-error", f"{call_text}\n  raised {kind}: {message}")


def expect_value_error(outcome, call_text, what_is_wrong):
    """The call raised ValueError (any message): `what_is_wrong` says which input must be refused."""
    if outcome.raised is None or outcome.raised[0] != "ValueError":
        got = "returned normally" if outcome.raised is None else f"raised {outcome.raised[0]}"
        raise CheckFailed("rejects-bad-input", f"{call_text}\n  {got}; {what_is_wrong} must raise ValueError")


def expect_tensor(value, name, call_text):
    if not isinstance(value, Returned):
        raise CheckFailed("returns-a-tensor", f"{call_text}\n  returned {name} as {what(value)}; expected a torch.Tensor")
    return value


def expect_pair(outcome, call_text, names=("output", "weights")):
    """The call returned a pair of tensors: (output, weights)."""
    expect_no_error(outcome, call_text)
    value = outcome.value
    if not isinstance(value, (tuple, list)) or len(value) != len(names):
        raise CheckFailed("returns-a-pair", f"{call_text}\n  returned {what(value)}; it must return a pair {tuple(names)}")
    return [expect_tensor(v, n, call_text) for v, n in zip(value, names)]


def expect_shape(got, shape, name, call_text):
    if got.oversized:
        raise CheckFailed("shape", f"{call_text}\n  returned {name} as {what(got)}; expected {list(shape)} "
                          f"(the grader reads at most {MAX_ARRAY_ELEMENTS:,} elements)")
    if tuple(got.shape) != tuple(shape):
        raise CheckFailed("shape", f"{call_text}\n  returned {name} of shape {list(got.shape)}; expected {list(shape)}")


def expect_close(got, expected, tol, name, call_text, rule="matches-reference"):
    """`got` (a returned tensor) matches the float64 `expected` within `tol`; NaN never matches."""
    expect_shape(got, expected.shape, name, call_text)
    if got.array is None:
        raise CheckFailed("keeps-device", f"{call_text}\n  returned {name} on device {got.device}, which holds no values")
    actual = torch.from_numpy(got.array.astype(np.float64))
    bad = ~torch.isclose(actual, expected, rtol=tol.rtol, atol=tol.atol)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        count = int(bad.sum())
        index = f"[{', '.join(map(str, where))}]" if where else ""
        raise CheckFailed(
            rule, f"{call_text}\n  returned {name}{index} = {actual[where].item():.6g}; expected "
            f"{expected[where].item():.6g} ({count} of {bad.numel()} entries differ; tolerance "
            f"rtol={tol.rtol:.2g}, atol={tol.atol:.2g} against a float64 reference)")


def expect_exactly_zero(got, rows, name, call_text, what_rows="fully masked rows"):
    """Entries of `got` selected by the bool `rows` mask ([..., L]) are exactly 0. The failure names the
    rule in words and the first row that breaks it: "row [0, 1] is fully masked (the mask blocks every
    key), so its output must be exactly 0; found output[0, 1, 0] = 0.25"."""
    expect_shape(got, tuple(rows.shape) + tuple(got.shape[rows.dim():]), name, call_text)
    values = torch.from_numpy(got.array.astype(np.float64))
    extra = values.dim() - rows.dim()
    selected = rows.reshape(tuple(rows.shape) + (1,) * extra).expand(values.shape)
    bad = (selected & (values != 0)).nonzero()
    if len(bad):
        where = [int(i) for i in bad[0]]
        row = where[:rows.dim()]
        raise CheckFailed("fully-masked-rows-zero", f"{call_text}\n  row {row} of the query rows is one of the {what_rows} (the mask blocks "
                          f"every key), so its {name} must be exactly 0; found {name}{where} = "
                          f"{values[tuple(where)].item():.6g}")


def expect_finite(got, name, call_text):
    if got.oversized:
        raise CheckFailed("shape", f"{call_text}\n  returned {name} as {what(got)}; the grader reads at most "
                          f"{MAX_ARRAY_ELEMENTS:,} elements")
    values = torch.from_numpy(got.array.astype(np.float64))
    if not bool(torch.isfinite(values).all()):
        where = tuple(int(i) for i in (~torch.isfinite(values)).nonzero()[0])
        raise CheckFailed("finite", f"{call_text}\n  returned {name}{list(where)} = {values[where].item()}; "
                          f"nothing may be inf or NaN")


def shape_mentioned(message, shape):
    """Does an error message name `shape`, in any usual spelling ([2, 5, 4], (2, 5, 4), 2x5x4)?"""
    squashed = re.sub(r"\s+", "", message).replace("torch.Size", "")
    dims = [str(n) for n in shape]
    spellings = {"[" + ",".join(dims) + "]", "(" + ",".join(dims) + ")", "x".join(dims), "×".join(dims)}
    if len(dims) == 1:
        spellings.add(f"({dims[0]},)")
    return any(s in squashed for s in spellings)
