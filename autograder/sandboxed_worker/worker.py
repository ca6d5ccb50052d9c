"""The sandboxed worker: the only part of autograder/ that runs student code.

It starts inside the sandbox (see autograder/sandbox.py), runs the code cells
of one submitted notebook, then answers requests from the trusted grader:
"call attention with these arrays", and replies with plain arrays. It reaches
no verdict; everything it says is treated as the student's return value.

    grader (trusted)                       this process (untrusted)
    ----------------                       ------------------------
    {"op": "load", "cells": [...]}   --->  run the student's cells
    {"op": "call", "function": ...}  --->  call it, describe the result
                                     <---  {"result": {...arrays...}}

Student code shares this process, so it can tamper with anything here; the
grader relies only on the values it gets back, and on its own static scan.
"""
import math
import os
import signal
import sys

import numpy as np

try:  # run as a script inside the sandbox, or imported as part of autograder
    from protocol import (MAX_ARRAY_ELEMENTS, MAX_ITEMS, MAX_TEXT, WIRE_DTYPES, decode_array, dumps, encode_array,
                          loads)
except ImportError:  # pragma: no cover - the import path depends on how we are run
    from .protocol import (MAX_ARRAY_ELEMENTS, MAX_ITEMS, MAX_TEXT, WIRE_DTYPES, decode_array, dumps, encode_array,
                           loads)

# Ready-made attention a student may not call. Python-level entry points are
# wrapped with a tripwire; dispatcher-level ops are seen by the op recorder.
FUSED_ENTRY_POINTS = [
    ("torch.nn.functional", "scaled_dot_product_attention"),
    ("torch.nn.functional", "multi_head_attention_forward"),
    ("torch._C._nn", "scaled_dot_product_attention"),
]
FUSED_OP_MARKERS = ("scaled_dot_product", "_safe_softmax", "multi_head_attention", "flash_attention",
                    "efficient_attention", "_native_multi_head")


def _short(text):
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " ..."


def describe(value, depth=0):
    """A JSON-able description of whatever a student's function returned."""
    import torch

    try:
        if isinstance(value, torch.Tensor):
            return _describe_tensor(value)
        if _is_figure(value):
            return _describe_figure(value)
        if value is None or type(value) in (bool, int, str):
            return {"kind": "scalar", "value": value if type(value) is not str else _short(value)}
        if type(value) is float:
            return {"kind": "scalar", "value": value if math.isfinite(value) else repr(value), "float": True}
        if isinstance(value, (np.floating, np.integer, np.bool_)):
            return describe(value.item(), depth)
        if type(value) in (tuple, list) and depth < 4:
            return {"kind": "sequence", "type": type(value).__name__, "length": len(value),
                    "items": [describe(v, depth + 1) for v in value[:MAX_ITEMS]]}
        if type(value) is dict and depth < 4:
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

    The figure is drawn first (tick labels are only final after a draw) and then closed.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import QuadMesh

    try:
        figure.canvas.draw()
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


def _make_tensor(spec, requires_grad_ok=True):
    """A torch tensor from a tensor description sent by the grader."""
    import torch

    array = decode_array(spec)
    dtype = getattr(torch, spec["dtype"])
    device = spec.get("device", "cpu")
    if array is None:
        tensor = torch.empty(spec["shape"], dtype=dtype, device=device)
    else:
        tensor = torch.from_numpy(array.copy()).to(device=device, dtype=dtype)
    if spec.get("requires_grad") and requires_grad_ok:
        tensor.requires_grad_(True)
    return tensor


def _make_value(spec, handles=None, namespace=None):
    if isinstance(spec, dict) and spec.get("kind") == "tensor":
        return _make_tensor(spec)
    if isinstance(spec, dict) and spec.get("kind") == "name":  # a module-level value of the student's notebook
        if namespace is None or spec.get("name") not in namespace:
            raise ValueError(f"{spec.get('name')!r} is not defined in your notebook")
        return namespace[spec["name"]]
    if isinstance(spec, dict) and spec.get("kind") == "handle":  # an object an earlier call made here
        if handles is None or spec.get("id") not in handles:
            raise ValueError(f"no object {spec.get('id')!r} lives in this worker")
        return handles[spec["id"]]
    if isinstance(spec, dict) and spec.get("kind") == "sequence":
        items = [_make_value(s, handles, namespace) for s in spec["items"]]
        return tuple(items) if spec.get("type") == "tuple" else items
    if isinstance(spec, dict) and spec.get("kind") == "generator" and type(spec.get("seed")) is int:
        import torch

        return torch.Generator().manual_seed(spec["seed"])
    if isinstance(spec, dict) and spec.get("kind") == "scalar":
        value = spec["value"]
        return float(value) if spec.get("float") else value
    raise ValueError(f"cannot build an argument from {spec!r}")


def _storage(leaf):
    try:
        return leaf.untyped_storage()
    except Exception:  # noqa: BLE001 - not a tensor, or one without storage (meta)
        return None


def storages_of(values):
    """The data pointers of the storages of every tensor in `values` (nested lists, tuples, dicts)."""
    from torch.utils._pytree import tree_leaves

    return {s.data_ptr() for s in map(_storage, tree_leaves(values)) if s is not None}


class OpRecorder:
    """Records the dispatcher ops and fused entry points used during one call, and the largest block of
    memory any op works in (`largest`, in elements of its storage): every storage an op reads or writes
    that is not one of `known` (the grader's own arguments; for a method, the tensors its object holds).
    A view (a slice, a transpose, an expanded mask) of an argument costs nothing; a tensor the call
    makes costs its size, and so does a buffer made before the call (when a cell ran) and filled in
    place during it: it holds the same numbers a new tensor would."""

    def __init__(self, known=()):
        self.seen = set()
        self.largest = 0
        self.known = set(known)

    def _measure(self, inputs, result):
        from torch.utils._pytree import tree_leaves

        for leaf in tree_leaves((inputs, result)):
            storage = _storage(leaf)
            if storage is not None and storage.data_ptr() not in self.known:
                self.largest = max(self.largest, storage.nbytes() // max(leaf.element_size(), 1))

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.name())
                if any(marker in name for marker in FUSED_OP_MARKERS):
                    recorder.seen.add(name)
                result = func(*args, **(kwargs or {}))
                recorder._measure((args, kwargs), result)
                return result

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False


_TRIPWIRE_HITS = set()


def install_tripwires():
    """Wrap the Python-level fused attention entry points so a call is noticed."""
    import importlib

    import torch

    def wrap(owner, name, label):
        original = getattr(owner, name)

        def tripwire(*args, **kwargs):
            _TRIPWIRE_HITS.add(label)
            return original(*args, **kwargs)

        setattr(owner, name, tripwire)

    for module_name, name in FUSED_ENTRY_POINTS:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            wrap(module, name, f"{module_name}.{name}")
    wrap(torch.nn.MultiheadAttention, "forward", "torch.nn.MultiheadAttention")


class Session:
    """The student's namespace plus the request handlers. Pure: no I/O here."""

    # Methods the grader may call on an object that lives here (a KVCache): public names, and len().
    CALLABLE_DUNDERS = ("__len__",)

    def __init__(self, namespace, run_cell=None):
        self.namespace = namespace
        self.run_cell = run_cell
        self.handles = {}  # id -> an object a call made and the grader asked to keep (keep=True)

    def load(self, request):
        errors = []
        for index, source in enumerate(request.get("cells", [])):
            error = self.run_cell(source)
            if error is not None:
                errors.append({"cell": index, "error": _short(error)})
        return {"ok": True, "errors": errors}

    def value(self, request):
        """A module-level value of the student's notebook (an answer such as HEAD_ROLES)."""
        name = request.get("name")
        if name not in self.namespace:
            return {"raised": {"type": "NameError", "message": f"{name} is not defined in your notebook"}}
        return {"result": describe(self.namespace[name])}

    def call(self, request):
        function = self.namespace.get(request["function"])
        if not callable(function):
            return {"raised": {"type": "NameError",
                               "message": f"{request['function']}() is not defined in your notebook"}}
        return self._invoke(function, request)

    def method(self, request):
        """A method of an object an earlier call made and kept: cache.append(k, v), len(cache)."""
        obj, name = self.handles.get(request.get("handle")), request.get("method")
        if obj is None:
            return {"error": f"no object {request.get('handle')!r} lives in this worker"}
        if not isinstance(name, str) or (name.startswith("_") and name not in self.CALLABLE_DUNDERS):
            return {"error": f"the grader may not call {name!r}"}
        try:
            function = len if name == "__len__" else getattr(obj, name)
        except BaseException as err:  # noqa: BLE001 - a missing method is the student's answer
            return {"raised": {"type": type(err).__name__, "message": _short(err)}}
        if name == "__len__":
            request = dict(request, args=[{"kind": "handle", "id": request["handle"]}], kwargs={})
        try:
            held = [v for v in vars(obj).values()]
        except TypeError:  # an object without __dict__
            held = []
        return self._invoke(function, request, held=held)

    def _invoke(self, function, request, held=()):
        import torch

        args = [_make_value(spec, self.handles, self.namespace) for spec in request.get("args", [])]
        kwargs = {key: _make_value(spec, self.handles, self.namespace) for key, spec in request.get("kwargs", {}).items()}
        inputs = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        snapshots = [t.detach().clone() if t.device.type != "meta" else None for t in inputs]
        reply = {}
        _TRIPWIRE_HITS.clear()
        recorder = OpRecorder(known=storages_of([inputs, list(held)])) if request.get("trace") else None
        try:
            if recorder:
                with recorder:
                    result = function(*args, **kwargs)
            else:
                result = function(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - SystemExit from student code is an answer too
            reply["raised"] = {"type": type(err).__name__, "message": _short(err)}
            result = None
        else:
            reply["result"] = describe(result)
            if request.get("keep"):
                reply["handle"] = len(self.handles) + 1
                self.handles[reply["handle"]] = result
        reply["fused"] = sorted(_TRIPWIRE_HITS | (recorder.seen if recorder else set()))
        if recorder:
            reply["largest_tensor"] = recorder.largest
        reply["inputs_modified"] = [
            bool(s is not None and (t.shape != s.shape or not torch.equal(t.detach(), s)))
            for t, s in zip(inputs, snapshots)
        ]
        if "raised" not in reply and request.get("grad_outputs") is not None:
            reply.update(self._backward(result, request["grad_outputs"], inputs))
        return reply

    @staticmethod
    def _backward(result, grad_output_specs, inputs):
        import torch

        outputs = result if isinstance(result, (tuple, list)) else (result,)
        terms = []
        for output, spec in zip(outputs, grad_output_specs):
            if spec is None or not isinstance(output, torch.Tensor) or not output.requires_grad:
                continue
            upstream = _make_tensor(spec, requires_grad_ok=False).to(dtype=output.dtype, device=output.device)
            terms.append((output * upstream).sum())
        if not terms:
            return {"grads": [None for _ in inputs], "backward_raised": None}
        try:
            sum(terms).backward()
        except BaseException as err:  # noqa: BLE001
            return {"grads": [None for _ in inputs],
                    "backward_raised": {"type": type(err).__name__, "message": _short(err)}}
        return {"grads": [describe(t.grad) if t.grad is not None else None for t in inputs],
                "backward_raised": None}


def _ipython_runner(namespace_holder):
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    namespace_holder.append(shell.user_ns)

    def run_cell(source):
        outcome = shell.run_cell(source, store_history=False, silent=True)
        err = outcome.error_before_exec or outcome.error_in_exec
        return None if err is None else f"{type(err).__name__}: {err}"

    return run_cell


def main():
    # The protocol gets private copies of stdin/stdout; what student code prints goes nowhere.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized file write fails instead of killing us

    import torch

    torch.set_num_threads(1)  # the grader runs many workers side by side
    install_tripwires()
    holder = []
    session = Session(namespace={}, run_cell=_ipython_runner(holder))
    session.namespace = holder[0]

    for line in proto_in:
        try:
            request = loads(line)
            op = request.get("op")
            if op == "load":
                reply = session.load(request)
            elif op == "call":
                reply = session.call(request)
            elif op == "method":
                reply = session.method(request)
            elif op == "value":
                reply = session.value(request)
            elif op == "ping":
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except BaseException as err:  # noqa: BLE001 - keep serving; the grader decides
            reply = {"error": _short(f"{type(err).__name__}: {err}")}
        proto_out.write(dumps(reply))
        proto_out.flush()


if __name__ == "__main__":
    main()
