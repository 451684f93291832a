"""Time REPAIR and RESET on 5,000 random 1x32x32 calibration images (batches of 500), and the
regression merges (RegMean, Chain of Merges) on the first 1,000 of them.

Models: width-1/8 VGG16 (plain and BN) and width-1/2 ResNet20 (BN and LN), each merged at
alpha = 0.5 from two independently initialised endpoints. Target: under 30 s per run on a
2-core CPU. The regression merges also run with every pass starting from the input
(`max_cache_bytes=0`), which computes the same model: the last column is that time over the
time with passes resumed at cached cuts (the default).
Usage: python benchmarks/bench_normalize.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from vfcore.align import align
from vfcore.merge import merged_model
from vfcore.models import build_model, has_batchnorm
from vfcore.normalize import repair, reset_bn
from vfcore.regmean import regression_merge

CASES = [("vgg16", 0.125), ("vgg16_bn", 0.125), ("resnet20", 0.5), ("resnet20_ln", 0.5)]
IMAGES, BATCH, REGRESSION_IMAGES = 5000, 500, 1000


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
    print(f"{'model':<12} {'width':>6} {'method':<7} {'wall s':>8} {'cpu s':>8} "
          f"{'from input':>11}")
    few = batches[:REGRESSION_IMAGES // BATCH]
    for name, width in CASES:
        torch.manual_seed(0)
        a = build_model(name, width=width, in_channels=1).eval()
        torch.manual_seed(1)
        b = build_model(name, width=width, in_channels=1).eval()
        merged = merged_model(a, a.state_dict(), b.state_dict(), 0.5)
        direct = align(a, b, "direct")
        wall, cpu = timed(lambda m=merged, a=a, b=b: repair(m, [a, b], [0.5, 0.5], batches))
        print(f"{name:<12} {width:>6} {'REPAIR':<7} {wall:>8.2f} {cpu:>8.2f}", flush=True)
        if has_batchnorm(merged):
            wall, cpu = timed(lambda m=merged: reset_bn(m, batches))
            print(f"{name:<12} {width:>6} {'RESET':<7} {wall:>8.2f} {cpu:>8.2f}", flush=True)
        for method, variant in (("RegMean", "regmean"), ("Chain", "chain")):
            def run(cache: int, a=a, b=b, al=direct, variant=variant) -> nn.Module:
                return regression_merge(a, b, al, few, variant=variant, max_cache_bytes=cache)

            wall, cpu = timed(lambda run=run: run(2**30))
            slow, _ = timed(lambda run=run: run(0))
            print(f"{name:<12} {width:>6} {method:<7} {wall:>8.2f} {cpu:>8.2f} "
                  f"{slow / wall:>10.2f}x", flush=True)


if __name__ == "__main__":
    main()
