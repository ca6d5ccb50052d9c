"""The wire format between the trusted grader and the sandboxed worker.

One message per line, JSON. Tensors travel as plain arrays: dtype, shape and
base64 of the raw little-endian bytes. There is no pickle in either direction,
so nothing a student's code returns can run code in the grader.

The same lines travel over a worker's stdin and stdout (worker.py) and over the Unix socket of a
notebook's kernel (kernel.py). Both sides import this module, and the format lives here only: the caps, arrays, the
arguments the grader sends (encode_*), and the values a student's function returns,
described in the worker (`describe`) and rebuilt by the grader (`decode_value`, which
re-checks everything it decodes, as `decode_array` does). The worker's own request
dispatcher is `worker.Session.handle`.
"""
import base64
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

# dtype name -> numpy dtype of the bytes on the wire. bfloat16 has no numpy
# dtype: it travels as float32, which holds every bfloat16 value exactly.
WIRE_DTYPES = {
    "float16": "<f2", "float32": "<f4", "float64": "<f8", "bfloat16": "<f4",
    "bool": "|b1", "uint8": "|u1", "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8",
}
# The wire's caps are course policy (course_config.WIRE_*). The worker cannot see course_config: the
# grader hands them to it in this environment variable (autograder/sandbox.py, sandbox_environment).
LIMITS_VARIABLE = "ATTENTION_SURGEON_WORKER_WIRE_LIMITS"
# The notebook's kernel answers the hidden checks too (kernel.py): it listens on the Unix socket this
# environment variable names, and the grader connects to it once nbgrader has run every cell.
CHECKS_SOCKET_VARIABLE = "ATTENTION_SURGEON_CHECKS_SOCKET"


def wire_limits():
    """{name: value} of the caps: course_config's in the grader, the grader's word in the worker."""
    try:
        import course_config
    except ImportError:
        return json.loads(os.environ[LIMITS_VARIABLE])
    return {"max_array_elements": course_config.WIRE_MAX_ARRAY_ELEMENTS,
            "max_message_bytes": course_config.WIRE_MAX_MESSAGE_MB << 20,
            "max_items": course_config.WIRE_MAX_ITEMS, "max_text": course_config.WIRE_MAX_TEXT_CHARS}


_LIMITS = wire_limits()
MAX_ARRAY_ELEMENTS = int(_LIMITS["max_array_elements"])  # elements of one tensor that are sent and decoded
MAX_MESSAGE_BYTES = int(_LIMITS["max_message_bytes"])
MAX_ITEMS = int(_LIMITS["max_items"])  # items of a returned tuple, list or dict that are described
MAX_TEXT = int(_LIMITS["max_text"])  # characters of a repr or an error message that are kept
MAX_DEPTH = 4  # nesting of returned tuples, lists and dicts that is described, and decoded


class ProtocolError(Exception):
    """A message that is not what the protocol allows."""


class TooLarge(ProtocolError):
    """A tensor with more elements than the grader reads: the student's answer, and a wrong one."""

    def __init__(self, count):
        super().__init__(f"tensor of {count} elements is too large")
        self.count = count


def encode_generator(seed):
    """A freshly seeded torch.Generator as an argument: the worker makes `torch.Generator().manual_seed(seed)`."""
    return {"kind": "generator", "seed": int(seed)}


def encode_handle(handle_id):
    """An object that lives in the worker (made by an earlier call with keep=True), as an argument."""
    return {"kind": "handle", "id": int(handle_id)}


def encode_allocator(coefficient, exponent, offset=0, per_feature=False):
    """A function for a student's profiler to measure, made in the worker: called as f(Q, K, V) it creates
    one tensor of `allocation(spec, L, d)` numbers (Q is [..., L, d]) and returns Q. The grader knows what
    it allocates; the student's code does not until it measures it."""
    return {"kind": "allocator", "coefficient": float(coefficient), "exponent": float(exponent),
            "offset": int(offset), "per_feature": bool(per_feature)}


def allocation(spec, length, features):
    """The numbers an allocator function (encode_allocator) creates for Q of [..., length, features]:
    round(coefficient * length ** exponent), times `features` when per_feature, plus offset."""
    numbers = int(round(float(spec["coefficient"]) * length ** float(spec["exponent"])))
    return numbers * (int(features) if spec.get("per_feature") else 1) + int(spec["offset"])


def encode_array(array, dtype_name, **meta):
    """A numpy array (already in its wire dtype) as a JSON-able dict."""
    wire = np.ascontiguousarray(array, dtype=WIRE_DTYPES[dtype_name])
    return {"kind": "tensor", "dtype": dtype_name, "shape": list(wire.shape),
            "data": base64.b64encode(wire.tobytes()).decode("ascii"), **meta}


def decode_array(spec):
    """Check a tensor description and return its data as a numpy array (or None for 'meta')."""
    if not isinstance(spec, dict) or spec.get("kind") != "tensor":
        raise ProtocolError("not a tensor description")
    dtype_name, shape = spec.get("dtype"), spec.get("shape")
    if dtype_name not in WIRE_DTYPES:
        raise ProtocolError(f"unknown dtype {dtype_name!r}")
    if not isinstance(shape, list) or not all(type(n) is int and 0 <= n for n in shape) or len(shape) > 8:
        raise ProtocolError(f"bad shape {shape!r}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > MAX_ARRAY_ELEMENTS or spec.get("oversized"):
        raise TooLarge(count)
    if spec.get("data") is None:
        return None
    raw = base64.b64decode(spec["data"], validate=True)
    dtype = np.dtype(WIRE_DTYPES[dtype_name])
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError("tensor data does not match its shape")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def dumps(message):
    return (json.dumps(message, allow_nan=True, separators=(",", ":")) + "\n").encode("utf-8")


def loads(line):
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message too large")
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: JSON nested too deep
        raise ProtocolError(f"unreadable message: {type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


# ---------------------------------------------------------------------------
# Values: what a student's function returned, described in the worker (`describe`, which student
# code shares a process with) and rebuilt in the grader (`decode_value`, which re-checks all of it:
# whatever arrives is the student's answer, and anything unexpected becomes Opaque).
# ---------------------------------------------------------------------------
def _short(text):
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " ..."


def describe(value, depth=0):
    """A JSON-able description of whatever a student's function returned."""
    torch = sys.modules.get("torch")  # never import torch just to ask: without it there is no tensor

    try:
        if torch is not None and isinstance(value, torch.Tensor):
            return _describe_tensor(value)
        if _is_figure(value):
            return _describe_figure(value)
        if value is None or type(value) in (bool, int, str):
            return {"kind": "scalar", "value": value if type(value) is not str else _short(value)}
        if type(value) is float:
            return {"kind": "scalar", "value": value if math.isfinite(value) else repr(value), "float": True}
        if isinstance(value, (np.floating, np.integer, np.bool_)):
            return describe(value.item(), depth)
        if type(value) in (tuple, list) and depth < MAX_DEPTH:
            return {"kind": "sequence", "type": type(value).__name__, "length": len(value),
                    "items": [describe(v, depth + 1) for v in value[:MAX_ITEMS]]}
        if type(value) is dict and depth < MAX_DEPTH:
            items = list(value.items())[:MAX_ITEMS]
            return {"kind": "mapping", "items": {_short(k): describe(v, depth + 1) for k, v in items}}
        return {"kind": "object", "type": _short(type(value).__qualname__), "repr": _short(repr(value))}
    except Exception as err:  # noqa: BLE001 - a value that cannot be described is still an answer
        return {"kind": "object", "type": "unreadable", "repr": _short(f"{type(err).__name__}: {err}")}


def _describe_tensor(tensor):
    import torch

    dtype = str(tensor.dtype).replace("torch.", "")
    meta = {"device": str(tensor.device), "requires_grad": bool(tensor.requires_grad),
            "has_grad_fn": tensor.grad_fn is not None}
    if dtype not in WIRE_DTYPES:
        return {"kind": "object", "type": f"Tensor[{dtype}]", "repr": _short(f"tensor of dtype {dtype}")}
    if tensor.device.type == "meta":
        return {"kind": "tensor", "dtype": dtype, "shape": list(tensor.shape), "data": None, **meta}
    if tensor.numel() > MAX_ARRAY_ELEMENTS:  # its shape is the answer the grader needs; its values are not sent
        return {"kind": "tensor", "dtype": dtype, "shape": list(tensor.shape), "data": None, "oversized": True, **meta}
    data = tensor.detach().to("cpu")
    if dtype == "bfloat16":
        data = data.to(torch.float32)
    return encode_array(data.numpy(), dtype, **meta)


def _is_figure(value):
    figure_module = sys.modules.get("matplotlib.figure")  # never import matplotlib just to ask
    return figure_module is not None and isinstance(value, figure_module.Figure)


def _describe_figure(figure):
    """What a figure shows, as data: per axes its title, axis labels, ticks and heatmap images.

    The figure is laid out first, as a draw would (tick labels are only final then), without painting
    its pixels (nothing here reads them), and then closed.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import QuadMesh

    try:
        figure.draw_without_rendering()
        axes = []
        for ax in figure.axes[:MAX_ITEMS]:
            images = [m for m in list(ax.images) + [c for c in ax.collections if isinstance(c, QuadMesh)]
                      if m.get_array() is not None][:MAX_ITEMS]
            axes.append({
                "title": _short(ax.get_title()), "xlabel": _short(ax.get_xlabel()), "ylabel": _short(ax.get_ylabel()),
                "xticks": _ticks(ax.xaxis), "yticks": _ticks(ax.yaxis),
                "is_colorbar": getattr(ax, "_colorbar", None) is not None,
                "images": [{"data": encode_array(np.ma.filled(np.ma.asarray(m.get_array(), dtype=np.float64), np.nan),
                                                 "float64"),
                            "clim": [float(v) for v in m.get_clim()]} for m in images],
            })
        return {"kind": "figure", "title": _short(figure.get_suptitle()), "axes": axes}
    finally:
        plt.close(figure)


def _ticks(axis):
    """[(position, label)] of the major ticks inside the axis' view, in data coordinates."""
    low, high = sorted(axis.get_view_interval())
    locations = axis.get_majorticklocs()
    labels = [label.get_text() for label in axis.get_majorticklabels()]
    return [[float(loc), _short(text)] for loc, text in zip(locations, labels)
            if low - 1e-9 <= loc <= high + 1e-9][:MAX_ITEMS * 4]


@dataclass
class Returned:
    """A tensor a student's function returned, as the grader sees it."""
    array: np.ndarray | None  # None for tensors on the 'meta' device
    dtype: str
    shape: tuple
    device: str
    requires_grad: bool = False
    has_grad_fn: bool = False
    oversized: bool = False  # more elements than the grader reads: shape and dtype only

    @property
    def elements(self):
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class Opaque:
    """Anything else a student's function returned: its type and repr, nothing more."""
    type: str
    repr: str


def decode_value(spec):
    """Rebuild a described value on the trusted side; anything unexpected becomes Opaque.

    Whatever the worker sends is the student's answer: a value the protocol refuses (a tensor too
    large to read, a malformed description) is decoded here, inside the request, into something a
    check fails in the student's terms, never an exception that would leave the check pending."""
    try:
        return _decode_value(spec)
    except (ProtocolError, ValueError, TypeError, KeyError, RecursionError) as err:
        return Opaque("value the grader could not read", str(err)[:200])



def _decode_value(spec, depth=0):
    if depth > MAX_DEPTH + 1:
        return Opaque("unreadable", f"a value nested deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict):
        return Opaque("unreadable", repr(spec)[:200])
    kind = spec.get("kind")
    if kind == "tensor":
        try:
            array, oversized = decode_array(spec), False
        except TooLarge:  # decode_array has checked dtype and shape: only the values are missing
            array, oversized = None, True
        return Returned(array, spec["dtype"], tuple(spec["shape"]), str(spec.get("device", "?")),
                        bool(spec.get("requires_grad")), bool(spec.get("has_grad_fn")), oversized)
    if kind == "scalar":
        value = spec.get("value")
        if spec.get("float"):
            return float(value)
        return value if value is None or type(value) in (bool, int, float, str) else Opaque("scalar", repr(value))
    if kind == "sequence":
        items = tuple(_decode_value(item, depth + 1) for item in list(spec.get("items", []))[:MAX_ITEMS])
        return items if spec.get("type") == "tuple" else list(items)
    if kind == "mapping":
        return {str(k)[:MAX_TEXT]: _decode_value(v, depth + 1)
                for k, v in list(dict(spec.get("items", {})).items())[:MAX_ITEMS]}
    if kind == "figure":
        return decode_figure(spec)
    return Opaque(str(spec.get("type", "object"))[:200], str(spec.get("repr", ""))[:2000])


@dataclass
class Image:
    """A heatmap on an axes (imshow or pcolormesh): its data and its colour limits."""
    data: np.ndarray
    clim: tuple


@dataclass
class Axes:
    title: str
    xlabel: str
    ylabel: str
    xticks: list  # [(position, label)]
    yticks: list
    is_colorbar: bool
    images: list  # [Image]

    @staticmethod
    def _labels(ticks):
        return [label for _, label in sorted(ticks, key=lambda tick: tick[0])]

    @property
    def xticklabels(self):
        """Tick labels from the smallest x position to the largest."""
        return self._labels(self.xticks)

    @property
    def yticklabels(self):
        """Tick labels from the smallest y position to the largest (row 0 first for a heatmap)."""
        return self._labels(self.yticks)


@dataclass
class FigureSummary:
    """A matplotlib figure a student's function returned, as data (see _describe_figure)."""
    title: str
    axes: list  # [Axes]

    @property
    def plots(self):
        """The axes that are not colorbars."""
        return [ax for ax in self.axes if not ax.is_colorbar]

    @property
    def colorbars(self):
        return [ax for ax in self.axes if ax.is_colorbar]


def decode_figure(spec):
    axes = []
    for ax in list(spec.get("axes", []))[:MAX_ITEMS]:
        images = [Image(decode_array(image["data"]), tuple(float(v) for v in image["clim"]))
                  for image in ax.get("images", [])]
        ticks = {side: [(float(pos), str(label)) for pos, label in ax.get(side, [])] for side in ("xticks", "yticks")}
        axes.append(Axes(str(ax.get("title", "")), str(ax.get("xlabel", "")), str(ax.get("ylabel", "")),
                         ticks["xticks"], ticks["yticks"], bool(ax.get("is_colorbar")), images))
    return FigureSummary(str(spec.get("title", "")), axes)
