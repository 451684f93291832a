"""Independent work as jobs on submitit: local worker processes by default, SLURM when asked.

submitit is small, maintained and pure Python; its local executor runs jobs as subprocesses on
this machine and its SLURM executor submits the same pickled calls to a cluster, so one code path
serves a laptop, a workstation and a SLURM cluster (DESIGN: studies and endpoints as jobs).
Locally the items are dealt round-robin to `workers` processes, each working through its share;
on SLURM every item is one array task, at most `workers` running at once.

Training a profile's endpoints (`train_all`) is the main use: every endpoint trains on one CPU
thread (`vfcore.endpoints.TRAIN_THREADS`), so N workers use N cores and produce exactly the
weights a sequential run produces.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .endpoints import Endpoint, is_cached, load_or_train, resolve_cache_dir

ENGINES = ("inline", "local", "slurm")


def _chunk(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [fn(item) for item in items]


def run(fn: Callable[[Any], Any], items: Sequence[Any], *, workers: int = 1,
        engine: str = "local", folder: str | os.PathLike | None = None,
        slurm: dict[str, Any] | None = None) -> list[Any]:
    """`[fn(item) for item in items]`, computed by `workers` workers of `engine`, in order.

    "inline" runs in this process; "local" in `workers` subprocesses (one only: inline);
    "slurm" as a SLURM job array with `slurm` as submitit parameters (e.g. partition,
    timeout_min, gpus_per_node). Job logs go to `folder` (a temporary folder by default).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    items = list(items)
    if engine == "inline" or (engine == "local" and (workers == 1 or len(items) <= 1)):
        return _chunk(fn, items)
    import submitit

    logs = Path(folder or tempfile.mkdtemp(prefix="vfcore-jobs-"))
    if engine == "slurm":
        executor = submitit.AutoExecutor(folder=logs, cluster="slurm")
        executor.update_parameters(slurm_array_parallelism=workers, **(slurm or {}))
        return [job.result() for job in executor.map_array(fn, items)]
    executor = submitit.LocalExecutor(folder=logs)
    executor.update_parameters(timeout_min=7 * 24 * 60)
    shares = [items[i::workers] for i in range(min(workers, len(items)))]
    jobs = [executor.submit(_chunk, fn, share) for share in shares]
    results = [job.result() for job in jobs]
    out: list[Any] = [None] * len(items)
    for i, share in enumerate(results):
        out[i::len(shares)] = share
    return out


def _train(job: Endpoint, cache_dir: str) -> str:
    load_or_train(job, cache_dir=cache_dir, progress=False)
    return job.key


class _Report:
    """One line per finished endpoint with an ETA, on a terminal; silent otherwise."""

    def __init__(self, jobs: Sequence[Endpoint], folder: Path, quiet: bool):
        self.jobs, self.folder, self.quiet = list(jobs), folder, quiet
        self.done = {j.key for j in self.jobs if is_cached(j, folder)}
        self.start = time.perf_counter()
        self.first = len(self.done)

    def poll(self) -> None:
        for job in self.jobs:
            if job.key not in self.done and is_cached(job, self.folder):
                self.done.add(job.key)
                trained = len(self.done) - self.first
                elapsed = time.perf_counter() - self.start
                left = len(self.jobs) - len(self.done)
                eta = elapsed / trained * left if trained else 0.0
                if not self.quiet:
                    print(f"[{len(self.done)}/{len(self.jobs)}] {job.label} trained "
                          f"({elapsed:.0f} s so far, about {eta:.0f} s left)", flush=True)


def quiet_output() -> bool:
    """Progress is shown on a terminal only, and never under CI."""
    return bool(os.environ.get("CI")) or not sys.stdout.isatty()


def train_all(jobs: Sequence[Endpoint], *, workers: int = 1, engine: str = "local",
              cache_dir: str | os.PathLike | None = None,
              slurm: dict[str, Any] | None = None, poll_s: float = 2.0) -> float:
    """Train every endpoint not yet in the cache with `workers` workers; return the seconds.

    The endpoints are identical to those of a sequential run (one CPU thread each, seeded
    initialisation and data order). Progress: one line per finished endpoint on a terminal.
    """
    folder = resolve_cache_dir(cache_dir)
    todo = [j for j in {j.key: j for j in jobs}.values() if not is_cached(j, folder)]
    start = time.perf_counter()
    if not todo:
        return 0.0
    report = _Report(todo, folder, quiet_output())
    if engine == "inline" or workers == 1:
        for job in todo:
            _train(job, str(folder))
            report.poll()
        return time.perf_counter() - start
    finished = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["keys"] = run(partial(_train, cache_dir=str(folder)), todo,
                                  workers=workers, engine=engine, slurm=slurm)
        except BaseException as err:  # re-raised in the caller's thread below
            outcome["error"] = err
        finally:
            finished.set()

    threading.Thread(target=work, daemon=True).start()
    while not finished.wait(poll_s):
        report.poll()
    report.poll()
    if "error" in outcome:
        raise outcome["error"]
    return time.perf_counter() - start
