"""Claims of notebook 08: training hyper-parameters and merging (Figs 6-8; claim 18)."""

from __future__ import annotations

import numpy as np

from ..merge import barrier
from .core import Claim, Results, Verdict, above, pm


def barriers(r: Results, study: str, model: str, matcher: str, name: str,
             value: float) -> np.ndarray:
    """The paper's barrier of each pair's line (endpoints at alpha 0 and 1)."""
    df = r.select(study, model=model, matcher=matcher)
    df = df[np.isclose(df[f"train_{name}"].astype(float), value)]
    out = []
    for _, line in df.groupby("pair"):
        line = line.sort_values("alpha")
        out.append(barrier(line["alpha"].to_numpy(), line["value"].to_numpy()))
    return np.array(out)


def cut(r: Results, study: str, model: str, name: str, low: float, high: float,
        fraction: float) -> Verdict:
    before = barriers(r, study, model, "wm", name, low)
    after = barriers(r, study, model, "wm", name, high)
    drop = 1 - after.mean() / before.mean() if before.mean() > 0 else 0.0
    return above(drop, fraction, f"{pm(before)} -> {pm(after)} points ({100 * drop:.0f}% lower)")


def wm_below_direct(r: Results) -> Verdict:
    checked, good = 0, 0
    for study, name in (("lr_sweep", "lr"), ("wd_sweep", "weight_decay")):
        df = r.select(study)
        for model in df["model"].unique():
            for value in df[df["model"] == model][f"train_{name}"].unique():
                wm = barriers(r, study, model, "wm", name, float(value)).mean()
                direct = barriers(r, study, model, "direct", name, float(value)).mean()
                checked, good = checked + 1, good + int(wm < direct)
    return Verdict(f"{good} of {checked} sweep values", float(good), checked - 0.5,
                   good == checked)


def fig8(r: Results, matcher: str) -> Verdict:
    df = r.select("fig08", matcher=matcher)
    spread = {n: df[df["norm"] == n].groupby("train_weight_decay")["value"].mean()
              for n in ("repair", "rescale")}
    ranges = {n: float(v.max() - v.min()) for n, v in spread.items()}
    return above(ranges["repair"] - ranges["rescale"], 0.0,
                 f"range over wd: REPAIR {ranges['repair']:.1f}, RESCALE {ranges['rescale']:.1f}")


def _sweep_bounds(r: Results, study: str, name: str) -> tuple[float, float]:
    values = r.select(study)[f"train_{name}"].astype(float)
    return float(values.min()), float(values.max())


CLAIMS = [
    *[Claim(f"08.lr_{model}", "Fig. 6A (claim 18)", f"{label}: a larger learning rate "
            "(smallest -> largest of the sweep) cuts the WM barrier by more than 40%",
            "> 40% (lr 0.01 -> 0.1)",
            lambda r, m=model: cut(r, "lr_sweep", m, "lr", *_sweep_bounds(r, "lr_sweep", "lr"),
                                   0.4), tolerance=0.15)
      for model, label in (("vgg16_ln", "VGG16-LN"), ("resnet20", "ResNet20"))],
    Claim("08.wd_vgg16", "Fig. 6C (claim 18)", "VGG16: a larger weight decay (smallest -> largest "
          "of the sweep) cuts the WM barrier by more than 60%", "> 60% (wd 1e-4 -> 5e-4)",
          lambda r: cut(r, "wd_sweep", "vgg16", "weight_decay",
                        *_sweep_bounds(r, "wd_sweep", "weight_decay"), 0.6), tolerance=0.15),
    Claim("08.wm_below_direct", "Fig. 6B/D", "The WM barrier is below the direct-merging barrier "
          "at every swept value", "qualitative", wm_below_direct, tolerance=1.0),
    Claim("08.fig8_wm", "Fig. 8", "RESCALE is steadier across weight decay than REPAIR after WM "
          "(smaller range of the midpoint's test accuracy)", "REPAIR unstable, RESCALE robust",
          lambda r: fig8(r, "wm")),
    Claim("08.fig8_am", "Fig. 8", "... and after AM", "REPAIR unstable, RESCALE robust",
          lambda r: fig8(r, "am")),
]
