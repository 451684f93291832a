"""Which recipe trains the CPU profiles' short runs reliably: each variant from three seeds,
with vfcore's training loop (one thread per run, as endpoints train), two runs at a time.

    python benchmarks/bench_recipes.py              # the table of benchmarks/recipes.md
    python benchmarks/bench_recipes.py --quick      # one seed per variant

Prints one line per run (test accuracy on the full Fashion-MNIST test set, seconds) and a
summary per variant. The variants depart from Table 2 one knob at a time: warm-up, gradient
clipping, label smoothing, learning rate, PyTorch's default (Kaiming-uniform) initialisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from vfcore.data import load_dataset
from vfcore.device import cpu_threads
from vfcore.evaluation import evaluate
from vfcore.models import build_model
from vfcore.recipes import Recipe, recipe_for
from vfcore.training import train

BASE = Recipe(lr=0.04, epochs=2.0, augment=False)
VARIANTS: dict[str, tuple[str, float, dict]] = {
    "vgg16 lr 0.04": ("vgg16", 1 / 8, {}),
    "vgg16 + warm-up 5%": ("vgg16", 1 / 8, {"warmup": 0.05}),
    "vgg16 + warm-up, lr 0.02": ("vgg16", 1 / 8, {"warmup": 0.05, "lr": 0.02}),
    "vgg16 + warm-up + clip 2": ("vgg16", 1 / 8, {"warmup": 0.05, "grad_clip": 2.0}),
    "vgg16 + warm-up + smoothing 0.1": ("vgg16", 1 / 8, {"warmup": 0.05,
                                                        "label_smoothing": 0.1}),
    "vgg16 + warm-up, torch init": ("vgg16", 1 / 8, {"warmup": 0.05, "init": "torch"}),
    "vgg16_ln lr 0.1 + warm-up + clip": ("vgg16_ln", 1 / 8, {"lr": 0.1, "epochs": 1.0,
                                                             "warmup": 0.05, "grad_clip": 2.0}),
    "vgg16_ln lr 0.01 + warm-up + clip": ("vgg16_ln", 1 / 8, {"lr": 0.01, "epochs": 1.0,
                                                              "warmup": 0.05, "grad_clip": 2.0}),
    "resnet20_ln SGD lr 0.1 + warm-up + clip": ("resnet20_ln", 1 / 2, {
        "lr": 0.1, "epochs": 0.5, "warmup": 0.05, "grad_clip": 2.0}),
    "resnet20_ln SGD lr 0.01 + warm-up + clip": ("resnet20_ln", 1 / 2, {
        "lr": 0.01, "epochs": 0.5, "warmup": 0.05, "grad_clip": 2.0}),
    "resnet20_ln smoke recipe (Adam 5e-4)": ("resnet20_ln", 1 / 2, {"recipe": "smoke"}),
}


def run(variant: str, seed: int) -> tuple[str, int, float, float]:
    name, width, knobs = VARIANTS[variant]
    knobs = dict(knobs)
    init = knobs.pop("init", "paper")
    recipe = (recipe_for(name, "smoke") if knobs.pop("recipe", None)
              else dataclasses.replace(BASE, **knobs))
    torch.manual_seed(seed)
    model = build_model(name, width=width, in_channels=1)
    if init == "torch":
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.reset_parameters()
    start = time.perf_counter()
    with cpu_threads(1):
        train(model, load_dataset("fashion_mnist", True), recipe, seed=seed, device="cpu",
              progress=False)
        accuracy = evaluate(model, load_dataset("fashion_mnist", False))
    return variant, seed, accuracy, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed per variant")
    args = parser.parse_args(argv)
    seeds = (1,) if args.quick else (1, 2, 3)
    runs = [(v, s) for v in VARIANTS for s in seeds]
    results: dict[str, list[float]] = {}
    with ProcessPoolExecutor(2) as pool:
        for variant, seed, accuracy, seconds in pool.map(run, *zip(*runs, strict=True)):
            results.setdefault(variant, []).append(accuracy)
            print(f"{variant:42s} seed {seed}: {accuracy:6.2f}%  ({seconds:.0f} s)", flush=True)
    print("\n| variant | test accuracy per seed (%) | min |\n|---|---|---|")
    for variant, accs in results.items():
        print(f"| {variant} | {' / '.join(f'{a:.1f}' for a in accs)} | {np.min(accs):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
