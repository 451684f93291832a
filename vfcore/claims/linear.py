"""Claims of notebook 01: deep linear networks (Fig. 1, Eq. 2, Fig. 2D; claims 1-3 and 6)."""

from __future__ import annotations

import numpy as np

from .core import Claim, Results, Verdict, above, below, pm


def _edges(r: Results) -> tuple[np.ndarray, np.ndarray]:
    return r.values("endpoints", "model_a"), r.values("endpoints", "model_b")


def collapse(r: Results) -> Verdict:
    direct = r.values("fig01_accuracy", matcher="direct")
    a, b = _edges(r)
    worst_edge = min(a.mean(), b.mean())
    return below(direct.mean(), min(20.0, worst_edge / 2),
                 f"{pm(direct)}% vs endpoints {pm(a)} / {pm(b)}%",
                 "endpoint accuracy itself depends on the profile's training length")


def feature_vanishes(r: Results) -> Verdict:
    g_mid = r.curve("fig01", "g_mid").mean(0)
    g_edge, h_mid = r.curve("fig01", "g_edge").mean(0), r.curve("fig01", "h_mid").mean(0)
    ratio = g_mid[-1] / g_edge[-1]
    ours = (f"last layer: ||g_0.5|| = {g_mid[-1]:.3g} ({100 * ratio:.1f}% of edge), "
            f"||h_0.5|| = {h_mid[-1]:.3g}")
    holds = ratio < 0.05 and h_mid[-1] > g_mid[-1]
    return Verdict(ours, float(ratio), 0.05, bool(holds))


def alignment_partial(r: Results) -> Verdict:
    wm, am = r.values("fig01_accuracy", matcher="wm"), r.values("fig01_accuracy", matcher="am")
    direct = r.values("fig01_accuracy", matcher="direct").mean()
    a, b = _edges(r)
    edge = (a.mean() + b.mean()) / 2
    low, high = min(wm.mean(), am.mean()), max(wm.mean(), am.mean())
    return Verdict(f"WM {pm(wm)}%, AM {pm(am)}% (direct {direct:.2f}%)", float(low - direct),
                   0.0, bool(low > direct and high < edge))


def am_beats_wm(r: Results) -> Verdict:
    wm, am = r.values("fig01_accuracy", matcher="wm"), r.values("fig01_accuracy", matcher="am")
    return above(am.mean() - wm.mean(), 5.0, f"AM {pm(am)}%, WM {pm(wm)}%")


def weights_shrink(r: Results) -> Verdict:
    ratio = r.curve("fig01", "w_mid") / r.curve("fig01", "w_edge")
    return below(ratio.max(), 1.0, f"merged/edge mean |W| from {ratio.min():.2f} to "
                                   f"{ratio.max():.2f}")


def rescaling_restores(r: Results) -> Verdict:
    recovered = (r.curve("fig01", "g_rescaled") / r.curve("fig01", "g_edge")).mean(0)
    plain = (r.curve("fig01", "g_mid") / r.curve("fig01", "g_edge")).mean(0)
    worst = float(np.max(np.abs(np.log2(recovered))))
    return Verdict(f"rescaled / edge from {recovered.min():.2f} to {recovered.max():.2f} "
                   f"(unrescaled down to {plain.min():.3f})", worst, 1.0, bool(worst <= 1.0),
                   "rescaling corrects entry size, not the directions lost by averaging")


def eq2(r: Results) -> Verdict:
    err = max(r.values("fig01", "eq2_sum_error").max(), r.values("fig01", "eq2_var_error").max())
    return below(err, 1e-8, f"max relative error {err:.1e} (float64)")


def residual_helps(r: Results, matcher: str) -> Verdict:
    res = r.values("fig02d", model="linear5_res", matcher=matcher, alpha=0.5)
    plain = r.values("fig02d", model="linear5", matcher=matcher, alpha=0.5)
    return above(res.mean() - plain.mean(), 5.0, f"{pm(res)}% vs {pm(plain)}% at alpha = 0.5")


CLAIMS = [
    Claim("01.collapse", "Fig. 1 (claim 1)", "The direct midpoint of 8-layer linear nets collapses "
          "to near chance while the endpoints stay far above it (midpoint < 20% and < half the "
          "weaker endpoint)", "8.94% vs endpoint 85.76% (MNIST)", collapse),
    Claim("01.feature_vanishes", "Fig. 1 Left (claim 1)", "||g_0.5|| decays towards 0 with depth "
          "while ||h_0.5|| grows past it (at the last layer ||g_0.5|| < 5% of the endpoints' and "
          "||h_0.5|| > ||g_0.5||)", "qualitative", feature_vanishes, tolerance=0.02),
    Claim("01.alignment_partial", "Fig. 1 notebook", "Alignment helps the linear midpoint only "
          "partly (WM and AM above direct, both below the mean endpoint)",
          "WM 16.12%, AM 53.75% vs direct 8.94%", alignment_partial),
    Claim("01.am_beats_wm", "Fig. 1 notebook", "AM beats WM on the linear midpoint by more than "
          "5 points", "AM 53.75% > WM 16.12%", am_beats_wm),
    Claim("01.weights_shrink", "Fig. 1 Mid (claim 2)", "The merged net has a smaller mean |W| "
          "than the endpoints in every layer", "qualitative", weights_shrink, tolerance=0.05),
    Claim("01.rescaling", "Fig. 1 Right (claim 2)", "Rescaling g_0.5 by the cumulative "
          "weight-magnitude ratio restores the edge-level feature norm (within a factor 2 at "
          "every layer)", "qualitative", rescaling_restores, tolerance=0.3),
    Claim("01.eq2", "Eq. 2 (claim 3)", "f = g + h and Var_x f = Var_x g for the merged linear net "
          "(relative error < 1e-8 in float64)", "exact", eq2, tolerance=1e-8),
    Claim("01.residual_direct", "Fig. 2D (claim 6)", "Residual connections raise the direct "
          "midpoint of 5-layer linear nets by more than 5 points", "qualitative",
          lambda r: residual_helps(r, "direct")),
    Claim("01.residual_wm", "Fig. 2D (claim 6)", "... and the WM midpoint by more than 5 points",
          "qualitative", lambda r: residual_helps(r, "wm")),
]
