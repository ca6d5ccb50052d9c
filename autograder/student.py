"""The grader's handle on a student's code: call a function, get plain values back.

Trusted code. `SandboxedStudent` talks with the JSON protocol to a sandboxed
process that holds the student's notebook code: the notebook's own kernel once
nbgrader has run it (a Unix socket, `KernelConnection`), or a worker that loads
the code itself (a pipe, `WorkerProcess`; autograder/sandboxed_worker/).
`InProcessStudent` calls the functions of the instructor's own kernel (for
`hidden_check` in source notebooks). Checks see the same `Outcome` either way.
"""
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

import course_config

from .sandbox import pid_namespace, process_cap, sandbox_environment, worker_command
from .time_budget import call_deadline, first_to_end, submission_deadline
from .sandboxed_worker import protocol
from .sandboxed_worker.protocol import decode_value, describe
from .sandboxed_worker.worker import Session


MAX_SKIPPED_CELLS = 3  # cells that hang or kill the worker, left out before giving up


class StudentUnresponsive(BaseException):
    """The student's code hung, died or broke the protocol.

    A BaseException, not an Exception: hypothesis then stops at once instead
    of trying to shrink a hang (each try would cost a full time-out).
    """


@dataclass(frozen=True)
class Handle:
    """An object a student's call made that stays in their worker (a KVCache): used by later calls."""
    id: int


@dataclass(frozen=True)
class Allocates:
    """An argument that is a function the worker makes: f(Q, K, V) creates one tensor of
    round(coefficient * L ** exponent) (times d when per_feature) + offset numbers and returns Q
    (protocol.encode_allocator)."""
    coefficient: float
    exponent: float
    offset: int = 0
    per_feature: bool = False

    def spec(self):
        return protocol.encode_allocator(self.coefficient, self.exponent, self.offset, self.per_feature)

    def numbers(self, length, features):
        return protocol.allocation(self.spec(), length, features)


@dataclass
class Outcome:
    """What one call of a student's function did."""
    value: object = None
    raised: tuple | None = None  # (exception type name, message)
    grads: list = field(default_factory=list)  # per tensor argument: Returned or None
    backward_raised: tuple | None = None
    inputs_modified: list = field(default_factory=list)
    fused: list = field(default_factory=list)
    largest_tensor: int | None = None  # with trace=True: the most elements any op newly allocated
    handle: Handle | None = None  # with keep=True: the returned object, kept in the worker


def encode_argument(value, requires_grad=False, device="cpu"):
    """Describe an argument for the worker: tensors keep their dtype; grad and device ride along."""
    torch = sys.modules.get("torch")  # not imported here for a caller without tensors (the preflight)
    if torch is not None and isinstance(value, torch.Tensor):
        spec = describe(value.detach())
        spec.update(requires_grad=bool(requires_grad and value.is_floating_point()), device=device)
        return spec
    if isinstance(value, Handle):
        return protocol.encode_handle(value.id)
    if torch is not None and isinstance(value, torch.Generator):  # only its seed travels: checks pass freshly seeded generators
        return protocol.encode_generator(value.initial_seed())
    if isinstance(value, Allocates):
        return value.spec()
    if type(value) is dict:
        return {"kind": "mapping", "items": {str(k): encode_argument(v, device=device) for k, v in value.items()}}
    return describe(value)


def _decode_outcome(reply):
    if "error" in reply:
        raise StudentUnresponsive(f"the worker could not run the call: {reply['error']}")
    raised = reply.get("raised")
    backward = reply.get("backward_raised")
    return Outcome(
        value=decode_value(reply.get("result")) if raised is None else None,
        raised=(str(raised["type"]), str(raised["message"])) if raised else None,
        grads=[decode_value(g) if g is not None else None for g in reply.get("grads", [])],
        backward_raised=(str(backward["type"]), str(backward["message"])) if backward else None,
        inputs_modified=[bool(m) for m in reply.get("inputs_modified", [])],
        fused=[str(f) for f in reply.get("fused", [])],
        largest_tensor=reply["largest_tensor"] if type(reply.get("largest_tensor")) is int else None,
        handle=Handle(reply["handle"]) if type(reply.get("handle")) is int else None,
    )


class StudentCode:
    """What checks use: `call(...)` and `sources` (the student's code, for static checks)."""

    sources: list  # every cell the student could write in (the tampering scan reads them all)
    answers: dict = None  # grade id -> the cells they fill in (the ready-made-attention rule reads these)
    check_deadline = None  # the running check's time budget (time_budget.check_deadline), if any

    def _uses(self, name):
        """Remember that the running check read the student's `name` (the hidden_check in an instructor's
        kernel holds this against the names the check declares it grades)."""
        self.__dict__.setdefault("used", set()).add(str(name))

    def value(self, name):
        """The value of a module-level name in the student's notebook (an answer like HEAD_ROLES)."""
        self._uses(name)
        return _decode_outcome(self._request({"op": "value", "name": name}, course_config.CALL_TIMEOUT_S))

    def call(self, function, *args, grad=(), grad_outputs=None, trace=False, tensor_device="cpu", timeout=None,
             keep=False, **kwargs):
        """Call the student's `function`. `grad` names the positional arguments that require grad;
        `grad_outputs` (one tensor or None per returned tensor) asks for a backward pass;
        tensor arguments are sent to `tensor_device`; `timeout` replaces CALL_TIMEOUT_S (experiments);
        `keep` keeps what it returns in the worker (Outcome.handle) for later calls and `method`."""
        self._uses(function)
        request = {
            "op": "call", "function": function, "trace": trace, "keep": keep,
            "args": [encode_argument(a, i in grad, tensor_device) for i, a in enumerate(args)],
            "kwargs": {k: encode_argument(v, False, tensor_device) for k, v in kwargs.items()},
            "grad_outputs": None if grad_outputs is None else
            [None if g is None else encode_argument(g) for g in grad_outputs],
        }
        return _decode_outcome(self._request(request, timeout or course_config.CALL_TIMEOUT_S))

    def method(self, handle, name, *args, trace=False, **kwargs):
        """Call method `name` of the object `handle` names (len(obj): name "__len__")."""
        request = {"op": "method", "handle": handle.id, "method": name, "trace": trace,
                   "args": [encode_argument(a) for a in args],
                   "kwargs": {k: encode_argument(v) for k, v in kwargs.items()}}
        return _decode_outcome(self._request(request, course_config.CALL_TIMEOUT_S))

    def _request(self, message, timeout):
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class InProcessStudent(StudentCode):
    """The functions of the current (instructor's) kernel. No sandbox: trusted notebooks only."""

    def __init__(self, namespace, sources=()):
        self.session = Session(namespace)
        self.sources = list(sources)

    def _request(self, message, timeout):
        # The same JSON round trip as the worker, so both paths see identical values.
        reply = self.session.handle(protocol.loads(protocol.dumps(message)))
        return protocol.loads(protocol.dumps(reply))


class LineChannel:
    """One process that answers the grader's requests, one JSON line each way (protocol.py).

    Replies are read within a deadline and the wire's size cap; `kill` stops the process with
    everything it started and returns (exit code or None, the end of what it wrote on stderr)."""

    def __init__(self, reply_fd):
        self._reply_fd = reply_fd
        self._buffer = b""

    def send(self, message):
        raise NotImplementedError

    def receive(self, deadline):
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._reply_fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(self._reply_fd, 1 << 20)
            if not chunk:
                raise EOFError
            self._buffer += chunk
            if len(self._buffer) > protocol.MAX_MESSAGE_BYTES:
                raise protocol.ProtocolError("reply too large")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return protocol.loads(line)

    def kill(self):
        raise NotImplementedError


class WorkerProcess(LineChannel):
    """A sandboxed worker (sandboxed_worker/worker.py) started here: requests on its stdin, replies on
    its stdout. `purpose` names it on its command line (what `ps` shows; what a test counts)."""

    def __init__(self, purpose):
        self._cap = process_cap()
        self._process = subprocess.Popen(
            worker_command(self._cap, purpose), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=sandbox_environment(), start_new_session=True, bufsize=0)
        super().__init__(self._process.stdout.fileno())

    def send(self, message):
        self._process.stdin.write(protocol.dumps(message))
        self._process.stdin.flush()

    def kill(self):
        process = self._process
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._cap.kill_all()  # everything the worker started, wherever it went
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        try:  # the worker writes nothing to stderr once student code runs: this is bwrap's or Python's
            stderr = process.stderr.read(64_000).decode("utf-8", "replace").strip()[-500:]
        except (OSError, ValueError):
            stderr = ""
        for pipe in (process.stdin, process.stdout, process.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        return code, stderr


class KernelConnection(LineChannel):
    """The notebook's own kernel, after nbgrader has run every cell in it: requests and replies over the
    Unix socket its launcher listens on (sandboxed_worker/kernel.py). Its namespace is the notebook's,
    already loaded. `stop` kills the kernel (a call that hangs there cannot be interrupted); closing
    this connection, when the checks are done or have given up on it, does too.

    The socket's path lies in the kernel's sandbox, where the student's code may have put a link to a
    socket elsewhere (a classmate's kernel's): the process that listens must be in the kernel's own
    pid namespace (`peer`, sandbox.pid_namespace), asked of the kernel (SO_PEERCRED) before anything
    is sent."""

    CONNECT_TIMEOUT_S = 5

    def __init__(self, path, stop, peer=None):
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop = stop
        try:
            self._socket.settimeout(self.CONNECT_TIMEOUT_S)
            self._socket.connect(str(path))
            if peer is not None:
                credentials = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                listener = struct.unpack("3i", credentials)[0]
                if pid_namespace(listener) != peer:
                    raise ConnectionRefusedError(f"the socket's listener (pid {listener}) is not in the kernel's sandbox")
            self._socket.settimeout(course_config.CALL_TIMEOUT_S)  # a send the kernel does not read stops
        except OSError:
            self._socket.close()
            raise
        super().__init__(self._socket.fileno())

    @classmethod
    def open(cls, path, stop, peer=None, log=None):
        """A connection to the kernel's checks socket at `path` that has answered a ping, or None when
        nothing of the kernel's answers there within CONNECT_TIMEOUT_S (a kernel of another kind, or one
        whose listener the student's code closed, took or linked elsewhere): a worker answers instead,
        and no check lost any time."""
        connection = None
        try:
            connection = cls(path, stop, peer)
            connection.send({"op": "ping"})
            if connection.receive(time.monotonic() + cls.CONNECT_TIMEOUT_S) == {"ok": True}:
                return connection
            reason = "it did not answer a ping as the protocol says"
        except (OSError, EOFError, protocol.ProtocolError) as err:  # TimeoutError is an OSError
            reason = f"{type(err).__name__}: {err}"
        if log is not None:
            log.info("the kernel does not answer the checks (%s); a worker will", reason)
        if connection is not None:
            connection._socket.close()  # the kernel is left running: nbclient shuts it down as always
        return None

    def send(self, message):
        self._socket.sendall(protocol.dumps(message))

    def kill(self):
        try:
            self._socket.close()
        finally:
            self._stop()
        return None, ""


class SandboxedStudent(StudentCode):
    """A student's notebook code in a sandboxed process that answers the grader's requests.

    That process is the notebook's own kernel when one is given (`kernel`, a KernelConnection, after
    nbgrader has run the notebook in it), else a worker started on first use that loads the cells
    (`cells`) itself. If a call hangs or the process dies, it is killed (with every process it
    started) and `StudentUnresponsive` is raised; the next call starts a fresh worker. If loading
    the notebook code itself hangs or fails to start, every later call fails at once with that
    reason, so a broken submission costs one time-out, not one per check. `skipped_cells` (cell
    index -> why) are left out of a worker's load from the start: the cell that stopped the kernel.
    `broken` says why nothing can be called at all (the submission's time is up).
    """

    def __init__(self, cells, sources=None, answers=None, kernel=None, skipped_cells=None, broken=None,
                 purpose="checks"):
        self.cells = list(cells)
        self.sources = list(sources if sources is not None else cells)
        self.answers = dict(answers) if answers is not None else None
        self.load_errors = []
        self.skipped_cells = dict(skipped_cells or {})  # cell index -> why it was left out
        self.broken = broken  # why this student's code cannot be called at all
        self.purpose = purpose
        self._channel = kernel

    def _limit(self, timeout):
        """The deadline of a request: the call's own, the check's budget or the submission's clock,
        whichever ends first. One that has already ended stops the request before it is sent."""
        limit = first_to_end(call_deadline(timeout), self.check_deadline, submission_deadline())
        if limit.remaining() <= 0:
            raise StudentUnresponsive(limit.reason)
        return limit

    def _request(self, message, timeout):
        if self.broken:
            raise StudentUnresponsive(self.broken)
        self._limit(timeout)
        if self._channel is None:
            began = time.monotonic()
            self._start()
            if self.check_deadline is not None:  # loading the notebook is not the check's time
                self.check_deadline.at += time.monotonic() - began
        limit = self._limit(timeout)  # the call's own time starts once the worker is up
        try:
            self._channel.send(message)
            reply = self._channel.receive(limit.at)
        except TimeoutError:
            self._kill()
            raise StudentUnresponsive(limit.reason) from None
        except (EOFError, BrokenPipeError, OSError):
            code, _ = self._kill()
            raise StudentUnresponsive(f"the process running your code died ({_exit_reason(code)})") from None
        except protocol.ProtocolError as err:
            self._kill()
            raise StudentUnresponsive(f"your function's answer could not be read by the grader ({err}; at most "
                                      f"{protocol.MAX_MESSAGE_BYTES >> 20} MB and tensors of "
                                      f"{protocol.MAX_ARRAY_ELEMENTS:,} elements are read)") from None
        return reply

    def _start(self):
        """Start a worker and load the student's cells one at a time.

        A cell that hangs past CELL_TIMEOUT_S or kills the worker (os._exit, a
        crash) is skipped and the worker restarted without it, so the rest of
        the notebook can still be graded. Loading as a whole is limited to
        WORKER_START_TIMEOUT_S; past that, or after MAX_SKIPPED_CELLS such
        cells, the student's code is reported as not callable.
        """
        deadline = time.monotonic() + course_config.WORKER_START_TIMEOUT_S
        clock = submission_deadline()
        if clock is not None:
            deadline = min(deadline, clock.at)
        while True:
            self._launch()
            index = None
            try:
                self._channel.send({"op": "ping"})  # start-up (sandbox, torch import) is not any cell's time
                self._channel.receive(deadline)
                for index, source in enumerate(self.cells):
                    if index in self.skipped_cells:
                        continue
                    self._channel.send({"op": "load", "cells": [source]})
                    cell_deadline = min(deadline, time.monotonic() + course_config.CELL_TIMEOUT_S)
                    reply = self._channel.receive(cell_deadline)
                    self.load_errors += [dict(e, cell=index) for e in reply.get("errors", [])]
                return
            except TimeoutError:
                self._kill()
                reason = f"did not finish within {course_config.CELL_TIMEOUT_S} s"
            except (EOFError, BrokenPipeError, OSError, protocol.ProtocolError):
                code, detail = self._kill()
                reason = f"killed the process running it ({_exit_reason(code)})"
                if "bwrap" in detail:  # bubblewrap itself failed: not the student's doing
                    self.broken = f"the sandbox could not start: {detail}"
                    raise StudentUnresponsive(self.broken) from None
            if clock is not None and clock.remaining() <= 0:
                self.broken = clock.reason  # the submission's time ran out, not the loading's
                raise StudentUnresponsive(self.broken)
            if index is None or time.monotonic() >= deadline or len(self.skipped_cells) >= MAX_SKIPPED_CELLS:
                self.broken = (f"your notebook's code could not be loaded within "
                               f"{course_config.WORKER_START_TIMEOUT_S} s ({reason} in code cell {index}), so its "
                               f"functions could not be called")
                raise StudentUnresponsive(self.broken)
            self.skipped_cells[index] = reason
            self.load_errors = [e for e in self.load_errors if e["cell"] < index]

    def _launch(self):
        try:
            self._channel = WorkerProcess(self.purpose)
        except OSError as err:
            self.broken = f"the sandbox could not start: {err}"
            raise StudentUnresponsive(self.broken) from None

    def _kill(self):
        """Stop the process answering (the kernel, or a worker) and everything it started; return (exit
        code, the end of its stderr)."""
        channel, self._channel = self._channel, None
        return channel.kill() if channel is not None else (None, "")

    def close(self):
        self._kill()


def _exit_reason(code):
    if code is None:
        return "no exit status"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"
