"""The student's Jupyter kernel, which also answers the hidden checks once nbgrader has run the notebook.

Untrusted, like worker.py: it runs in the student's sandbox (autograder/sandbox.py,
`kernel_command`), in place of `python -m ipykernel_launcher`:

    python /grader/kernel.py -f <connection file>

Before the kernel starts it imports torch, puts the tripwires in place (worker.py)
and listens on the Unix socket the grader named (protocol.CHECKS_SOCKET_VARIABLE,
in the sandbox's own IPC tmpfs). Then the notebook runs as in any kernel. When every
cell has run, the grader connects and asks the hidden checks' requests, one JSON
line each way, exactly as it asks a worker; the kernel's own namespace answers,
through the same `Session`:

    grader (trusted)                          this kernel (untrusted)
    ----------------                          -----------------------
    nbclient: execute cell 1 .. cell n  --->  the notebook runs (ZeroMQ, as always)
    connect to the checks socket        --->  a thread of this process accepts
    {"op": "call", "function": ...}     --->  Session.handle: the kernel's functions
                                        <---  {"result": {...arrays...}}

So the student's code is loaded, and torch imported, once per notebook. The grader
trusts nothing here beyond the values that come back. If this kernel died, ran out
of time or hangs on a call, the grader asks a fresh worker instead (student.py).
"""
import os
import socket
import sys
import threading

from protocol import CHECKS_SOCKET_VARIABLE
from worker import Session, install_tripwires, serve


def answer_checks(listener, get_ipython):
    """Serve the grader, one connection at a time, with the kernel's namespace as it is then."""
    while True:
        try:
            connection, _ = listener.accept()
            with connection, connection.makefile("rb") as requests, connection.makefile("wb") as replies:
                serve(Session(namespace=get_ipython().user_ns), requests, replies)
        except Exception:  # noqa: BLE001 - the grader hung up; keep listening (it decides what a silence means)
            pass


def main():
    path = os.environ.pop(CHECKS_SOCKET_VARIABLE, None)
    import torch  # noqa: F401 - imported once, before any cell (the notebook imports it too)
    from IPython import get_ipython  # here, not in the thread: two threads importing IPython at once can
    from ipykernel import kernelapp  # meet a half-initialised module

    install_tripwires()
    if path:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        threading.Thread(target=answer_checks, args=(listener, get_ipython), name="hidden-checks",
                         daemon=True).start()
    # As ipykernel_launcher does: the script's folder is not where the student's imports look (a module of
    # theirs named worker or protocol is theirs); IPython puts the working folder first.
    del sys.path[0]
    for name in ("protocol", "worker"):
        sys.modules.pop(name, None)
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
