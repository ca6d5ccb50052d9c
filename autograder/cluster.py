"""Where the batch runs: Dask distributed, one task per submission (grading_task.py).

Trusted code.

A Dask client can run any code on its cluster's workers, outside every sandbox, so no one but the
grader may reach the cluster: every connection is TLS with certificates on both sides.

* Default (course_config.DASK_SCHEDULER empty): an embedded LocalCluster on this host,
  GRADING_PARALLELISM worker processes of one thread each, started and stopped by the batch, with
  certificates made for this batch alone (Dask's temporary Security). Its ports listen on
  127.0.0.1, where the hub's students are too: without the batch's certificate they cannot talk to it.
* DASK_SCHEDULER=tls://<host>:<port>: an existing cluster. Its workers are grading hosts with the
  same course package and venv, started with this module as their preload (README.md, "Grading on
  more hosts"); the certificates are Dask's own settings (DASK_DISTRIBUTED__COMM__TLS__*, required
  with DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION), on the grader, the scheduler and every worker:

      PYTHONPATH=. .venv/bin/dask worker tls://scheduler:8786 --nworkers 16 --nthreads 1 \\
          --preload autograder.cluster

  `dask_setup` runs the package's preflight on that host when the worker starts and refuses to
  start it where the sandbox or the process cap does not hold; the batch asks every worker again
  before it submits anything (`refusals`).

A worker that dies mid-task (killed, out of memory) has its task run again on another worker, at
most ALLOWED_FAILURES more times (the embedded cluster; a scheduler of its own reads its own
`distributed.scheduler.allowed-failures`); the batch applies each submission's result once,
whichever run gave it.
"""
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager

import course_config

from .sandbox import TASK_PREFIX, SandboxUnavailable

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
    """A Dask client for the batch: the course's cluster, or an embedded LocalCluster. The batch enters
    it in another thread, so the cluster starts while the batch prepares: the client is never made
    "current" (a context variable of the thread that made it); pass `client.loop` where Dask asks."""
    import dask
    from distributed import Client, LocalCluster
    from distributed.security import Security

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.admin.tick.limit": "1h"}):  # a grading task holds its thread for long
        logging.getLogger("distributed").setLevel(logging.ERROR)  # the scheduler's chatter; failures are reported
        if course_config.DASK_SCHEDULER:
            security = Security(require_encryption=True)  # the certificates of Dask's configuration
            if not (security.tls_ca_file and security.tls_client_cert):
                raise SandboxUnavailable("ATTENTION_SURGEON_DASK_SCHEDULER is set, but Dask has no TLS certificate "
                                         "for this client (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._CLIENT__CERT "
                                         "and ..._CLIENT__KEY; README.md, \"Grading on more hosts\")")
            client = Client(course_config.DASK_SCHEDULER, timeout=CONNECT_TIMEOUT_S, security=security)
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
                yield client
            finally:
                client.close()
            return
        # Workers of one thread: each has one grading process, busy with one submission at a time.
        # No memory limit of Dask's: what a student's code uses is capped in its sandbox. Dask's scratch
        # folder names this process, so a sweep after a killed batch removes it.
        scratch = tempfile.mkdtemp(prefix=f"{TASK_PREFIX}{os.getpid()}-dask-")
        try:
            with dask.config.set({"temporary-directory": scratch}), \
                    LocalCluster(n_workers=course_config.GRADING_PARALLELISM, threads_per_worker=1, processes=True,
                                 memory_limit=0, dashboard_address=None, silence_logs=logging.ERROR,
                                 local_directory=scratch, security=Security.temporary()) as cluster:
                client = Client(cluster, security=cluster.security)
                try:
                    yield client
                finally:
                    try:  # each grading process ends what it started ahead (grading_task.stop_grading_processes)
                        client.run(stop_grading_processes)
                    except Exception as err:  # noqa: BLE001 - a worker that is gone; the sweep finds its leftovers
                        log.warning("stopping the grading processes: %s: %s", type(err).__name__, err)
                    client.close()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def stop_grading_processes():
    """On a worker of the embedded cluster, as it closes: grading_task.stop_grading_processes."""
    from .grading_task import stop_grading_processes

    return stop_grading_processes()


def worker_digest():
    """On a grading host: the digest of the course package it grades with (grading_task.package_digest)."""
    from .grading_task import package_digest

    return package_digest()


def refusals(client, digest):
    """For a cluster of other hosts: [why] for every worker whose host refuses to grade (its sandbox or
    process cap does not hold), or grades with another package than this batch's `digest`."""
    answers = client.run(worker_preflight)
    digests = client.run(worker_digest)
    return [why for why in answers.values() if why] + [
        f"the grading host of worker {address} has another version of the course package (autograder/, "
        f"source/, requirements.lock or the grading policy): update it to the grader's"
        for address, theirs in digests.items() if theirs != digest]
