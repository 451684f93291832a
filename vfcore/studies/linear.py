"""Deep linear networks (Sec. 4): Fig. 1, Eq. 2 and Fig. 2D."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

from .. import vf
from ..evaluation import input_batches
from .merging import Merge, build, endpoint_cells, merge_cells
from .setup import Setup, frame

VERSION = 1
MODEL = "linear8"


def _layer_norms(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Per layer: mean and std over samples of ||g(x)|| (Eq. 2, no cancellation), and ||h||."""
    gs, hs = vf.linear_decomposition(model, x)
    g = torch.stack([gi.norm(dim=1) for gi in gs]).double().cpu().numpy()
    return g.mean(axis=1), g.std(axis=1), np.array([hi.norm().item() for hi in hs])


def _eq2_errors(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Largest relative |f - (g + h)| and |Var f - Var g| over layers, in float64."""
    m64, x64 = copy.deepcopy(model).double(), x.double().flatten(1)
    gs, hs = vf.linear_decomposition(m64, x64)
    f, err_sum, err_var = x64, 0.0, 0.0
    with torch.no_grad():
        for layer, g, h in zip(m64.layers, gs, hs, strict=True):
            f = layer(f)
            err_sum = max(err_sum, ((f - (g + h)).abs().max() / f.abs().max()).item())
            var_f, var_g = f.var(dim=0), g.var(dim=0)
            err_var = max(err_var, ((var_f - var_g).abs().max() / var_f.max()).item())
    return err_sum, err_var


def _fig1_cells(setup: Setup, pair: int) -> list[dict]:
    dataset = setup.profile.linear_dataset
    jobs = setup.pair_jobs(MODEL, pair, dataset)

    def compute() -> dict:
        a, b = setup.endpoints(MODEL, pair, dataset)
        merged = build(setup, MODEL, pair, Merge(), dataset=dataset)
        x = torch.cat([x for x, _ in input_batches(a, setup.data(dataset, False), 1000,
                                                   limit=setup.protocol.test_images,
                                                   device=setup.device)])
        g_mid, g_mid_std, h_mid = _layer_norms(merged, x)
        edges = [_layer_norms(m, x) for m in (a, b)]
        w_mid, b_mid = vf.weight_magnitudes(merged.state_dict(), merged)
        w_a, b_a = vf.weight_magnitudes(a.state_dict(), a)
        w_b, b_b = vf.weight_magnitudes(b.state_dict(), b)
        rescaled = vf.rescaled_feature_norms(merged.state_dict(), a.state_dict(), b.state_dict(),
                                             merged, g_mid)
        err_sum, err_var = _eq2_errors(merged, x)
        values = {"g_mid": g_mid, "g_mid_std": g_mid_std, "h_mid": h_mid,
                  "g_edge": (edges[0][0] + edges[1][0]) / 2,
                  "g_edge_std": (edges[0][1] + edges[1][1]) / 2,
                  "h_edge": (edges[0][2] + edges[1][2]) / 2,
                  "w_mid": w_mid, "b_mid": b_mid, "w_edge": (w_a + w_b) / 2,
                  "b_edge": (b_a + b_b) / 2, "g_rescaled": rescaled}
        return {**{k: np.asarray(v).tolist() for k, v in values.items()},
                "eq2_sum_error": err_sum, "eq2_var_error": err_var}

    return setup.cell("fig01", {"model": MODEL, "pair": pair, "dataset": dataset}, compute,
                      endpoints=jobs, version=VERSION)


def linear_networks(setup: Setup) -> pd.DataFrame:
    """Fig. 1 (feature, offset and weight magnitudes of the merged 8-layer linear nets, and the
    rescaled feature), Eq. 2 (f = g + h and Var f = Var g, checked in float64), the midpoint
    accuracy of direct, WM and AM merging of those nets, and Fig. 2D (accuracy along alpha of
    5-layer nets with and without residual connections, direct and WM)."""
    dataset = setup.profile.linear_dataset
    records = endpoint_cells(setup, MODEL, dataset=dataset)
    records += merge_cells(setup, MODEL, [Merge(m) for m in ("direct", "wm", "am")],
                           dataset=dataset, study="fig01_accuracy")
    for pair in range(setup.pairs):
        records += _fig1_cells(setup, pair)
    line = [Merge(m, alpha=float(t)) for m in ("direct", "wm")
            for t in np.linspace(0, 1, setup.profile.alphas)]
    for model in ("linear5", "linear5_res"):
        records += merge_cells(setup, model, line, dataset=dataset, study="fig02d")
    return frame(records)

