"""The measurements of a diagnosis: the endpoints aligned three ways and merged at alpha = 0.5
with every normalisation that applies, each merge scored, the vanishing feature of the merges,
and Preserve-First Merging swept over l = 0..L with the best alignment and normalisation."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .._version import __version__
from ..align import Alignment, align
from ..data import ImageSet
from ..evaluation import evaluate
from ..models import has_batchnorm
from ..pfm import pfm_cost
from ..pipeline import merge_models
from ..vf import FeatureNorms, feature_norms, normalized_scale, smoothed_bound, vf_layers
from .inputs import BATCH, Inputs

ALIGNMENTS = ("direct", "wm", "am")
VANISHED = 0.5
"""The smoothed bound below which the report calls the feature vanished."""


def vf_curve(model: nn.Module, references: list[FeatureNorms], inputs: list[torch.Tensor],
             layers: list[str]) -> dict[str, Any]:
    """The normalised feature scale per layer, its smoothed bound, and where that bound first
    drops below `VANISHED` (1-based layer, its name, % of depth; None if it never does)."""
    scale = normalized_scale(model, references, inputs, layers)
    bound = smoothed_bound(scale)
    below = np.flatnonzero(bound < VANISHED)
    first = int(below[0]) + 1 if below.size else None
    return {"scale": [round(float(v), 6) for v in scale],
            "bound": [round(float(v), 6) for v in bound],
            "vanishes_at": first, "vanishes_at_layer": layers[first - 1] if first else None,
            "vanishes_at_depth": round(100 * first / len(layers), 1) if first else None}


class Steps:
    """One progress bar over a diagnosis: on a terminal only and never under CI, unless
    `progress` forces it on or off."""

    def __init__(self, total: int, progress: bool | None):
        quiet = bool(os.environ.get("CI")) or not sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="step", file=sys.stderr,
                        disable=quiet if progress is None else not progress)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Show `what` while the block runs; count it as one step done when it ends."""
        self.bar.set_description(what)
        yield
        self.bar.update(1)


@dataclass
class Pair:
    """The two endpoints and what every measurement of one diagnosis shares."""

    a: nn.Module
    b: nn.Module
    calibration: list[torch.Tensor]
    measured: list[torch.Tensor]
    tests: ImageSet
    images: int
    layers: list[str]
    seed: int
    steps: Steps

    def merge(self, alignment: Alignment, norm: str, n_preserved: int = 0) -> nn.Module:
        """The endpoints merged at alpha = 0.5 (PFM for `n_preserved` > 0), normalised with
        `norm` on the calibration images."""
        return merge_models(self.a, self.b, alignment, n_preserved=n_preserved, norm=norm,
                            calibration=None if norm == "none" else self.calibration)

    def score(self, model: nn.Module) -> float:
        """Top-1 accuracy (%) on the first `images` test images."""
        return round(evaluate(model, self.tests, batch_size=BATCH, limit=self.images), 4)


def remedies(pair: Pair, norms: tuple[str, ...], references: list[FeatureNorms]
             ) -> tuple[dict[str, Alignment], list[dict[str, Any]], dict[str, Any]]:
    """Every alignment, merged with every normalisation and scored; the feature of each plain
    merge and of the best alignment with each normalisation."""
    alignments, merged, scored, curves = {}, {}, [], {}
    for method in ALIGNMENTS:
        with pair.steps.step(f"aligning ({method})"):
            alignments[method] = align(pair.a, pair.b, method, pair.calibration, seed=pair.seed)
        for norm in norms:
            with pair.steps.step(f"merging ({method}, {norm})"):
                merged[method, norm] = pair.merge(alignments[method], norm)
                scored.append({"alignment": method, "norm": norm,
                               "accuracy": pair.score(merged[method, norm])})
        with pair.steps.step(f"measuring the feature ({method})"):
            curves[method] = vf_curve(merged[method, "none"], references, pair.measured,
                                      pair.layers)
    best = max(scored, key=lambda r: r["accuracy"])["alignment"]
    for norm in norms[1:]:
        with pair.steps.step(f"measuring the feature ({best} + {norm})"):
            curves[f"{best}+{norm}"] = vf_curve(merged[best, norm], references, pair.measured,
                                                pair.layers)
    return alignments, scored, curves


def pfm_points(pair: Pair, alignment: Alignment, best: dict[str, Any]) -> list[dict[str, Any]]:
    """Accuracy and parameter ratio of PFM l/L for l = 0..L with the best merge's choices."""
    n_layers = len(pair.layers)
    points = []
    for n in range(n_layers + 1):
        if n == 0:
            score = best["accuracy"]
        else:
            with pair.steps.step(f"PFM {n}/{n_layers}"):
                # at l = L nothing merged runs: the ensemble, which no normalisation changes
                score = pair.score(pair.merge(alignment, best["norm"] if n < n_layers
                                              else "none", n))
        points.append({"l": n, "accuracy": score,
                       "params_ratio": round(pfm_cost(pair.a, n).params_ratio, 4)})
    return points


def diagnose(inputs: Inputs, images: int = 500, *, seed: int = 0,
             progress: bool | None = None) -> dict[str, Any]:
    """Every number of the report on merging `inputs.models` (two endpoints), as a JSON-able
    dict.

    Calibration (alignment, normalisation) uses `images` shuffled training images with the
    training augmentation for CNNs; the vanishing feature is measured on as many un-augmented
    training images; accuracy on the first `images` test images. `seed` seeds the image draws
    and weight matching.
    """
    a, b = inputs.models
    inputs.load_data()
    layers = vf_layers(a)
    norms = ("none", "reset") if has_batchnorm(a) else ("none", "repair", "rescale")
    total = 1 + len(ALIGNMENTS) * (2 + len(norms)) + len(norms) - 1 + len(layers)
    tests = inputs.dataset(False)
    with Steps(total, progress) as steps:
        pair = Pair(a, b, [x for x, _ in inputs.draw(images, train=True, seed=seed, augment=True)],
                    [x for x, _ in inputs.draw(images, train=True, seed=seed + 1)],
                    tests, images, layers, seed, steps)
        with steps.step("endpoints"):
            endpoints = {"a": pair.score(a), "b": pair.score(b)}
            references = [feature_norms(m, pair.measured, layers) for m in (a, b)]
        alignments, scored, curves = remedies(pair, norms, references)
        best = max(scored, key=lambda r: r["accuracy"])
        points = pfm_points(pair, alignments[best["alignment"]], best)

    mean = (endpoints["a"] + endpoints["b"]) / 2
    baseline = scored[0]["accuracy"]  # direct, no normalisation
    gap = mean - baseline
    for r in scored:
        r["recovered"] = round((r["accuracy"] - baseline) / gap, 4) if gap >= 1 else None
    return {
        "vfcore_version": __version__,
        "inputs": {"checkpoints": [{"path": str(p), "sha256": hashlib.sha256(
                       p.read_bytes()).hexdigest()} for p in inputs.paths],
                   "model": inputs.description, "data": inputs.data,
                   "calibration_images": sum(len(x) for x in pair.calibration),
                   "test_images": min(images, len(tests)), "seed": seed,
                   "device": str(inputs.device), "alpha": 0.5},
        "layers": layers,
        "chance": round(100 / tests.num_classes, 2),
        "endpoints": {**endpoints, "mean": mean, "ensemble": points[-1]["accuracy"]},
        "norms": list(norms),
        "remedies": scored,
        "best": {key: best[key] for key in ("alignment", "norm", "accuracy")},
        "vf": curves,
        "pfm": {"alignment": best["alignment"], "norm": best["norm"], "points": points},
    }
