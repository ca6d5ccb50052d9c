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

So the student's code is loaded once per notebook. While a submission is graded, one
process per submission (`--template`, `serve_forks`) imports torch and ipykernel and
forks each notebook's kernel, so torch is imported once per submission. The grader
trusts nothing here beyond the values that come back. If this kernel died, ran out
of time or hangs on a call, the grader asks a fresh worker instead (student.py).
"""
import json
import os
import shutil
import signal
import socket
import sys
import threading

from protocol import CHECKS_SOCKET_VARIABLE, dumps, loads
from worker import Session, install_tripwires, serve


def answer_checks(listener, get_ipython):
    """Serve the grader, one connection at a time, with the kernel's namespace as it is then. Each request
    is handled in the kernel's main thread, where the notebook's cells ran: torch's grad mode and default
    device are per thread, and a call must see them as the student's cells left them."""
    from ipykernel.kernelapp import IPKernelApp

    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return  # the listener is closed (the student's code closed it): the grader asks a worker
        main_loop = IPKernelApp.instance().io_loop
        try:
            main_loop_call(main_loop, _close_figures)
            with connection, connection.makefile("rb") as requests, connection.makefile("wb") as replies:
                serve(Session(namespace=get_ipython().user_ns), requests, replies,
                      run=lambda handle: main_loop_call(main_loop, handle))
        except Exception:  # noqa: BLE001 - the grader hung up; keep listening (it decides what a silence means)
            pass


def main_loop_call(main_loop, function):
    """function(), run in the kernel's main thread (its event loop), once it is idle; its result."""
    done, outcome = threading.Event(), {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err
        finally:
            done.set()

    main_loop.add_callback(run)
    done.wait()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _close_figures():
    """No figure left open by the notebook's last cells (as JupyterLab's inline backend closes them after
    each cell): a function that draws on pyplot's current figure starts from none, as in a worker."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def listen_for_checks(path):
    """Answer the hidden checks on the Unix socket at `path`, in a thread of this process."""
    from IPython import get_ipython  # here, not in the thread: two threads importing IPython at once can
    #                                   meet a half-initialised module
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    threading.Thread(target=answer_checks, args=(listener, get_ipython), name="hidden-checks", daemon=True).start()


def launch_kernel(argv):
    """ipykernel, as ipykernel_launcher starts it. The script's folder is not where the student's imports
    look (a module of theirs named worker or protocol is theirs); IPython puts the working folder first."""
    from ipykernel import kernelapp

    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    for name in ("protocol", "worker"):
        sys.modules.pop(name, None)
    kernelapp.launch_new_instance(argv=argv)


def prepare():
    """What every kernel needs before the student's first cell: torch, IPython and ipykernel imported
    (no tensor op, no thread, no CUDA call yet), the tripwires in place."""
    import torch  # noqa: F401 - imported once, before any cell (the notebook imports it too)
    import matplotlib.pyplot  # noqa: F401
    import IPython  # noqa: F401
    from ipykernel import kernelapp  # noqa: F401

    install_tripwires()


def serve_forks(control_path):
    """The template of one submission: fork a kernel for each of its notebooks, on the grader's request
    ({"connection": the kernel's connection file, "folder": its working folder, "env": {...} (with
    CHECKS_SOCKET_VARIABLE), "arguments": ipykernel's other options}), and reply with the child's pid
    (in this sandbox). Nothing here ever runs a student's cell."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernels that end are reaped by the system
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(control_path)
    control.listen(1)
    connection, _ = control.accept()  # one grader, for the life of the template
    requests, replies = connection.makefile("rb"), connection.makefile("wb")
    for line in requests:
        request = loads(line)
        clear_scratch()
        pid = os.fork()
        if pid == 0:
            try:
                for closing in (requests, replies, connection, control):
                    closing.close()
                run_forked_kernel(request)
            finally:
                os._exit(1)
        replies.write(dumps({"pid": pid}))
        replies.flush()


def clear_scratch():
    """Before the next notebook's kernel: the earlier kernels' folders and files go (they have ended; the
    grader runs a submission's notebooks one after another), so each notebook starts with the room and
    the files a kernel of its own would have."""
    for folder in (TEMPLATE_WORK_DIR, "/tmp", "/dev/shm"):
        for entry in os.listdir(folder) if os.path.isdir(folder) else []:
            path = os.path.join(folder, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass


def run_forked_kernel(request):
    """In a child of the template: become one notebook's kernel, in a copy of the assignment folder."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the student's own subprocesses are waited for as usual
    os.setsid()
    folder = request["folder"]
    try:
        shutil.copytree(ASSIGNMENT_DIR, folder, symlinks=True, ignore=shutil.ignore_patterns("*.ipynb"))
    except OSError:  # what does not fit stays out, as with a kernel of its own
        os.makedirs(folder, exist_ok=True)
    os.chdir(folder)
    os.environ.update(request["env"])
    connection = request["connection"]
    os.makedirs(os.path.dirname(connection["ip"]), exist_ok=True)  # the kernel's sockets: a folder of its own
    connection_file = os.path.join(os.path.dirname(connection["ip"]), "kernel.json")
    with open(connection_file, "w") as out:
        json.dump(connection, out)
    listen_for_checks(os.environ.pop(CHECKS_SOCKET_VARIABLE))
    launch_kernel(["-f", connection_file, *request.get("arguments", [])])
    os._exit(0)


ASSIGNMENT_DIR = "/assignment"  # where the sandbox shows the submission's folder, read-only (sandbox.py)
TEMPLATE_WORK_DIR = "/kernels"  # the template's tmpfs of kernels' working folders (sandbox.py)


def main():
    prepare()
    if sys.argv[1:2] == ["--template"]:
        serve_forks(sys.argv[2])
        return
    path = os.environ.pop(CHECKS_SOCKET_VARIABLE, None)
    if path:
        listen_for_checks(path)
    launch_kernel(sys.argv[1:])


if __name__ == "__main__":
    main()
