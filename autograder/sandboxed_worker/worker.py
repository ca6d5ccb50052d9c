"""The sandboxed worker: with kernel.py, the only part of autograder/ that runs student code.

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

Most notebooks never need a worker: the kernel that ran the notebook answers the
same requests through the same `Session` (kernel.py). The grader starts a worker
when that kernel cannot answer (it died, ran out of time or hung on a call), and
for the commands that run no notebook (make regrade, make autograde-gpu, the preflight).
"""
import os
import signal

try:  # run as a script inside the sandbox, or imported as part of autograder
    from protocol import _short, allocation, decode_array, describe, dumps, loads
except ImportError:  # pragma: no cover - the import path depends on how we are run
    from .protocol import _short, allocation, decode_array, describe, dumps, loads

# Ready-made attention a student may not call. Python-level entry points are
# wrapped with a tripwire; dispatcher-level ops are seen by the op recorder.
FUSED_ENTRY_POINTS = [
    ("torch.nn.functional", "scaled_dot_product_attention"),
    ("torch.nn.functional", "multi_head_attention_forward"),
    ("torch._C._nn", "scaled_dot_product_attention"),
]
FUSED_OP_MARKERS = ("scaled_dot_product", "_safe_softmax", "multi_head_attention", "flash_attention",
                    "efficient_attention", "_native_multi_head")


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


def _make_value(spec, handles=None):
    if isinstance(spec, dict) and spec.get("kind") == "tensor":
        return _make_tensor(spec)
    if isinstance(spec, dict) and spec.get("kind") == "handle":  # an object an earlier call made here
        if handles is None or spec.get("id") not in handles:
            raise ValueError(f"no object {spec.get('id')!r} lives in this worker")
        return handles[spec["id"]]
    if isinstance(spec, dict) and spec.get("kind") == "sequence":
        items = [_make_value(s, handles) for s in spec["items"]]
        return tuple(items) if spec.get("type") == "tuple" else items
    if isinstance(spec, dict) and spec.get("kind") == "mapping" and isinstance(spec.get("items"), dict):
        return {str(k): _make_value(v, handles) for k, v in spec["items"].items()}
    if isinstance(spec, dict) and spec.get("kind") == "allocator":
        return _allocator(spec)
    if isinstance(spec, dict) and spec.get("kind") == "generator" and type(spec.get("seed")) is int:
        import torch

        return torch.Generator().manual_seed(spec["seed"])
    if isinstance(spec, dict) and spec.get("kind") == "scalar":
        value = spec["value"]
        return float(value) if spec.get("float") else value
    raise ValueError(f"cannot build an argument from {spec!r}")


def _allocator(spec):
    """The function an allocator argument stands for (protocol.encode_allocator)."""
    import torch

    def implementation(Q, K, V):
        scratch = torch.zeros(allocation(spec, Q.shape[-2], Q.shape[-1]))  # noqa: F841 - its size is the point
        return Q

    return implementation


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

    def handle(self, request):
        """The reply to one request of the grader: the one dispatcher (this worker's loop, and the
        in-process student of an instructor's kernel, both answer through it)."""
        handlers = {"load": self.load, "call": self.call, "method": self.method, "value": self.value,
                    "ping": lambda _: {"ok": True}}
        handler = handlers.get(request.get("op"))
        return handler(request) if handler else {"error": f"unknown op {request.get('op')!r}"}

    def load(self, request):
        if self.run_cell is None:  # a notebook's kernel (kernel.py): its notebook has run, cell by cell
            return {"error": "this process loads no cells: it ran the notebook itself"}
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

        args = [_make_value(spec, self.handles) for spec in request.get("args", [])]
        kwargs = {key: _make_value(spec, self.handles) for key, spec in request.get("kwargs", {}).items()}
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


def serve(session, requests, replies, run=lambda handle: handle()):
    """Answer the grader's requests, one JSON line each, until it hangs up (the worker's pipe, or the
    socket a notebook's kernel listens on: kernel.py, whose `run` handles each in its main thread)."""
    for line in requests:
        try:
            request = loads(line)
            reply = run(lambda: session.handle(request))
        except BaseException as err:  # noqa: BLE001 - keep serving; the grader decides
            reply = {"error": _short(f"{type(err).__name__}: {err}")}
        replies.write(dumps(reply))
        replies.flush()


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

    serve(session, proto_in, proto_out)


if __name__ == "__main__":
    main()
