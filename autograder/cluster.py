"""Where the batch runs: Dask distributed, one task per submission (grading_task.py).

Trusted code.

* Default (course_config.DASK_SCHEDULER empty): an embedded LocalCluster on this host,
  GRADING_PARALLELISM worker processes of one thread each, started and stopped by the batch.
* DASK_SCHEDULER=tcp://<host>:<port>: an existing cluster. Its workers are grading hosts with the
  same course package and venv, started with this module as their preload (README.md, "Grading on
  more hosts"):

      PYTHONPATH=. .venv/bin/dask worker tcp://grader:8786 --nworkers 16 --nthreads 1 \\
          --preload autograder.cluster

  `dask_setup` runs the package's preflight on that host when the worker starts and refuses to
  start it where the sandbox or the process cap does not hold; the batch asks every worker again
  before it submits anything (`refusals`).

A worker that dies mid-task (killed, out of memory) has its task run again on another worker, at
most ALLOWED_FAILURES more times; the batch applies each submission's result once, whichever run
gave it.
"""
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager

import course_config

from .sandbox import TASK_PREFIX

log = logging.getLogger("attention_surgeon.cluster")

ALLOWED_FAILURES = 1  # a task whose worker died runs once more elsewhere; then it is reported as crashed
CONNECT_TIMEOUT_S = 60


def worker_preflight():
    """On a grading host: None when the sandbox and the process cap hold here, else why not."""
    from .preflight import preflight
    from .sandbox import SandboxUnavailable, sweep_leftovers

    sweep_leftovers()
    try:
        log.info("%s: %s", os.uname().nodename, preflight())
    except SandboxUnavailable as err:
        return f"{os.uname().nodename}: {err}"
    return None


def dask_setup(worker):
    """The preload of a grading host's Dask worker: refuse to start where grading is not safe."""
    refused = worker_preflight()
    if refused:
        raise RuntimeError(f"GRADING REFUSED on this host, the worker does not start: {refused}")


@contextmanager
def grading_client():
    """A Dask client for the batch: the course's cluster, or an embedded LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.admin.tick.limit": "1h"}):  # a grading task holds its thread for long
        logging.getLogger("distributed").setLevel(logging.ERROR)  # the scheduler's chatter; failures are reported
        if course_config.DASK_SCHEDULER:
            with Client(course_config.DASK_SCHEDULER, timeout=CONNECT_TIMEOUT_S) as client:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
                yield client
            return
        # Workers of one thread: each has one grading process, busy with one submission at a time.
        # No memory limit of Dask's: what a student's code uses is capped in its sandbox. Dask's scratch
        # folder names this process, so a sweep after a killed batch removes it.
        scratch = tempfile.mkdtemp(prefix=f"{TASK_PREFIX}{os.getpid()}-dask-")
        try:
            with dask.config.set({"temporary-directory": scratch}), \
                    LocalCluster(n_workers=course_config.GRADING_PARALLELISM, threads_per_worker=1, processes=True,
                                 memory_limit=0, dashboard_address=None, silence_logs=logging.ERROR,
                                 local_directory=scratch) as cluster, Client(cluster) as client:
                yield client
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def refusals(client):
    """For a cluster of other hosts: [why] for every worker whose host refuses to grade."""
    answers = client.run(worker_preflight)
    return [why for why in answers.values() if why]
