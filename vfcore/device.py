"""Where computation runs: the CPU core budget and the torch device.

Every entry point that trains or evaluates calls `limit_threads` so torch never starts more CPU
threads than the cores this process may use, and `resolve_device` so "auto" means the GPU when
one is present and a CUDA request on a machine without one fails with a clear message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def cpu_cores() -> int:
    """Number of CPU cores this process may run on: `$VFCORE_CORES` when set, else its affinity
    mask where the OS has one.

    The variable gives the budget a scheduler allocated when the mask does not show it, or
    deliberately more threads than cores, to check that results do not depend on the thread
    count (`OMP_NUM_THREADS=4 VFCORE_CORES=4` on a 2-core machine computes what 4 threads do).
    """
    budget = os.environ.get("VFCORE_CORES", "").strip()
    if budget:
        if not budget.isdigit() or int(budget) < 1:
            raise ValueError(f"VFCORE_CORES={budget!r} is not a positive whole number of cores; "
                             "set it to e.g. 4, or unset it to use this process's cores")
        return int(budget)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def limit_threads() -> None:
    """Cap torch's intra-op threads at the number of usable cores (never raise the count)."""
    cores = cpu_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run a block on exactly `count` torch CPU threads (None: leave the setting alone)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to use: None or "auto" picks CUDA when available, else the CPU.

    An explicit CUDA request on a machine without a usable GPU raises instead of silently
    falling back, so a GPU run that is not one is noticed at once.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
        ) from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was requested but CUDA is not available here; "
                "use device='cpu' or 'auto'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return resolved


def model_device(model: torch.nn.Module) -> torch.device:
    """Where `model`'s parameters live (the CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
