"""One-shot pruning and post-pruning normalisation (Sec. 5.5): Figs 5A-C, 14 and 16 Mid/Right.

Pruning needs one trained model at a time: one model per pair (seeds 1..pairs, so as many
models as merges average over) is pruned, and the `pair` column holds the model's index.
"""

from __future__ import annotations

import pandas as pd
import torch

from .. import vf
from ..evaluation import predict
from ..models import has_batchnorm
from ..normalize import reset_bn
from ..prune import normalize_pruned, prune
from .setup import Setup, frame

VERSION = 1
SWEEP_MODELS = ("vgg16_bn", "resnet20", "resnet20_ln", "vgg16_ln")
"""Fig. 5C (ResNet20-LN) and Fig. 14 (ResNet20, VGG16-BN, VGG16-LN)."""
SCOPES = ("global", "layerwise")


def normalisation_of(model: torch.nn.Module) -> str:
    """RESET for BatchNorm models, REPAIR otherwise (the paper's choice, Sec. 5.5)."""
    return "reset" if has_batchnorm(model) else "repair"


def _base(setup: Setup, model: str, index: int) -> tuple[torch.nn.Module, object]:
    job = setup.job(model, index + 1)
    return setup.load(job), job


def _sweep_cells(setup: Setup, model: str, index: int, scope: str) -> list[dict]:
    base, job = _base(setup, model, index)
    dataset = setup.profile.dataset_for(model)
    calibration = setup.calibration(base, dataset, index)
    records = [*setup.cell("unpruned", {"model": model, "pair": index},
                           lambda: {"accuracy": setup.accuracy(base, dataset)}, endpoints=[job],
                           version=VERSION)]
    for sparsity in setup.profile.sparsities:
        def compute(sparsity: float = sparsity) -> dict:
            pruned = prune(base, sparsity, scope=scope)
            fixed = normalize_pruned(pruned, base, calibration)
            return {"pruned": setup.accuracy(pruned, dataset),
                    "normalised": setup.accuracy(fixed, dataset)}

        records += setup.cell("prune_sweep", {"model": model, "pair": index, "sparsity": sparsity,
                                              "norm": normalisation_of(base),
                                              "setting": f"scope={scope}"},
                              compute, endpoints=[job], version=VERSION)
    return records


def _calibration_size_cells(setup: Setup, index: int, scope: str) -> list[dict]:
    """Fig. 16: ResNet20 + RESET with a few calibration images (batches of 64)."""
    model = "resnet20"
    base, job = _base(setup, model, index)
    dataset = setup.profile.dataset_for(model)
    largest = max(setup.profile.calibration_counts)
    small = setup.calibration(base, dataset, index, images=largest, batch_size=64)
    records = []
    for count in setup.profile.calibration_counts:
        for sparsity in setup.profile.sparsities:
            def compute(count: int = count, sparsity: float = sparsity) -> dict:
                pruned = prune(base, sparsity, scope=scope)
                return {"normalised": setup.accuracy(reset_bn(pruned, small[:count // 64]),
                                                     dataset)}

            records += setup.cell("fig16", {"model": model, "pair": index, "sparsity": sparsity,
                                            "norm": "reset",
                                            "setting": f"scope={scope},images={count}"},
                                  compute, endpoints=[job], version=VERSION)
    return records


def _collapse_cells(setup: Setup, model: str, sparsity: float, index: int) -> list[dict]:
    """Figs 5A/5B: one model pruned globally at `sparsity`: its logits and f_p(0) against the
    unpruned model's and the normalised one's, and the normalised feature bound of the pruned
    model with and without normalisation (reference: the unpruned model)."""
    base, job = _base(setup, model, index)
    dataset = setup.profile.dataset_for(model)

    def compute() -> dict:
        pruned = prune(base, sparsity, scope="global")
        fixed = normalize_pruned(pruned, base, setup.calibration(base, dataset, index))
        test = setup.data(dataset, False)
        batches = setup.measure_batches(base, dataset, index)
        zero = torch.zeros_like(batches[0][:1])
        values: dict = {"accuracy_pruned": setup.accuracy(pruned, dataset),
                        "accuracy_normalised": setup.accuracy(fixed, dataset),
                        "accuracy_unpruned": setup.accuracy(base, dataset)}
        for label, m in (("pruned", pruned), ("normalised", fixed), ("unpruned", base)):
            logits = predict(m, test, limit=setup.protocol.test_images, device=setup.device)
            values[f"{label}_mean"] = logits.mean(0).tolist()
            values[f"{label}_std"] = logits.std(0).tolist()
        with torch.no_grad():
            values["pruned_f0"] = pruned.eval()(zero).float().cpu()[0].tolist()
        layers = vf.vf_layers(base, include_norms=True)
        reference = vf.feature_norms(base, batches, layers)
        for label, m in (("pruned", pruned), ("normalised", fixed)):
            scale = vf.normalized_scale(m, [reference], batches, layers)
            bound = vf.smoothed_bound(scale)
            values[f"{label}_scale"] = scale.tolist()
            values[f"{label}_depth"] = vf.depth_curve(bound)[1].tolist()
        return values

    return setup.cell("fig05ab", {"model": model, "pair": index, "sparsity": sparsity,
                                  "norm": normalisation_of(base)}, compute, endpoints=[job],
                      version=VERSION)


def pruned_models(setup: Setup) -> range:
    """Indices of the models a pruning study prunes (model i has seed i + 1): one per pair, so
    a pruning result averages over as many models as a merging result does."""
    return range(setup.pairs)


def pruning(setup: Setup) -> pd.DataFrame:
    """Fig. 5A/B (VGG16-BN at 80% and ResNet20 at 85%, global magnitude), the accuracy-against-
    sparsity sweeps of Figs 5C and 14 (every model, global and layer-wise magnitude, with and
    without post-pruning normalisation) and Fig. 16 (RESET of ResNet20 from a few images)."""
    models = pruned_models(setup)
    records = []
    for model, sparsity in (("vgg16_bn", 0.8), ("resnet20", 0.85)):
        for index in models:
            records += _collapse_cells(setup, model, sparsity, index)
    for model in SWEEP_MODELS:
        for index in models:
            for scope in SCOPES:
                records += _sweep_cells(setup, model, index, scope)
    for index in models:
        for scope in SCOPES:
            records += _calibration_size_cells(setup, index, scope)
    return frame(records)
