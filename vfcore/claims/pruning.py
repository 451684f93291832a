"""Claims of notebook 07: one-shot pruning and post-pruning normalisation (Figs 5, 14, 16;
claims 19-21). WoodFisher, diagonal Fisher and the ImageNet models are not reproduced."""

from __future__ import annotations

import numpy as np

from ..studies.setup import MissingResult
from .core import Claim, Results, Verdict, above, below, pm


def sweep(r: Results, model: str, scope: str, kind: str, sparsity: float) -> np.ndarray:
    df = r.select("prune_sweep", kind, model=model, scope=scope)
    df = df[np.isclose(df["sparsity"], sparsity)]
    if df.empty:
        raise MissingResult(f"{model} was not pruned to {sparsity:g} at this profile")
    return df.sort_values("pair")["value"].to_numpy()


def unpruned(r: Results, model: str) -> np.ndarray:
    return r.values("unpruned", model=model)


def collapse(r: Results, model: str, kind: str) -> np.ndarray:
    return r.values("fig05ab", f"accuracy_{kind}", model=model)


def vgg_collapses(r: Results) -> Verdict:
    acc = collapse(r, "vgg16_bn", "pruned")
    return below(acc.mean(), 50.0, f"{pm(acc)}%")


def vgg_recovers(r: Results) -> Verdict:
    fixed, base = collapse(r, "vgg16_bn", "normalised"), collapse(r, "vgg16_bn", "unpruned")
    return above(fixed.mean() - base.mean(), -3.0, f"{pm(fixed)}% (unpruned {pm(base)}%)")


def resnet_collapses(r: Results) -> Verdict:
    acc, fixed = collapse(r, "resnet20", "pruned"), collapse(r, "resnet20", "normalised")
    return below(acc.mean(), 20.0, f"{pm(acc)}%", f"after RESET {pm(fixed)}% (the paper does "
                                                  "not print it)")


def feature_shrinks(r: Results) -> Verdict:
    last = {(m, k): r.curve("fig05ab", f"{k}_scale", model=m)[:, -1].mean()
            for m in ("vgg16_bn", "resnet20") for k in ("pruned", "normalised")}
    holds = all(last[m, "pruned"] < 1 and last[m, "normalised"] > last[m, "pruned"]
                for m in ("vgg16_bn", "resnet20"))
    ours = "; ".join(f"{m}: {last[m, 'pruned']:.2f} -> {last[m, 'normalised']:.2f}"
                     for m in ("vgg16_bn", "resnet20"))
    return Verdict(ours, float(max(last["vgg16_bn", "pruned"], last["resnet20", "pruned"])), 1.0,
                   bool(holds))


def ln_gain(r: Results, sparsity: float) -> Verdict:
    pruned = sweep(r, "vgg16_ln", "global", "pruned", sparsity)
    fixed = sweep(r, "vgg16_ln", "global", "normalised", sparsity)
    return above(fixed.mean() - pruned.mean(), 10.0, f"{pm(pruned)} -> {pm(fixed)}%")


def ln_unchanged(r: Results) -> Verdict:
    df = r.select("prune_sweep", "pruned", model="vgg16_ln", scope="global")
    low = sorted(s for s in df["sparsity"].unique() if s <= 0.8 + 1e-9)
    change = max(abs(sweep(r, "vgg16_ln", "global", "normalised", s).mean()
                     - sweep(r, "vgg16_ln", "global", "pruned", s).mean()) for s in low)
    return below(change, 2.0, f"largest change {change:.2f} points at <= 80%")


def helps_high(r: Results) -> Verdict:
    df = r.select("prune_sweep", "pruned")
    top = sorted(df["sparsity"].unique())[-2:]
    curves = [(m, scope) for m in df["model"].unique() for scope in ("global", "layerwise")]
    good = sum(all(sweep(r, m, sc, "normalised", s).mean() >= sweep(r, m, sc, "pruned", s).mean()
                   for s in top) for m, sc in curves)
    return Verdict(f"{good} of {len(curves)} curves", float(good), len(curves) - 0.5,
                   good == len(curves))


def few_samples(r: Results, scope: str) -> Verdict:
    df = r.select("fig16", "normalised")
    small = df[(df["scope"] == scope) & (df["images"] == "64")]
    small = small.groupby("sparsity")["value"].mean()
    full = r.select("prune_sweep", "normalised", model="resnet20", scope=scope)
    full = full.groupby("sparsity")["value"].mean()
    gap = float((small - full.reindex(small.index)).abs().max())
    return below(gap, 3.0, f"largest gap {gap:.2f} points")


CLAIMS = [
    Claim("07.vgg_collapse", "Fig. 5A (claim 19)", "VGG16-BN pruned to 80% (global magnitude) "
          "collapses (below 50%)", "23.57%", vgg_collapses),
    Claim("07.vgg_reset", "Fig. 5A (claim 19)", "RESET brings the 80% VGG16-BN back to within 3 "
          "points of the unpruned model", "92.02% (unpruned 93.46%)", vgg_recovers),
    Claim("07.resnet_collapse", "Fig. 5B (claim 19)", "ResNet20 pruned to 85% (global magnitude) "
          "falls to about chance before RESET (below 20%)", "10.59%", resnet_collapses),
    Claim("07.feature_shrinks", "Fig. 5B", "Pruning shrinks the last layer's input-induced "
          "feature (normalised scale below 1) and normalisation raises it, for both models",
          "qualitative", feature_shrinks, tolerance=0.2),
    Claim("07.ln_90", "Fig. 5C / claim 20", "VGG16-LN, global magnitude at 90%: REPAIR gains at "
          "least 10 points", "72.60 -> 91.74%", lambda r: ln_gain(r, 0.9)),
    Claim("07.ln_95", "Claim 20", "VGG16-LN, global magnitude at 95%: REPAIR gains at least 10 "
          "points", "10.00 -> 87.98%", lambda r: ln_gain(r, 0.95)),
    Claim("07.ln_low", "Claim 20", "VGG16-LN, global magnitude at <= 80%: REPAIR changes accuracy "
          "by at most 2 points at every sparsity", "unchanged at 92.1-92.5%", ln_unchanged),
    Claim("07.helps_high", "Figs 5C, 14", "Normalisation helps at high sparsity (normalised >= "
          "pruned at the two largest sparsities, for every model and criterion)", "qualitative",
          helps_high, tolerance=1.0),
    Claim("07.few_global", "Fig. 16 Mid (claim 21)", "RESET from 64 samples nearly matches the "
          "full calibration set, global magnitude (largest gap <= 3 points)",
          "almost the same", lambda r: few_samples(r, "global")),
    Claim("07.few_layerwise", "Fig. 16 Right (claim 21)", "... and for layer-wise magnitude "
          "pruning", "almost the same", lambda r: few_samples(r, "layerwise")),
]
