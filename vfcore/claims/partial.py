"""Claims of notebook 04: partial alignment (Fig. 4 Left). The paper states the shape of the
curves only: accuracy rises with the number of aligned layers, then saturates below the
endpoints."""

from __future__ import annotations

import numpy as np

from .core import Claim, Results, Verdict, above, below

CURVES = (("wm", "none"), ("am", "none"), ("wm", "rescale"), ("am", "rescale"))


def curve(r: Results, matcher: str, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """(l grid, mean accuracy over pairs) of one curve."""
    df = r.select("fig04_left", matcher=matcher, norm=norm)
    means = df.groupby(df["permuted"].astype(int))["value"].mean().sort_index()
    return means.index.to_numpy(), means.to_numpy()


def label(matcher: str, norm: str) -> str:
    return matcher.upper() + (" + RESCALE" if norm == "rescale" else "")


def rises(r: Results, matcher: str, norm: str) -> Verdict:
    _, acc = curve(r, matcher, norm)
    return above(acc[-1] - acc[0], 5.0, f"{acc[0]:.1f}% -> {acc[-1]:.1f}%")


def saturates(r: Results, matcher: str, norm: str) -> Verdict:
    ls, acc = curve(r, matcher, norm)
    gain = acc[-1] - acc[0]
    i = int(np.flatnonzero(ls >= 2 * ls[-1] / 3)[0])
    reached = (acc[i] - acc[0]) / gain if gain > 0 else float("nan")
    ours = f"{100 * reached:.0f}% of the gain by l = {ls[i]}" if gain > 0 else "no gain"
    return Verdict(ours, float(reached) if gain > 0 else 0.0, 0.8,
                   bool(gain > 0 and reached >= 0.8))


def below_edges(r: Results, matcher: str, norm: str) -> Verdict:
    _, acc = curve(r, matcher, norm)
    edge = (r.mean("endpoints", "model_a") + r.mean("endpoints", "model_b")) / 2
    return below(acc.max() - edge, 0.0, f"max {acc.max():.1f}% vs endpoints {edge:.1f}%")


CLAIMS = []
for _m, _n in CURVES:
    CLAIMS += [
        Claim(f"04.{_m}_{_n}.rises", "Fig. 4 Left", f"{label(_m, _n)}: accuracy rises with the "
              "number of aligned layers (l = L at least 5 points above l = 0)", "rises",
              lambda r, m=_m, n=_n: rises(r, m, n)),
        Claim(f"04.{_m}_{_n}.saturates", "Fig. 4 Left", f"{label(_m, _n)}: then saturates (80% "
              "of the gain reached by two thirds of the depth)", "saturates",
              lambda r, m=_m, n=_n: saturates(r, m, n), tolerance=0.15),
        Claim(f"04.{_m}_{_n}.below", "Fig. 4 Left", f"{label(_m, _n)}: stays below the "
              "endpoints (the best l is below the mean endpoint)", "below the endpoints",
              lambda r, m=_m, n=_n: below_edges(r, m, n)),
    ]
