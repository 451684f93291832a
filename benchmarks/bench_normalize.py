"""Time REPAIR and RESET on 5,000 random 1x32x32 calibration images (batches of 500).

Models: width-1/8 VGG16 (plain and BN) and width-1/2 ResNet20 (BN and LN), each merged at
alpha = 0.5 from two independently initialised endpoints. Target: under 30 s per run on a
2-core CPU. Usage: python benchmarks/bench_normalize.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from vfcore.merge import merged_model
from vfcore.models import build_model, has_batchnorm
from vfcore.normalize import repair, reset_bn

CASES = [("vgg16", 0.125), ("vgg16_bn", 0.125), ("resnet20", 0.5), ("resnet20_ln", 0.5)]
IMAGES, BATCH = 5000, 500


def timed(fn: Callable[[], nn.Module]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU time is what a shared machine's
    other load does not inflate)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch CPU threads (default: min(2, cores))")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(BATCH, 1, 32, 32, generator=g) for _ in range(IMAGES // BATCH)]
    print(f"{IMAGES} images in batches of {BATCH}, {torch.get_num_threads()} torch threads")
    print(f"{'model':<12} {'width':>6} {'method':<7} {'wall s':>8} {'cpu s':>8}")
    for name, width in CASES:
        torch.manual_seed(0)
        a = build_model(name, width=width, in_channels=1).eval()
        torch.manual_seed(1)
        b = build_model(name, width=width, in_channels=1).eval()
        merged = merged_model(a, a.state_dict(), b.state_dict(), 0.5)
        runs = {"REPAIR": lambda m=merged, a=a, b=b: repair(m, [a, b], [0.5, 0.5], batches)}
        if has_batchnorm(merged):
            runs["RESET"] = lambda m=merged: reset_bn(m, batches)
        for method, run in runs.items():
            wall, cpu = timed(run)
            print(f"{name:<12} {width:>6} {method:<7} {wall:>8.2f} {cpu:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
