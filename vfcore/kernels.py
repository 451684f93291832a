"""One set of CPU kernels on every x86-64 machine, so that a seed gives the same weights and the
same numbers whatever the processor.

torch picks its CPU kernels by the instruction sets it finds: ATen's own kernels, oneDNN's
convolutions and MKL's matrix products round differently with AVX-512 than with AVX2. A briefly
trained small network amplifies those differences: the smoke profile regenerated on an AVX-512
machine moved 572 of 1,144 published numbers and failed 53 checks of the claims guard against the
outputs of an AVX2 machine. Importing vfcore therefore pins all three to AVX2, which every x86-64
server of the last decade has, before torch runs its first operation (torch reads these
variables then, not at import). A value set in the environment wins. On the AVX-512 CPU where
this was measured it cost nothing at the profile's scale (the 73 smoke endpoints trained in
567-569 s pinned, 586 s not); per model, `benchmarks/bench_kernels.py` gives 0.8-1.2x the
unpinned speed, varying from run to run.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

REFERENCE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
"""The variables that choose torch's CPU kernels (ATen dispatch, oneDNN, MKL) and their value."""


def pin_reference_kernels() -> None:
    """Set the `REFERENCE` variables that are not set yet (x86-64 only); warn when torch already
    chose other kernels because it ran before vfcore was imported."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    for name, value in REFERENCE.items():
        os.environ.setdefault(name, value)
    if "torch" not in sys.modules:
        return
    wanted, used = os.environ["ATEN_CPU_CAPABILITY"], cpu_kernels()
    if used not in (wanted.upper(), "DEFAULT"):
        warnings.warn(f"torch ran CPU operations before vfcore was imported and uses its {used} "
                      f"kernels, not {wanted}: results can differ from other machines'; import "
                      "vfcore before using torch", stacklevel=3)


def cpu_kernels() -> str:
    """The instruction set of torch's CPU kernels in this process (e.g. "AVX2"): part of the
    endpoint cache key, so that a cache copied between machines never serves other weights."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
