"""routelens.parallel: per-layer jobs on several processes give what one process gives, in order."""

from __future__ import annotations

import os

import pytest

from routelens import parallel
from routelens.errors import InputError, TraceError
from routelens.parallel import resolve_workers, run_jobs


def square_and_budget(job: int) -> tuple[int, int, str | None]:
    """A job: its square, the thread budget of the process that ran it, and its OpenBLAS threads."""
    if job < 0:
        raise TraceError(f"job {job} refused")
    return job * job, parallel.thread_budget(), os.environ.get("OPENBLAS_NUM_THREADS")


def test_jobs_on_two_processes_come_back_in_order_with_a_share_of_the_cores_each():
    jobs = list(range(7))
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    serial = run_jobs(square_and_budget, jobs, workers=1)
    pooled = run_jobs(square_and_budget, jobs, workers=2)
    assert [r[0] for r in pooled] == [r[0] for r in serial] == [j * j for j in jobs]
    share = max(1, parallel.available_cores() // 2)
    assert {r[1] for r in pooled} == {share}  # workers x threads <= cores
    assert {r[2] for r in pooled} == {str(share)}
    assert serial[0][1] == parallel.available_cores()  # this process keeps every core
    assert os.environ.get("OPENBLAS_NUM_THREADS") == before  # the parent's environment is restored


def test_a_failing_job_raises_its_own_error_in_the_caller():
    with pytest.raises(TraceError, match="job -1 refused"):
        run_jobs(square_and_budget, [3, -1, 4], workers=2)


def test_worker_count_every_core_at_most_one_per_job_and_serial_for_small_jobs(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 16)
    monkeypatch.setattr(parallel, "available_memory", lambda: 64 << 30)
    assert resolve_workers(0, 48) == resolve_workers(None, 48) == 16
    assert resolve_workers(0, 3) == 3 and resolve_workers(4, 48) == 4 and resolve_workers(1, 48) == 1
    assert resolve_workers(0, 48, tokens_per_job=1000) == 1  # a pool costs more than such jobs
    assert resolve_workers(4, 48, tokens_per_job=1000) == 4  # unless asked for
    assert resolve_workers(0, 48, bytes_per_job=16 << 30) == 3  # 75% of 64 GiB holds three 16 GiB jobs
    assert resolve_workers(0, 48, bytes_per_job=1 << 40) == 1
    with pytest.raises(InputError, match="--workers"):
        resolve_workers(-1, 4)


def test_available_memory_reads_a_positive_number_of_bytes_on_linux():
    memory = parallel.available_memory()
    assert memory is None or memory > 1 << 20
