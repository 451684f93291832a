"""The one general cell of the merging studies: merge a pair one way, measure the result.

A `Merge` names every choice of a merged model (alignment, merge coefficient, preserved or
unmerged layers, partial alignment, bias handling, normalisation). `merge_cells` builds each
merged model once per pair and measures what was asked:

- "accuracy": test accuracy (%); "train_accuracy": the same on as many training images;
- "vf": the normalised input-induced feature E||g^(l)|| / mean_i E||g_i^(l)|| at each measured
  layer (`scale`), its upper bound (`bound`; smoothed with gamma 1.4, or tight) and the bound on
  the paper's 20-point depth axis (`depth`); with `norms`, the norm layer after each weight layer
  is measured too (Figs 2B, 11, 12), and a PFM model's preserved layers count as exactly 1;
- "offset": E||g^(l)|| and ||h^(l)|| = ||f^(l)(0)|| per weight layer, unnormalised (Fig. 12).

At alpha = 0 and 1 the "merged model" is the endpoint itself, unnormalised (ZipIt!'s merge is not
defined there, and the line's ends are the endpoints for every method).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from .. import vf
from ..align import Alignment, align
from ..merge import with_state
from ..normalize import remove_biases, repair, reset_bn
from ..pfm import partial_zip
from ..pipeline import aligned_models, merge_models
from ..regmean import regression_merge
from ..ties import ties_merge
from ..transform import permute
from .setup import Setup

VERSION = 1
METRICS = ("accuracy", "train_accuracy", "vf", "offset")


@dataclass(frozen=True)
class Merge:
    """How a pair is merged. `preserved`: the PFM layer count l; `unmerged`: last layers kept apart
    (partial zipping, with `norm` applied to the fully merged model first); `permuted`: only the
    first `permuted` layers' groups aligned (Fig. 4 Left); `restart`: weight-matching seed;
    `bias`: "interpolate", "calibrate" (Bias Cal.), "remove" (Bias Removal of the last `k`
    merged layers; k = 0 removes none) or "remove_first" (of the first `k`: the forward removal
    of Fig. 13). `merger` replaces the interpolation of the aligned weights (notebook 09):
    "regmean" and "chain" (`vfcore.regmean`; BN statistics are re-estimated by the merge
    itself), "ties_zero" and "ties_midpoint" (`vfcore.ties` at `density`)."""

    matcher: str = "direct"
    alpha: float = 0.5
    preserved: int = 0
    norm: str = "none"
    bias: str = "interpolate"
    k: int = 0
    unmerged: int = 0
    permuted: int | None = None
    restart: int = 0
    merger: str = "average"
    density: float = 1.0

    @property
    def coords(self) -> dict[str, Any]:
        setting = [f"bias={self.bias}" + (f":{self.k}" if self.bias.startswith("remove") else "")
                   ] if self.bias != "interpolate" else []
        setting += [f"{name}={value}" for name, value in (
            ("unmerged", self.unmerged), ("restart", self.restart)) if value]
        if self.permuted is not None:
            setting.append(f"permuted={self.permuted}")
        if self.merger != "average":
            setting.append(f"merger={self.merger}")
            if self.merger.startswith("ties"):
                setting.append(f"density={self.density:g}")
        return {"matcher": self.matcher, "norm": self.norm, "alpha": self.alpha,
                "l": self.preserved, "setting": ",".join(setting) or None}


@dataclass(frozen=True)
class Measure:
    """What to measure on each merged model."""

    metrics: tuple[str, ...] = ("accuracy",)
    norms: bool = False
    bound: str = "smoothed"

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")


def alignment(setup: Setup, model: str, pair: int, matcher: str, *, restart: int = 0,
              dataset: str | None = None, **train: float) -> Alignment:
    """The pair's alignment with `matcher` (computed once per process)."""
    dataset = dataset or setup.profile.dataset_for(model)

    def make() -> Alignment:
        a, b = setup.endpoints(model, pair, dataset, **train)
        return align(a, b, matcher, setup.calibration(a, dataset, pair), seed=restart,
                     max_iter=100)

    return setup.memo(("alignment", model, pair, matcher, restart, dataset,
                       tuple(sorted(train.items()))), make)


def _partially_aligned(al: Alignment, b: nn.Module, permuted: int) -> Alignment:
    """The permutation alignment restricted to the groups of the first `permuted` layers."""
    groups = [al.spec.axes[f"{name}.weight"][0] for name in b.weight_layers[:permuted]]
    perms = {g: al.maps[1][g] for g in groups if g is not None and g in al.maps[1]}
    return replace(al, maps=({}, perms), states=(al.states[0],
                                                 permute(al.spec, perms, b.state_dict())))


def build(setup: Setup, model: str, pair: int, merge: Merge, *, dataset: str | None = None,
          **train: float) -> nn.Module:
    """The merged model that `merge` describes."""
    dataset = dataset or setup.profile.dataset_for(model)
    a, b = setup.endpoints(model, pair, dataset, **train)
    if merge.alpha in (0.0, 1.0):
        return a if merge.alpha == 0.0 else b
    al = alignment(setup, model, pair, merge.matcher, restart=merge.restart, dataset=dataset,
                   **train)
    if merge.permuted is not None:
        al = _partially_aligned(al, b, merge.permuted)
    calibration = setup.calibration(a, dataset, pair)
    options = dict(alpha=merge.alpha, norm=merge.norm, calibration=calibration,
                   bias_calibration=merge.bias == "calibrate",
                   removed_biases=merge.k if merge.bias == "remove" and merge.k else None)
    if merge.bias == "remove_first":
        return remove_biases(merge_models(a, b, al, **options), merge.k, from_end=False)
    if merge.merger in ("regmean", "chain"):
        return regression_merge(a, b, al.at(merge.alpha), calibration, alpha=merge.alpha,
                                variant=merge.merger)
    if merge.merger.startswith("ties"):
        state = ties_merge(al.at(merge.alpha).states, base=merge.merger.removeprefix("ties_"),
                           density=merge.density)
        return normalise(with_state(a, state), (a, al), merge.norm, merge.alpha, calibration)
    if merge.unmerged:
        trunk = merge_models(a, b, al, **options)
        return partial_zip(a, b, merge.unmerged, alignment=al, alpha=merge.alpha,
                           merged_state=trunk.state_dict())
    return merge_models(a, b, al, n_preserved=merge.preserved, **options)


def normalise(model: nn.Module, origin: tuple[nn.Module, Alignment], norm: str, alpha: float,
              calibration: list) -> nn.Module:
    """`norm` applied to a model merged by another rule than interpolation (TIES), with the
    targets `merge_models` uses: RESET, or REPAIR/RESCALE towards the aligned endpoints."""
    template, al = origin
    if norm == "none":
        return model
    if norm == "reset":
        return reset_bn(model, calibration)
    return repair(model, aligned_models(template, al.at(alpha)), [1 - alpha, alpha], calibration,
                  mode=norm)


def _reference_norms(setup: Setup, model: str, pair: int, merge: Merge, layers: list[str],
                     dataset: str, train: dict[str, float]) -> list[vf.FeatureNorms]:
    """E||g|| of both aligned endpoints at `layers` (measured once per pair and alignment)."""
    def make() -> list[vf.FeatureNorms]:
        a, _ = setup.endpoints(model, pair, dataset, **train)
        al = alignment(setup, model, pair, merge.matcher, restart=merge.restart, dataset=dataset,
                       **train).at(merge.alpha)
        batches = setup.measure_batches(a, dataset, pair)
        return [vf.feature_norms(r, batches, layers) for r in aligned_models(a, al)]

    return setup.memo(("refnorms", model, pair, merge.matcher, merge.restart, merge.alpha,
                       tuple(layers), dataset, tuple(sorted(train.items()))), make)


def _vf_values(setup: Setup, model: str, pair: int, merge: Merge, merged: nn.Module,
               measure: Measure, dataset: str, train: dict[str, float]) -> dict[str, list]:
    a, _ = setup.endpoints(model, pair, dataset, **train)
    ref_layers = vf.vf_layers(a, include_norms=measure.norms)
    if hasattr(merged, "measured_layers"):
        paths, names = merged.measured_layers(include_norms=measure.norms)
    else:
        paths, names = ref_layers, ref_layers
    refs = _reference_norms(setup, model, pair, merge, ref_layers, dataset, train)
    keep = [ref_layers.index(n) for n in names]
    refs = [vf.FeatureNorms(names, r.g_mean[keep], r.g_std[keep], r.h[keep], r.num_samples)
            for r in refs]
    batches = setup.measure_batches(a, dataset, pair)
    scale = vf.normalized_scale(merged, refs, batches, paths, ref_layers=names)
    scale = np.concatenate([np.ones(len(ref_layers) - len(scale)), scale])
    bound = (vf.smoothed_bound(scale) if measure.bound == "smoothed" else vf.tight_bound(scale))
    return {"scale": scale.tolist(), "bound": bound.tolist(),
            "depth": vf.depth_curve(bound)[1].tolist()}


def _offset_values(setup: Setup, model: str, pair: int, merged: nn.Module, dataset: str,
                   train: dict[str, float]) -> dict[str, list]:
    a, _ = setup.endpoints(model, pair, dataset, **train)
    norms = vf.feature_norms(merged, setup.measure_batches(a, dataset, pair),
                             vf.vf_layers(merged))
    return {"g": norms.g_mean.tolist(), "h": norms.h.tolist()}


def merge_cells(setup: Setup, model: str, merges: list[Merge], measure: Measure = Measure(), *,
                pairs: range | None = None, dataset: str | None = None, study: str = "merge",
                **train: float) -> list[dict[str, Any]]:
    """Tidy rows of every merge of every pair (cached per cell)."""
    dataset = dataset or setup.profile.dataset_for(model)
    out: list[dict[str, Any]] = []
    for pair in pairs if pairs is not None else range(setup.pairs):
        jobs = setup.pair_jobs(model, pair, dataset, **train)
        for merge in merges:
            def compute(merge: Merge = merge, pair: int = pair) -> dict[str, Any]:
                merged = build(setup, model, pair, merge, dataset=dataset, **train)
                values: dict[str, Any] = {}
                if "accuracy" in measure.metrics:
                    values["accuracy"] = setup.accuracy(merged, dataset)
                if "train_accuracy" in measure.metrics:
                    values["train_accuracy"] = setup.accuracy(merged, dataset, train=True)
                if "vf" in measure.metrics:
                    values |= _vf_values(setup, model, pair, merge, merged, measure, dataset,
                                         train)
                if "offset" in measure.metrics:
                    values |= _offset_values(setup, model, pair, merged, dataset, train)
                return values

            coords = {"model": model, "pair": pair, **merge.coords,
                      "dataset": dataset, **{f"train_{k}": v for k, v in train.items()}}
            out += setup.cell(study, coords, compute, endpoints=jobs, version=VERSION,
                              params={"measure": asdict(measure)})
    return out


def endpoint_cells(setup: Setup, model: str, *, pairs: range | None = None,
                   dataset: str | None = None, study: str = "endpoints",
                   **train: float) -> list[dict[str, Any]]:
    """Test accuracy of both endpoints and of their ensemble (output average), per pair."""
    dataset = dataset or setup.profile.dataset_for(model)
    out: list[dict[str, Any]] = []
    for pair in pairs if pairs is not None else range(setup.pairs):
        jobs = setup.pair_jobs(model, pair, dataset, **train)

        def compute(pair: int = pair) -> dict[str, float]:
            a, b = setup.endpoints(model, pair, dataset, **train)
            ensemble = build(setup, model, pair, Merge(preserved=len(a.weight_layers)),
                             dataset=dataset, **train)
            return {"model_a": setup.accuracy(a, dataset), "model_b": setup.accuracy(b, dataset),
                    "ensemble": setup.accuracy(ensemble, dataset)}

        coords = {"model": model, "pair": pair, "dataset": dataset,
                  **{f"train_{k}": v for k, v in train.items()}}
        out += setup.cell(study, coords, compute, endpoints=jobs, version=VERSION)
    return out
