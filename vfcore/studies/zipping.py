"""PFM against partial zipping (App. A.8.2, Fig. 18): which layers to leave unmerged."""

from __future__ import annotations

import pandas as pd

from ..models import build_model
from ..pfm import pfm_cost
from .merging import Merge, endpoint_cells, merge_cells
from .setup import Setup, frame, rows

MODEL = "vgg16"


def _costs(layers: int) -> list[dict]:
    """Parameters and MACs of both methods with K unmerged layers, at width 1: PFM duplicates
    the first K layers, partial zipping the last K (everything PFM_{L-K} does not)."""
    base = build_model(MODEL)
    cost = {k: pfm_cost(base, k) for k in range(layers + 1)}
    n0, m0 = cost[0].base_params, cost[0].base_macs
    records = []
    for k in range(layers + 1):
        first = cost[layers - k]
        values = {"pfm_params": cost[k].params, "pfm_macs": cost[k].macs,
                  "zip_params": 3 * n0 - first.params, "zip_macs": 3 * m0 - first.macs}
        records += rows("fig18_cost", {"model": MODEL, "l": k}, values)
    return records


def pfm_vs_partial_zip(setup: Setup) -> pd.DataFrame:
    """Accuracy with K = 0..L unmerged layers, AM, with and without RESCALE: PFM keeps the first K
    layers of both endpoints, partial zipping the last K. RESCALE corrects the merged layers;
    for partial zipping that is the rescaled full merge's trunk (RESCALE corrects layers in
    forward order, each from the ones before it)."""
    records = endpoint_cells(setup, MODEL)
    a, _ = setup.endpoints(MODEL, 0)
    layers = len(a.weight_layers)
    merges = []
    for k in range(layers + 1):
        merges += [Merge("am", preserved=k), Merge("am", unmerged=k)]
        if k < layers:
            merges += [Merge("am", preserved=k, norm="rescale"),
                       Merge("am", unmerged=k, norm="rescale")]
    records += merge_cells(setup, MODEL, merges, study="fig18")
    return frame(records + _costs(layers))
