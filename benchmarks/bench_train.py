"""What the smoke profile costs: throughput per model, endpoint accuracy, the full training bill.

    python benchmarks/bench_train.py                 # everything (about 10 minutes on 2 cores)
    python benchmarks/bench_train.py --throughput    # only the per-model throughput table
    python benchmarks/bench_train.py --keep ~/.cache/vfcore   # and keep the trained endpoints

1. Per smoke model (at its smoke width, on real Fashion-MNIST batches): training and evaluation
   throughput in images per second.
2. Every endpoint the notebooks need (`vfcore.train.notebook_endpoints`), trained from an empty
   temporary cache: wall time, CPU time and peak memory (resident set size) of the whole job,
   the time of each endpoint, then each endpoint's accuracy on the full test set.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning
# threads of two processes starve each other (measured here: 70 instead of 945 img/s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vfcore.data import load_dataset
from vfcore.device import limit_threads
from vfcore.models import build_model
from vfcore.profiles import LINEAR_MODELS, get_profile
from vfcore.train import evaluate, input_batches, notebook_endpoints, recipe_for, train_endpoint

WARMUP_STEPS = 3
TIMED_STEPS = 15


def _model(name: str, profile) -> torch.nn.Module:
    torch.manual_seed(0)
    size = 28 if name in LINEAR_MODELS else profile.image_size
    model = build_model(name, width=profile.width_of(name), in_channels=1, image_size=size)
    memory_format = torch.preserve_format if name in LINEAR_MODELS else torch.channels_last
    return model.to(memory_format=memory_format)


def throughput(name: str, profile, train_set, test_set) -> tuple[float, float]:
    """(training, evaluation) images per second of one smoke model on the CPU."""
    model = _model(name, profile)
    recipe = recipe_for(name, profile)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    steps = WARMUP_STEPS + TIMED_STEPS
    data = list(input_batches(model, train_set, recipe.batch_size, augment=recipe.augment,
                              shuffle=True, limit=steps * recipe.batch_size))
    model.train()
    for i, (x, y) in enumerate(data):
        if i == WARMUP_STEPS:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    train_rate = TIMED_STEPS * recipe.batch_size / (time.perf_counter() - start)
    evaluate(model, test_set, limit=1000)
    start = time.perf_counter()
    evaluate(model, test_set, limit=5000)
    return train_rate, 5000 / (time.perf_counter() - start)


def full_run(profile, keep: Path | None = None) -> None:
    """Train every notebook endpoint into an empty cache; report time, memory and accuracy.

    With `keep`, the cache is that (empty) folder and stays filled for the notebooks.
    """
    jobs = notebook_endpoints(profile)
    print(f"\nTraining all {len(jobs)} endpoints the notebooks need, from an empty cache "
          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    models = []
    if keep is not None and keep.exists() and any(keep.glob("*.pt")):
        raise SystemExit(f"--keep {keep}: the folder holds checkpoints; the run must start empty")
    with (contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory()) as cache:
        wall, cpu = time.perf_counter(), time.process_time()
        for name, seed, overrides in jobs:
            start = time.perf_counter()
            model = train_endpoint(name, seed=seed, profile=profile, cache_dir=cache,
                                   device="cpu", progress=False, **overrides)
            seconds = time.perf_counter() - start
            models.append((name, seed, overrides, model))
            print(f"  {name:12s} seed {seed} {str(overrides or ''):30s} {seconds:6.1f} s",
                  flush=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"TOTAL: {wall:.0f} s wall ({wall / 60:.1f} min), {cpu:.0f} s CPU, "
              f"peak RSS {peak_mib:.0f} MiB (load average now {os.getloadavg()[0]:.1f})")
        start = time.perf_counter()
        again = [train_endpoint(name, seed=seed, profile=profile, cache_dir=cache, device="cpu",
                                progress=False, **overrides) for name, seed, overrides in jobs]
        print(f"Loading all {len(again)} from the cache: {time.perf_counter() - start:.1f} s")
    test = {d: load_dataset(d, train=False) for d in {profile.dataset, profile.linear_dataset}}
    print("\nTest accuracy (full test set):")
    for name, seed, overrides, model in models:
        accuracy = evaluate(model, test[profile.dataset_for(name)])
        print(f"  {name:12s} seed {seed} {str(overrides or ''):30s} {accuracy:6.2f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--throughput", action="store_true", help="skip the full training run")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="train into this empty cache folder and keep it (e.g. the one the "
                             "notebooks use) instead of a temporary one")
    args = parser.parse_args(argv)
    limit_threads()
    profile = get_profile(args.profile)
    print(f"profile {profile.name}, torch {torch.__version__}, {torch.get_num_threads()} threads,"
          f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    names = sorted({name for name, _, _ in notebook_endpoints(profile)})
    print(f"\n{'model':12s} {'width':>6s} {'train img/s':>12s} {'eval img/s':>11s}")
    for name in names:
        dataset = profile.dataset_for(name)
        train_rate, eval_rate = throughput(name, profile, load_dataset(dataset, train=True),
                                           load_dataset(dataset, train=False))
        print(f"{name:12s} {profile.width_of(name):6.3g} {train_rate:12.0f} {eval_rate:11.0f}",
              flush=True)
    if not args.throughput:
        full_run(profile, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
