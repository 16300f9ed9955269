"""Independent per-layer jobs on every core: a process pool whose results come back in order.

The layers of a trace are independent (analysis, placement, scoring), so ``analyze``, ``place``
and ``plan-eval`` run one job per layer in a pool of processes. Jobs carry paths, settings and
small arrays, never a trace's arrays: each worker opens the trace by its path and reads its own
layer, so nothing big is pickled and memory stays bounded by what the running jobs read.

- Processes start with ``spawn``, never ``fork``: a forked child of a process that has started
  threads (torch, BLAS, tqdm's monitor) can deadlock. (``forkserver`` would fork every worker
  from one server started with the environment of the first pool, so a later pool could not give
  its workers another thread count.)
- Each worker gets ``cores // workers`` threads (:func:`thread_budget`): its numerical libraries
  (``OMP_NUM_THREADS`` and friends) and Mt-KaHyPar (:mod:`routelens.placement.hypergraph`) run
  that many, so ``workers × threads <= cores``.
- ``workers=1`` runs the jobs in this process, one after the other: the reference a parallel run
  equals, job for job (the tests check it).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence

from .errors import InputError

MIN_PARALLEL_TOKENS = 16384  # automatic worker count: jobs over fewer tokens run in this process
MEMORY_SHARE = 0.75  # of the available memory, what the jobs running at once may take together
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset`` or a container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory available to new work (``MemAvailable``), or None where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resolve_workers(workers: int | None, num_jobs: int, bytes_per_job: int | None = None,
                    tokens_per_job: int | None = None) -> int:
    """Worker processes for ``num_jobs`` jobs: ``workers`` (None or 0: every core), at most one per job.

    Args:
        bytes_per_job: the most memory one job may take; with it, no more workers than
            :data:`MEMORY_SHARE` of the available memory holds (jobs over huge traces).
        tokens_per_job: tokens one job works on; with the automatic count (``workers`` None or 0),
            jobs over fewer than :data:`MIN_PARALLEL_TOKENS` run in this process (a pool takes
            about a second to start, more than such jobs take).

    Raises:
        InputError: a negative worker count.
    """
    if workers is not None and workers < 0:
        raise InputError(f"--workers must be 0 (every core) or more, got {workers}")
    if not workers and tokens_per_job is not None and tokens_per_job < MIN_PARALLEL_TOKENS:
        return 1
    wanted = available_cores() if not workers else int(workers)
    count = max(1, min(wanted, int(num_jobs)))
    memory = available_memory() if bytes_per_job else None
    if memory is not None:
        count = max(1, min(count, int(MEMORY_SHARE * memory) // max(int(bytes_per_job), 1)))
    return count


def shared_path(path: str | os.PathLike) -> str:
    """How a job names a file for a worker process: its absolute path."""
    return os.path.abspath(os.fspath(path))


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int | None = 1, *, progress: bool = False,
             desc: str = "", unit: str = "layer") -> list[Any]:
    """``[fn(job) for job in jobs]``, computed by ``workers`` processes (see the module docstring).

    Args:
        fn: a module-level function (it is sent to the workers by name); its result must pickle.
        jobs: picklable job descriptions (paths and settings, not big arrays).
        workers: processes (None or 0: every core; 1: in this process, in order).
        progress: show a bar over the jobs as they finish; desc, unit: its label.

    Returns:
        The results, in the order of ``jobs``.

    Raises:
        Whatever a job raised (the first failure in job order among those that finished; the jobs
        not yet started are cancelled).
    """
    from tqdm.auto import tqdm

    count = resolve_workers(workers, len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress, leave=False)
    try:
        if count == 1 or len(jobs) <= 1:
            results = []
            for job in jobs:
                results.append(fn(job))
                bar.update(1)
            return results
        return _run_in_pool(fn, jobs, count, bar)
    finally:
        bar.close()


_thread_budget: int | None = None  # set in worker processes by _start_worker


def thread_budget() -> int:
    """Threads one job may use in this process: its share of the cores in a worker, else every core."""
    return _thread_budget or available_cores()


def _start_worker(threads: int) -> None:
    global _thread_budget
    _thread_budget = threads


def _run_in_pool(fn, jobs, count: int, bar) -> list[Any]:
    results: list[Any] = [None] * len(jobs)
    threads = max(1, available_cores() // count)
    with threads_of_children(threads):
        pool = ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(threads,))
        try:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=futures.get):
                    results[futures[future]] = future.result()
                    bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # jobs not started never start
            raise
        pool.shutdown(wait=True)
    return results


@contextlib.contextmanager
def threads_of_children(threads: int) -> Iterator[None]:
    """Environment for worker processes started inside the block: ``threads`` per numerical library.

    The variables are read when a child imports numpy/torch/tokenizers, so they are set in this
    process for as long as its pool may start workers, then restored.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(int(threads)) for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
