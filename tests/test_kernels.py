"""vfcore pins torch's CPU kernels to one instruction set on every x86-64 machine, before torch
runs; the endpoint cache key records the kernels in use."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from vfcore.kernels import REFERENCE, cpu_kernels
from vfcore.profiles import SMOKE
from vfcore.studies import Setup

CPUINFO = Path("/proc/cpuinfo")
X86_AVX2 = (platform.machine().lower() in ("x86_64", "amd64") and CPUINFO.exists()
            and "avx2" in CPUINFO.read_text().split())


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter whose environment has none of the pinned variables."""
    clean = {k: v for k, v in os.environ.items() if k not in REFERENCE} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean, check=True)


@pytest.mark.skipif(not X86_AVX2, reason="needs an x86-64 CPU with AVX2")
def test_importing_vfcore_pins_the_reference_kernels_before_torch_runs():
    probe = "import vfcore, torch; print(torch.backends.cpu.get_cpu_capability())"
    assert _fresh(probe).stdout.split() == ["AVX2"]
    assert _fresh(probe, ATEN_CPU_CAPABILITY="default").stdout.split() == ["DEFAULT"]
    late = _fresh("import torch; torch.ones(2) + 1; import vfcore")
    if "AVX2" not in _fresh("import torch; print(torch.backends.cpu.get_cpu_capability())"
                            ).stdout:
        assert "import vfcore before using torch" in late.stderr


def test_the_endpoint_key_records_the_kernels():
    job = Setup(SMOKE, "cpu").job("vgg16", 1)
    assert job.spec["cpu_kernels"] == cpu_kernels()
