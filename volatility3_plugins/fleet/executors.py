"""Where a sweep's per-image tasks run: local processes, or an existing Dask cluster.

A task is one call of a function on one job (``run_image`` on an image): it starts a Volatility
process and returns what it printed. Both executors run the same function on the same jobs and
hand back the results in the order they end; the sweep writes every output itself, on the
machine it runs on, so both give the same files.

- :func:`run_local`: a thread per concurrent task (the work is in the child processes), as many
  as ``--jobs``.
- :func:`run_distributed`: the tasks go to a Dask ``distributed`` scheduler (``--scheduler
  tcp://HOST:8786``), whose workers must have this package installed and see the images at the
  same paths; ``--scheduler local`` starts a ``distributed.LocalCluster`` on this machine. No
  scheduling of our own: Dask places, retries on lost workers and balances the tasks.
"""

import concurrent.futures
import logging
from typing import Callable, Iterator, Sequence, Tuple, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")
#: What an executor yields: the job, and its result or the exception its task raised.
Outcome = Tuple[Job, object]

#: ``--scheduler local``: a Dask cluster on this machine, for trying the distributed path.
LOCAL_CLUSTER = "local"
#: How long to wait for a scheduler to answer (seconds).
CONNECT_TIMEOUT = 30


class ExecutorError(RuntimeError):
    """The executor cannot run at all (Dask missing, scheduler unreachable)."""


def run_local(task: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> Iterator[Outcome]:
    """Runs ``task`` on every job, ``workers`` at a time, yielding (job, result or exception)
    as each ends. Closing the iterator early cancels the tasks not started."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sweep")
    futures = {pool.submit(task, job): job for job in jobs}
    try:
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            yield futures[future], (error if error is not None else future.result())
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)


def _import_distributed():
    try:
        import distributed  # noqa: F401 (optional dependency, the fleet extra)
    except ImportError:
        raise ExecutorError(
            "--scheduler needs Dask's distributed package: pip install 'volatility3-callbackobjects[fleet]'"
        ) from None
    return distributed


def run_distributed(
    task: Callable[[Job], Result], jobs: Sequence[Job], address: str, workers: int
) -> Iterator[Outcome]:
    """Runs ``task`` on every job as tasks of the Dask scheduler at ``address`` (or of a local
    cluster of ``workers`` single-threaded workers for ``local``), yielding (job, result or
    exception) as each ends. Closing the iterator early cancels the tasks not finished."""
    distributed = _import_distributed()
    cluster = None
    try:
        if address == LOCAL_CLUSTER:
            # Threads, not processes: each task's work is in the Volatility process it starts.
            cluster = distributed.LocalCluster(
                n_workers=max(1, workers), threads_per_worker=1, processes=False,
                dashboard_address=None, silence_logs=logging.ERROR,
            )
            client = distributed.Client(cluster)
        else:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, ValueError, TimeoutError) as error:
        if cluster is not None:
            cluster.close()
        raise ExecutorError(f"cannot reach the Dask scheduler at {address}: {error}") from None
    futures = {}
    try:
        # pure=False: a task's result depends on files, not only on its argument.
        for job in jobs:
            futures[client.submit(task, job, pure=False)] = job
        for future in distributed.as_completed(list(futures)):
            try:
                yield futures[future], future.result()
            except Exception as error:  # a task that raised, or a worker lost for good
                yield futures[future], error
    finally:
        if futures:
            client.cancel(list(futures))
        client.close()
        if cluster is not None:
            cluster.close()
