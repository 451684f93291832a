"""Beyond the paper (notebook 09): methods that came after it, seen through the vanishing feature.

- regression merges (RegMean, Chain of Merges) against averaging with REPAIR/RESCALE/RESET;
- PLeaS-style partial merging against PFM at equal parameter and MAC counts;
- TIES-merging adapted to two models trained from different initialisations;
- a TADrop-style per-layer sparsity allocation against global and uniform magnitude pruning;
- a mergeability predictor over a population of small endpoint pairs.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..align import align
from ..evaluation import input_batches
from ..hooks import eval_mode, forward_until
from ..layer_sparsity import allocate, prune_allocated
from ..mergeability import nested_leave_one_group_out, pair_metrics, spearman
from ..models import has_batchnorm
from ..pfm import pfm_cost
from ..pipeline import merge_models
from ..pleas import pleas_cost, pleas_merge
from ..prune import normalize_pruned, prune
from ..ties import sign_disagreement
from .merging import Measure, Merge, alignment, endpoint_cells, merge_cells
from .pruning import pruned_models
from .setup import Setup, frame

VERSION = 1
REGRESSION_MODELS = ("vgg16", "vgg16_bn", "resnet20")
BUDGETS = (1.0, 1.25, 1.5, 1.75, 2.0)
DENSITIES = (0.2, 0.5, 1.0)
SPARSITIES = (0.7, 0.8, 0.9, 0.95)


def _norms(model: torch.nn.Module) -> tuple[str, ...]:
    return ("reset",) if has_batchnorm(model) else ("repair", "rescale")


def regression(setup: Setup) -> pd.DataFrame:
    """Accuracy and vanishing-feature curves of activation-matched midpoints: averaging alone,
    averaging + the normalisations that apply, RegMean and Chain of Merges."""
    curves = Measure(("accuracy", "vf"), norms=False)
    records = []
    for model in REGRESSION_MODELS:
        a, _ = setup.endpoints(model, 0)
        merges = [Merge("am")] + [Merge("am", norm=n) for n in _norms(a)]
        merges += [Merge("am", merger=m) for m in ("regmean", "chain")]
        records += endpoint_cells(setup, model)
        records += merge_cells(setup, model, merges, curves, study="regression")
    return frame(records)


@torch.no_grad()
def _feature_norms(model: torch.nn.Module, channels: dict[str, torch.Tensor],
                   batches: list[torch.Tensor]) -> dict[str, float]:
    """Per named layer, E_x ||g(x)|| over some of its output channels, with g(x) = f(x) - f(0);
    one pass per batch reads every layer."""
    names = list(channels)
    if not names:
        return {}
    zero = {}
    forward_until(model, torch.zeros_like(batches[0][:1]), names,
                  lambda name, out: zero.__setitem__(name, out[:, channels[name]].clone()))
    total = dict.fromkeys(names, 0.0)

    def add(name: str, out: torch.Tensor) -> None:
        g = (out[:, channels[name]] - zero[name]).flatten(1)
        total[name] += float(torch.linalg.vector_norm(g, dim=1).sum())

    for x in batches:
        forward_until(model, x, names, add)
    count = sum(len(x) for x in batches)
    return {name: t / count for name, t in total.items()}


def _merged_feature(merged: torch.nn.Module, a: torch.nn.Module, b: torch.nn.Module,
                    batches: list[torch.Tensor]) -> list[float]:
    """Per hidden layer of a PLeaS model: E||g|| over its merged units divided by the endpoints'
    mean E||g|| over the units merged into them (1: merging lost none of their feature)."""
    hidden = list(zip(a.weight_layers[:-1], merged.weight_layers, strict=False))
    units = {name: merged.units[name] for name, _ in hidden}
    shared = [(name, ours) for name, ours in hidden if len(units[name].merged_a)]
    with eval_mode(merged, a, b):
        ours = _feature_norms(merged, {o: torch.arange(len(units[n].merged_a)) for n, o in shared},
                              batches)
        in_a = _feature_norms(a, {n: units[n].merged_a for n, _ in shared}, batches)
        in_b = _feature_norms(b, {n: units[n].merged_b for n, _ in shared}, batches)
    return [ours[o] / ((in_a[n] + in_b[n]) / 2) if len(units[n].merged_a) else 1.0
            for n, o in hidden]


def partial(setup: Setup, model: str = "vgg16") -> pd.DataFrame:
    """PLeaS-style partial merges at each budget and PFM at each l (AM, with RESCALE where the
    model has no BN, RESET otherwise): accuracy, parameter and MAC ratios at the profile's width,
    and, for PLeaS, how much feature its merged units keep."""
    records = endpoint_cells(setup, model)
    a, _ = setup.endpoints(model, 0)
    norm = "reset" if has_batchnorm(a) else "rescale"
    layers = len(a.weight_layers)
    records += merge_cells(setup, model, [Merge("am", preserved=n, norm=norm if n < layers
                                                 else "none") for n in range(layers + 1)],
                           study="pfm_budget")
    shape = (1, a.config.in_channels, a.config.image_size, a.config.image_size)
    base = pfm_cost(a, 0)
    for n in range(layers + 1):
        cost = pfm_cost(a, n, shape)
        records.append({"study": "pfm_cost", "model": model, "l": n, "metric": "params_ratio",
                        "value": cost.params_ratio})
        records.append({"study": "pfm_cost", "model": model, "l": n, "metric": "macs_ratio",
                        "value": cost.macs / base.base_macs})
    dataset = setup.profile.dataset_for(model)
    for pair in range(setup.pairs):
        for budget in BUDGETS:
            def compute(pair: int = pair, budget: float = budget) -> dict:
                a, b = setup.endpoints(model, pair)
                batches = setup.calibration(a, dataset, pair)
                merged = pleas_merge(a, b, batches, budget=budget)
                params, macs = pleas_cost(merged, shape)
                base_params, base_macs = pleas_cost(a, shape)
                measure = setup.measure_batches(a, dataset, pair)
                return {"accuracy": setup.accuracy(merged, dataset),
                        "params_ratio": params / base_params, "macs_ratio": macs / base_macs,
                        "merged_feature": _merged_feature(merged, a, b, measure)}

            records += setup.cell("pleas", {"model": model, "pair": pair,
                                            "setting": f"budget={budget}"}, compute,
                                  endpoints=setup.pair_jobs(model, pair), version=VERSION)
    return frame(records)


def ties(setup: Setup) -> pd.DataFrame:
    """TIES with base zero and base midpoint at several densities, with and without the model's
    normalisation, on activation-matched VGG16 and VGG16-BN; and per layer, the sign
    disagreement of the aligned weights next to the plain midpoint's feature scale."""
    records = []
    for model in ("vgg16", "vgg16_bn"):
        a, _ = setup.endpoints(model, 0)
        norm = "reset" if has_batchnorm(a) else "rescale"
        merges = [Merge("am"), Merge("am", norm=norm)]
        merges += [Merge("am", norm=n, merger=f"ties_{base}", density=d)
                   for base in ("zero", "midpoint") for d in DENSITIES for n in ("none", norm)]
        records += endpoint_cells(setup, model)
        records += merge_cells(setup, model, merges, Measure(("accuracy", "vf")), study="ties")
        for pair in range(setup.pairs):
            def compute(pair: int = pair, model: str = model) -> dict:
                al = alignment(setup, model, pair, "am")
                layers = setup.endpoints(model, pair)[0].weight_layers
                rates = sign_disagreement(*al.states, layers, base="zero")
                return {"sign_disagreement": [rates[n] for n in layers]}

            records += setup.cell("signs", {"model": model, "pair": pair, "matcher": "am"},
                                  compute, endpoints=setup.pair_jobs(model, pair),
                                  version=VERSION)
    return frame(records)


def layer_sparsity(setup: Setup) -> pd.DataFrame:
    """Global, uniform (layer-wise) and TADrop-style (kurtosis) magnitude pruning of VGG16-BN and
    ResNet20 at 70-95% sparsity, before and after post-pruning RESET."""
    records = []
    for model in ("vgg16_bn", "resnet20"):
        dataset = setup.profile.dataset_for(model)
        for index in pruned_models(setup):
            job = setup.job(model, index + 1)
            for sparsity in SPARSITIES:
                for rule in ("global", "layerwise", "tadrop"):
                    def compute(index: int = index, sparsity: float = sparsity,
                                rule: str = rule, job=job, dataset: str = dataset) -> dict:
                        base = setup.load(job)
                        pruned = (prune_allocated(base, allocate(base, sparsity))
                                  if rule == "tadrop" else prune(base, sparsity, scope=rule))
                        fixed = normalize_pruned(pruned, base,
                                                 setup.calibration(base, dataset, index))
                        return {"pruned": setup.accuracy(pruned, dataset),
                                "normalised": setup.accuracy(fixed, dataset)}

                    records += setup.cell("layer_sparsity", {
                        "model": model, "pair": index, "sparsity": sparsity,
                        "setting": f"rule={rule}"}, compute, endpoints=[job], version=VERSION)
    return frame(records)


def mergeability(setup: Setup) -> pd.DataFrame:
    """For every pair of the profile's population: metrics after activation matching (weight
    cosine and distance, the weight-matching objective, matched activation correlation, gradient
    cosine on a calibration batch, the midpoint's vanishing-feature ratio) and the merged
    accuracy (direct, WM, AM; with and without RESET), with the endpoints' accuracies."""
    pop = setup.profile.population
    dataset = setup.profile.dataset_for(pop.model)
    records = []
    for c, config in enumerate(pop.configurations):
        for seed_a, seed_b in pop.pairs:
            jobs = (setup.job(pop.model, seed_a, **config), setup.job(pop.model, seed_b, **config))

            def compute(jobs=jobs) -> dict:
                a, b = (setup.load(j) for j in jobs)
                batches = list(input_batches(
                    a, setup.data(dataset, True), setup.protocol.batch_size,
                    augment=setup.protocol.calibration_augment, shuffle=True,
                    seed=setup.protocol.calibration_seed(0),
                    limit=setup.protocol.calibration_images, device=setup.device))
                aligned = {m: align(a, b, m, batches) for m in ("direct", "wm", "am")}
                values = pair_metrics(a, b, aligned["am"], batches)
                values |= {"edge_a": setup.endpoint_accuracy(jobs[0], dataset),
                           "edge_b": setup.endpoint_accuracy(jobs[1], dataset)}
                for matcher, al in aligned.items():
                    for norm in ("none", "reset"):
                        merged = merge_models(a, b, al, norm=norm, calibration=batches)
                        values[f"{matcher}_{norm}"] = setup.accuracy(merged, dataset)
                return values

            records += setup.cell("mergeability", {
                "model": pop.model, "pair": f"{seed_a}-{seed_b}",
                "setting": f"config={c},width={config['width']:g},epochs={config['epochs']:g},"
                           f"wd={config['weight_decay']:g}"},
                compute, endpoints=jobs, version=VERSION)
    return frame(records)


def beyond(setup: Setup) -> pd.DataFrame:
    """Every part of notebook 09."""
    return pd.concat([regression(setup), partial(setup), ties(setup), layer_sparsity(setup),
                      mergeability(setup)], ignore_index=True)


PAIR_METRICS = ("weight_cosine", "weight_distance", "wm_cosine", "activation_correlation",
                "gradient_cosine", "vf_ratio")
TARGETS = tuple(f"{m}_{n}" for m in ("direct", "wm", "am") for n in ("none", "reset"))
LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1)
"""The lasso grid; no lam = 0, whose fit on strongly correlated metrics converges too slowly."""


def population_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per population pair: its metrics, its configuration and each merged accuracy
    normalised by the endpoints' mean."""
    df = table[table["study"] == "mergeability"]
    wide = df.pivot_table(index=["pair", "setting"], columns="metric", values="value")
    wide = wide.reset_index()
    edge = (wide["edge_a"] + wide["edge_b"]) / 2
    for target in TARGETS:
        wide[target] = wide[target] / edge
    wide["config"] = wide["setting"].str.extract(r"config=(\d+)", expand=False).astype(int)
    return wide


def predictor(table: pd.DataFrame, target: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """Spearman correlation of each metric with the normalised merged accuracy `target`, and a
    lasso on all metrics, on the VF ratio alone and on all but the VF ratio, each evaluated by
    nested leave-one-configuration-out cross-validation (Spearman and R^2 of the out-of-fold
    predictions)."""
    wide = population_table(table)
    y = wide[target].to_numpy()
    correlations = pd.DataFrame({"metric": PAIR_METRICS,
                                 "spearman": [spearman(wide[m], y) for m in PAIR_METRICS]})
    scores = {}
    for label, columns in (("all", PAIR_METRICS), ("vf_ratio", ("vf_ratio",)),
                           ("all_but_vf", tuple(m for m in PAIR_METRICS if m != "vf_ratio"))):
        predicted, _ = nested_leave_one_group_out(wide[list(columns)].to_numpy(), y,
                                                  wide["config"].to_numpy(), LAMBDAS)
        scores[f"{label}_spearman"] = spearman(predicted, y)
        residual, spread = ((predicted - y) ** 2).sum(), ((y - y.mean()) ** 2).sum()
        scores[f"{label}_r2"] = 1 - float(residual / spread)
    return correlations, scores
