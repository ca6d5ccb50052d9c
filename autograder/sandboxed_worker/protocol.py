"""The wire format between the trusted grader and the sandboxed worker.

One message per line, JSON. Tensors travel as plain arrays: dtype, shape and
base64 of the raw little-endian bytes. There is no pickle in either direction,
so nothing a student's code returns can run code in the grader.

Both sides import this module. It must only ever *describe* values; the
trusted side re-checks everything it decodes (see `decode_array`).
"""
import base64
import json
import os

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


def encode_name(name):
    """A module-level value of the student's notebook (IMPLEMENTATIONS), passed as an argument by name."""
    return {"kind": "name", "name": str(name)}


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
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"unreadable message: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message
