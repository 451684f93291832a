"""Normalising a merged plain VGG16 (Sec. 5.3): Fig. 3 (REPAIR against RESCALE, Bias Cal. and
Bias Removal along the merging line, after WM and after ZipIt!) and Fig. 13 (how many biases to
remove)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .merging import Merge, endpoint_cells, merge_cells
from .setup import Setup, expand_settings, frame

MODEL = "vgg16"
NORMS = ("none", "repair", "rescale", "bias_cal", "bias_removal")
"""Fig. 3's five curves: W/o Norm., REPAIR, RESCALE, Bias Cal. and Bias Removal."""


def _merge(matcher: str, alpha: float, fix: str, k: int, restart: int) -> Merge:
    if fix == "bias_cal":
        return Merge(matcher, alpha, bias="calibrate", restart=restart)
    if fix == "bias_removal":
        return Merge(matcher, alpha, bias="remove", k=k, restart=restart)
    return Merge(matcher, alpha, norm=fix, restart=restart)


FIX_LABELS = {"none": "W/o Norm.", "repair": "REPAIR", "rescale": "RESCALE",
              "bias_cal": "Bias Cal.", "bias_removal": "Bias Removal"}


def line(table: pd.DataFrame, matcher: str, fix: str) -> pd.DataFrame:
    """Rows (pair, alpha, value) of one Fig. 3 curve: accuracy along alpha after `matcher` and
    one of NORMS (weight-matching restarts are rows of their pair), with the endpoints at alpha
    0 and 1."""
    df = expand_settings(table[(table["study"] == f"fig03_{matcher}")
                               & (table["metric"] == "accuracy")])
    bias = df["bias"] if "bias" in df else pd.Series(None, index=df.index, dtype=object)
    if fix == "bias_cal":
        chosen = df[bias == "calibrate"]
    elif fix == "bias_removal":
        chosen = df[bias.fillna("").str.startswith("remove:")]
    else:
        chosen = df[(df["norm"] == fix) & bias.isna()]
    ends = table[(table["study"] == "endpoints") & table["metric"].isin(("model_a", "model_b"))]
    ends = ends.assign(alpha=(ends["metric"] == "model_b").astype(float))
    return pd.concat([chosen, ends])[["pair", "alpha", "value"]]


def removal_curves(fig13: pd.DataFrame) -> pd.DataFrame:
    """Mean midpoint accuracy over pairs and restarts per direction ("backward": the last k
    layers, "forward": the first k) and k; k = 0 (no removal) belongs to both."""
    df = expand_settings(fig13[fig13["metric"] == "accuracy"])
    bias = df.get("bias", pd.Series(None, index=df.index)).fillna("none:0")
    kind, k = bias.str.split(":", expand=True)[0], bias.str.split(":", expand=True)[1]
    df = df.assign(k=k.astype(int), kind=kind)
    out = []
    for direction, name in (("backward", "remove"), ("forward", "remove_first")):
        part = df[df["kind"].isin(("none", name))]
        means = part.groupby("k")["value"].agg(["mean", "std", "count"]).reset_index()
        out.append(means.assign(direction=direction))
    return pd.concat(out, ignore_index=True)


def best_removal(fig13: pd.DataFrame) -> int:
    """The backward-removal count with the best mean midpoint accuracy (chosen on the test set,
    as the paper does)."""
    backward = removal_curves(fig13).query("direction == 'backward'")
    return int(backward.loc[backward["mean"].idxmax(), "k"])


def normalization(setup: Setup) -> pd.DataFrame:
    """Fig. 13 first: WM midpoints with the biases of the last (backward) or first (forward) k
    layers removed, k = 0..L, over every pair and weight-matching restart; its best backward k
    is Fig. 3's Bias Removal. Then Fig. 3: accuracy along alpha for the five normalisations after
    WM (every restart) and after ZipIt!. The ends of the line are the endpoints."""
    records = endpoint_cells(setup, MODEL)
    a, _ = setup.endpoints(MODEL, 0)
    layers = len(a.weight_layers)
    restarts = range(setup.profile.wm_restarts)
    removal = [Merge("wm", restart=r) for r in restarts]
    removal += [Merge("wm", bias=b, k=k, restart=r) for b in ("remove", "remove_first")
                for k in range(1, layers + 1) for r in restarts]
    fig13 = merge_cells(setup, MODEL, removal, study="fig13")
    best_k = best_removal(frame(fig13))
    records += fig13
    alphas = np.linspace(0, 1, setup.profile.alphas)
    for matcher, runs in (("wm", restarts), ("zipit", range(1))):
        line = [_merge(matcher, float(t), fix, best_k, r) for r in runs for fix in NORMS
                for t in alphas if 0 < t < 1]
        records += merge_cells(setup, MODEL, line, study=f"fig03_{matcher}")
    return frame(records).assign(best_k=best_k)
