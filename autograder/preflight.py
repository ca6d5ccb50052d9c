"""Before anyone is graded: does the sandbox start here, and which process cap is in force?

Trusted code, run once by every command that grades (`make autograde`, `make autograde-gpu`).
A sandbox that cannot start must stop the grading with a clear message, not score every
student 0; a process cap that does not hold must not be found out by a fork bomb.
"""
import functools
import logging
import os
import sys

import course_config

from .sandbox import SandboxUnavailable, process_cap, withhold_gpus
from .safe_text import one_line
from .student import SandboxedStudent, StudentUnresponsive

log = logging.getLogger("attention_surgeon.preflight")

# The probe tries to start this many threads more than MAX_PROCESSES: a cap in force stops it first.
PROBE_MARGIN = 32

PROBE_CODE = '''
def ping():
    return "pong"

def cuda_tensor(device):
    """A tensor made on `device` and summed there: (its device, the sum, 12.0)."""
    import torch
    x = torch.arange(4.0, device=device)
    return [str(x.device), float((x * 2).sum())]

def start_threads(most):
    """Start up to `most` idle threads at once; return how many started before the host said no."""
    import threading
    threading.stack_size(64 * 1024)  # small stacks: the probe must not meet the memory cap first
    stop, started = threading.Event(), []
    try:
        for _ in range(most):
            thread = threading.Thread(target=stop.wait)
            thread.start()
            started.append(thread)
    except RuntimeError:  # "can't start new thread": the process cap
        pass
    finally:
        stop.set()
        for thread in started:
            thread.join()
    return len(started)
'''


def preflight():
    """Start a worker with no student code, call it, and probe its process cap.

    Returns a sentence naming the process cap in force. Raises SandboxUnavailable if the
    worker does not answer, or if no cap stopped the probe and course_config does not allow that.
    """
    cap = process_cap()  # what a sandbox gets here (the probe's own worker gets one too)
    try:
        mechanism = cap.describe()
    finally:
        cap.kill_all()  # an empty group, removed: a batch leaves nothing behind
    most = course_config.MAX_PROCESSES + PROBE_MARGIN
    with SandboxedStudent([PROBE_CODE], purpose="preflight") as probe:
        try:
            outcome = probe.call("ping")
            started = probe.call("start_threads", most).value
        except StudentUnresponsive as err:
            raise SandboxUnavailable(f"the sandboxed worker does not start on this host: {err}. Grading "
                                     f"is refused. See course_config.SANDBOX.") from None
    if outcome.value != "pong":
        raise SandboxUnavailable(f"the sandboxed worker answered {outcome.value!r} to a ping; grading is refused")
    if isinstance(started, int) and started < most:
        return (f"process cap: {mechanism}; a probe in the sandbox was stopped after {started} threads "
                f"(MAX_PROCESSES = {course_config.MAX_PROCESSES})")
    if not course_config.ALLOW_NO_PROCESS_CAP:
        raise SandboxUnavailable(
            f"no process cap holds in the sandbox on this host (mechanism: {mechanism}; a probe started "
            f"{started!r} threads, more than MAX_PROCESSES = {course_config.MAX_PROCESSES}), so a fork bomb "
            f"would run until the memory cap or the time limit. Grading is refused. Run the grader as root "
            f"(a cgroup), or as an ordinary user whose sandbox has a user namespace (RLIMIT_NPROC), or accept "
            f"this with ATTENTION_SURGEON_ALLOW_NO_PROCESS_CAP=yes (course_config.ALLOW_NO_PROCESS_CAP).")
    return (f"process cap: NONE (a probe started {started!r} threads; accepted because "
            f"course_config.ALLOW_NO_PROCESS_CAP is set)")


# The probe's call: a worker's first CUDA call starts CUDA (3.1 to 3.8 s measured on an H200 host).
CUDA_PROBE_TIMEOUT_S = 60


@functools.cache
def cuda_problem_in_the_sandbox():
    """None when a sandboxed worker, with the limits student code gets, makes a tensor on the GPU checks'
    device and computes with it there; else why not, as one line. Asked once per process (a failure is
    tried once more first), of a worker that loads no student code: a host where torch sees CUDA but the
    sandbox cannot use it (its address-space cap, its devices) must leave the GPU checks pending, not fail
    every student on them. After a failure no sandbox of this process is given the GPU (`withhold_gpus`)."""
    from .checks import attention_on_cuda

    device = attention_on_cuda.GPU_DEVICE
    for _ in range(2):
        try:
            with SandboxedStudent([PROBE_CODE], purpose="cuda-probe") as probe:
                outcome = probe.call("cuda_tensor", device, timeout=CUDA_PROBE_TIMEOUT_S)
            if outcome.raised:
                problem = f"{outcome.raised[0]}: {outcome.raised[1]}"
            elif not (isinstance(outcome.value, list) and len(outcome.value) == 2
                      and str(outcome.value[0]).startswith(device) and outcome.value[1] == 12.0):
                problem = f"a tensor made on {device} in the sandbox came back as {outcome.value!r}"
            else:
                return None
        except (StudentUnresponsive, SandboxUnavailable) as err:
            problem = f"the sandboxed worker did not answer ({err})"
    log.warning("GPU checks stay pending: CUDA does not work in the sandbox: %s", one_line(problem, 500))
    withhold_gpus(problem)
    return problem


def refuse_unless_sandbox_works():
    """For commands that grade: None when the sandbox works (its process cap is logged), else log why
    and return exit status 2."""
    try:
        log.info(preflight())
    except SandboxUnavailable as err:
        log.error(f"GRADING REFUSED: {err}")
        return 2
    return None


if __name__ == "__main__":  # make autograde's check, in a process of its own: argv[1] is the batch's pid
    from .grading_task import die_with_parent

    die_with_parent()  # a batch that is killed takes its check along
    if sys.argv[1:] and os.getppid() != int(sys.argv[1]):
        sys.exit(2)  # the batch died before this process was set to follow it
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(refuse_unless_sandbox_works() or 0)
