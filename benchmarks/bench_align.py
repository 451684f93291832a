"""Timing of weight and activation matching on CPU (prints figures; asserts nothing).

Weight matching: two independently initialised width-1 VGG16s (seeds 0 and 1) and two width-4
ResNet20s, best of three runs after one warm-up (issue 9's target: a full-width VGG16 under 1 s
on 2 cores). Activation matching: 5,000 random 32x32 images in batches of 500 through width-1/8
VGG16s and width-1/2 ResNet20s (stand-ins for the smoke models). ZipIt! and CCA maps for one
512-unit group.

Run: python benchmarks/bench_align.py [--threads N]. On a shared machine, compare the load average
it prints: two threads slow down badly when other processes hold the cores.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from vfcore.features import FeatureStats, activation_matching
from vfcore.matchers import cca_maps, zip_group
from vfcore.models import build_model
from vfcore.spec import spec_for
from vfcore.weight_matching import match_weights, matching_objective


def pair(name: str, width: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two models of one architecture, initialised with seeds 0 and 1."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(name, width=width).eval())
    return models[0], models[1]


def _best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_wm(name: str, width: float, runs: int = 3) -> None:
    """Weight matching, best of `runs` after a warm-up call."""
    a, b = pair(name, width)
    spec = spec_for(a)
    sa, sb = a.state_dict(), b.state_dict()
    result = match_weights(spec, sa, sb, seed=0)
    seconds = _best_of(runs, lambda: match_weights(spec, sa, sb, seed=0))
    before = matching_objective(spec, sa, sb, {})
    after = matching_objective(spec, sa, sb, result.perms)
    print(f"WM {name} width {width:g}: {seconds:.2f} s, {result.sweeps} sweeps, "
          f"{result.solves} assignment solves over {len(spec.groups)} groups, "
          f"objective {before:.4g} -> {after:.4g}")


def bench_am(name: str, width: float, n: int = 5000, batch: int = 500) -> None:
    a, b = pair(name, width)
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    activation_matching(a, b, images.split(batch))
    seconds = time.perf_counter() - start
    print(f"AM {name} width {width:g}: {seconds:.2f} s on {n} images (batch {batch})")


def bench_group_matchers(d: int = 512, n: int = 4096) -> None:
    """ZipIt! and CCA on one d-unit group whose features are correlated across the two models."""
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(n, d, generator=gen)
    stats = FeatureStats(d)
    stats.add(shared + 0.5 * torch.randn(n, d, generator=gen),
              shared[:, torch.randperm(d, generator=gen)] + 0.5 * torch.randn(n, d, generator=gen))
    for label, fn in (("ZipIt!", lambda s: zip_group(s).maps()), ("CCA", cca_maps)):
        start = time.perf_counter()
        fn(stats)
        print(f"{label} maps for one {d}-unit group: {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads (default: min(2, cores))")
    threads = parser.parse_args().threads
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    bench_wm("vgg16", 1.0)
    bench_wm("resnet20", 4.0)
    bench_am("vgg16", 1 / 8)
    bench_am("resnet20", 1 / 2)
    bench_group_matchers()


if __name__ == "__main__":
    main()
