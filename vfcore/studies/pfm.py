"""Preserve-First Merging (Sec. 5.4): Tables 1, 3, 4, 6-11, their costs (Tables 12-14) and
Fig. 17."""

from __future__ import annotations

import pandas as pd

from ..models import build_model
from ..pfm import pfm_cost
from .merging import Measure, Merge, endpoint_cells, merge_cells
from .setup import Setup, frame, rows

PRESERVED = {"vgg16": (0, 3, 6, 8, 12), "vgg16_bn": (0, 3, 6, 8, 12),
             "resnet20": (0, 6, 10, 13, 19)}
"""The paper's rows: PFM {0,3,6,8,12}/14 for the VGGs, {0,6,10,13,19}/20 for ResNet20."""
PRESERVED_C100_BN = (0, 3, 7, 10, 12)
"""Table 9 (VGG16-BN on CIFAR-100) uses other rows."""

PLAIN_NORMS = ("none", "repair", "rescale", "bias_cal")
BN_NORMS = ("none", "reset")
TABLES = {
    "vgg16": {"matchers": ("am", "zipit", "cca"), "norms": PLAIN_NORMS},
    "vgg16_bn": {"matchers": ("am", "zipit", "cca"), "norms": BN_NORMS},
    "resnet20": {"matchers": ("am", "zipit"), "norms": BN_NORMS},
}
"""Which (matcher, normalisation) columns each model's tables have (Tables 1, 3, 4, 6-8)."""


def _merge(matcher: str, norm: str, preserved: int) -> Merge:
    if norm == "bias_cal":
        return Merge(matcher, preserved=preserved, bias="calibrate")
    return Merge(matcher, preserved=preserved, norm=norm)


def pfm_table(setup: Setup, model: str, *, dataset: str | None = None,
              preserved: tuple[int, ...] | None = None,
              matchers: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Accuracy of PFM_{l/L} for every (matcher, normalisation) column of the model's tables and
    every l, plus the direct column, the endpoints and their ensemble (PFM L/L)."""
    spec = TABLES[model]
    counts = preserved or PRESERVED[model]
    merges = [Merge(preserved=n) for n in counts]
    merges += [_merge(m, norm, n) for m in matchers or spec["matchers"] for norm in spec["norms"]
               for n in counts]
    records = endpoint_cells(setup, model, dataset=dataset)
    records += merge_cells(setup, model, merges, dataset=dataset, study=f"pfm_{model}")
    return frame(records)


def pfm_curves(setup: Setup, model: str) -> pd.DataFrame:
    """Fig. 17: the tight bound of the normalised feature scale of AM-based PFM (no
    normalisation) for each of the paper's l and for l = L (the ensemble)."""
    a, _ = setup.endpoints(model, 0)
    counts = PRESERVED[model] + (len(a.weight_layers),)
    merges = [Merge("am", preserved=n) for n in counts]
    return frame(merge_cells(setup, model, merges, Measure(("vf",), bound="tight"),
                             study=f"fig17_{model}"))


def pfm_costs(model: str, counts: tuple[int, ...], num_classes: int = 10) -> pd.DataFrame:
    """Tables 12-14 and the cost columns: parameters and MACs of PFM_{l/L} at width 1 (the
    paper's size) against the base model."""
    base = build_model(model, num_classes=num_classes)
    records = []
    for n in counts:
        c = pfm_cost(base, n)
        records += rows("cost", {"model": model, "l": n, "setting": f"classes={num_classes}"},
                        {"params": c.params, "macs": c.macs, "params_ratio": c.params_ratio,
                         "macs_ratio": c.macs_ratio})
    return frame(records)


def preserve_first_merging(setup: Setup) -> pd.DataFrame:
    """Every PFM table of the profile (Tables 1, 3, 4, 6-8; with CIFAR-100 in the profile's
    `extra_datasets`, Tables 9-11 too), Fig. 17 and the cost tables."""
    parts = [pfm_table(setup, model) for model in TABLES]
    parts += [pfm_curves(setup, model) for model in TABLES]
    if "cifar100" in setup.profile.extra_datasets:
        parts.append(pfm_table(setup, "vgg16_bn", dataset="cifar100",
                               preserved=PRESERVED_C100_BN, matchers=("am", "zipit")))
        parts.append(pfm_table(setup, "vgg16", dataset="cifar100", matchers=("am", "zipit")))
    parts += [pfm_costs(model, PRESERVED[model] + (14 if model != "resnet20" else 20,))
              for model in TABLES]
    parts.append(pfm_costs("vgg16_bn", PRESERVED_C100_BN, num_classes=100))
    return pd.concat(parts, ignore_index=True)
