"""Training speed on this CPU: options compared in one run, time to a target accuracy, and the
endpoint bill of a profile.

    python benchmarks/bench_train.py                     # peak, options table, time to target
    python benchmarks/bench_train.py --options           # the options table only
    python benchmarks/bench_train.py --endpoints smoke --workers 2   # train a profile's endpoints

1. Peak: single-precision matrix multiply GFLOP/s with 1 and 2 threads (what this CPU delivers
   to dense kernels; the ceiling for the models below).
2. Options, per model and width (VGG16 plain/BN/LN at 1/8, 1/4, 1/2; ResNet20 at 1/2 and 1),
   each on real Fashion-MNIST batches padded to 32x32: train images/s and achieved GFLOP/s
   (3 x 2 x forward MACs per image) of the plain loop (NCHW, batch 128, foreach SGD, 2 threads),
   then channels-last, then fused SGD on top of it, then on top of both: batch 256 (lr scaled
   linearly), torch.compile (inductor), and one thread (the rate of one of two workers sharing
   the cores). Ratios are against the plain loop, measured in the same run.
3. Time to a target test accuracy with the smoke recipes and the chosen options (one thread, as
   endpoints train).
4. `--endpoints PROFILE`: every endpoint of a profile trained from an empty cache with `--workers`
   processes (`vfcore.jobs.train_all`): wall time, and each endpoint's test accuracy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vfcore.data import load_dataset  # noqa: E402
from vfcore.device import cpu_threads  # noqa: E402
from vfcore.endpoints import load_or_train  # noqa: E402
from vfcore.evaluation import evaluate, input_batches  # noqa: E402
from vfcore.jobs import train_all  # noqa: E402
from vfcore.models import build_model  # noqa: E402
from vfcore.pfm import pfm_cost  # noqa: E402
from vfcore.profiles import get_profile  # noqa: E402
from vfcore.recipes import lr_factor, recipe_for, schedule  # noqa: E402
from vfcore.studies import Setup  # noqa: E402
from vfcore.studies.manifest import endpoints  # noqa: E402

MODELS = [("vgg16", w) for w in (1 / 8, 1 / 4, 1 / 2)] + [
    ("vgg16_bn", w) for w in (1 / 8, 1 / 4, 1 / 2)] + [("vgg16_ln", w) for w in (1 / 8, 1 / 4)] + [
    ("resnet20", w) for w in (1 / 2, 1.0)]
OPTIONS = ("plain", "channels-last", "fused SGD", "batch 256", "compile", "1 thread")
TARGETS = {"vgg16": 85.0, "vgg16_bn": 88.0, "vgg16_ln": 82.0, "resnet20": 80.0}
WARMUP, TIMED = 3, 10


def peak(threads: int) -> float:
    """GFLOP/s of a 2048 x 2048 float32 matrix multiply."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    with cpu_threads(threads):
        a @ b
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def rate(name: str, width: float, option: str, data) -> float:
    """Training images per second of one model under one option (see the module docstring)."""
    torch.manual_seed(0)
    model = build_model(name, width=width, in_channels=1)
    cl = option != "plain"
    batch = 256 if option == "batch 256" else 128
    if cl:
        model = model.to(memory_format=torch.channels_last)
    fused = option not in ("plain", "channels-last")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * batch / 128, momentum=0.9,
                                weight_decay=1e-4, **({"fused": True} if fused else {}))
    step_fn = torch.compile(model) if option == "compile" else model
    batches = list(input_batches(model, data, batch, shuffle=True, limit=(WARMUP + TIMED) * batch))
    if not cl:
        batches = [(x.contiguous(), y) for x, y in batches]
    model.train()
    with cpu_threads(1 if option == "1 thread" else 2):
        for i, (x, y) in enumerate(batches):
            if i == WARMUP:
                start = time.perf_counter()
            loss = F.cross_entropy(step_fn(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return TIMED * batch / (time.perf_counter() - start)


def options_table(data) -> None:
    print(f"\n{'model':9s} {'width':>6s} " + " ".join(f"{o:>13s}" for o in OPTIONS))
    print(" " * 17 + "   (images/s, ratio to plain, GFLOP/s)")
    for name, width in MODELS:
        macs = pfm_cost(build_model(name, width=width, in_channels=1), 0).base_macs
        rates = [rate(name, width, o, data) for o in OPTIONS]
        cells = [f"{r:6.0f} {r / rates[0]:4.2f}x" for r in rates]
        flops = [6 * macs * r / 1e9 for r in rates]
        print(f"{name:9s} {width:6.3g} " + " ".join(f"{c:>13s}" for c in cells))
        print(f"{'':17s}" + " ".join(f"{f:>11.1f} G" for f in flops), flush=True)


def time_to_target(profile: str, data, test) -> None:
    """Train each smoke CNN with its recipe (one thread) and report when it first reaches its
    target accuracy on 2,000 test images (checked every 100 steps)."""
    prof = get_profile(profile)
    print(f"\nTime to target accuracy ({profile} recipes, one thread, checked every 100 steps)")
    for name, target in TARGETS.items():
        recipe = recipe_for(name, prof)
        torch.manual_seed(1)
        model = build_model(name, width=prof.width_of(name), in_channels=1).to(
            memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay, fused=True)
        _, total = schedule(recipe, len(data))
        step, reached, spent = 0, None, 0.0
        with cpu_threads(1):
            for epoch in range(math.ceil(recipe.epochs)):
                start = time.perf_counter()
                for x, y in input_batches(model, data, recipe.batch_size, shuffle=True,
                                          seed=epoch):
                    if step >= total or reached:
                        break
                    for group in optimizer.param_groups:
                        group["lr"] = recipe.lr * lr_factor(step, total, recipe)
                    model.train()
                    loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if recipe.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                    optimizer.step()
                    step += 1
                    if step % 100 == 0:
                        spent += time.perf_counter() - start
                        if evaluate(model, test, limit=2000) >= target:
                            reached = spent
                        start = time.perf_counter()
        final = evaluate(model, test, limit=2000)
        when = f"{reached:6.0f} s" if reached else "   never"
        print(f"  {name:9s} target {target:.0f}%: {when} (step {step}), final {final:.1f}%",
              flush=True)


def endpoint_bill(profile: str, workers: int) -> None:
    setup = Setup(profile, "cpu")
    jobs = endpoints(setup)
    with tempfile.TemporaryDirectory() as cache:
        seconds = train_all(jobs, workers=workers, cache_dir=cache)
        print(f"\n{len(jobs)} endpoints of the {profile} profile trained with {workers} "
              f"worker(s) from an empty cache: {seconds:.0f} s ({seconds / 60:.1f} min)")
        tests = {}
        for job in jobs:
            model = load_or_train(job, cache_dir=cache)
            dataset = job.dataset
            tests.setdefault(dataset, load_dataset(dataset, train=False))
            print(f"  {job.label:45s} {evaluate(model, tests[dataset]):6.2f} %", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--options", action="store_true", help="the options table only")
    parser.add_argument("--endpoints", metavar="PROFILE", help="train a profile's endpoints")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.endpoints:
        endpoint_bill(args.endpoints, args.workers)
        return 0
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"peak float32 matmul: {peak(1):.1f} GFLOP/s (1 thread), {peak(2):.1f} GFLOP/s "
          "(2 threads)")
    data, test = load_dataset("fashion_mnist", True), load_dataset("fashion_mnist", False)
    options_table(data)
    if not args.options:
        time_to_target("smoke", data, test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
