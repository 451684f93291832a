"""Claims of notebook 03: normalising a merged plain VGG16 (Fig. 3, Fig. 13; claims 7 and 8).

Fig. 3 has no numbers in the paper's text; the closest are the full-merge (PFM 0) rows of Table 1
(activation matching) and Table 6 (ZipIt!), quoted as proxies for the midpoint.
"""

from __future__ import annotations

from ..studies.normalization import line, removal_curves
from .core import Claim, Results, Verdict, above

MARGIN = 5.0
"""Points by which one normalisation must beat another at the midpoint."""


def midpoint(r: Results, matcher: str, fix: str) -> float:
    """Mean accuracy at alpha = 0.5 over pairs (and weight-matching restarts) of one curve."""
    rows = line(r.table, matcher, fix)
    return float(rows[rows["alpha"] == 0.5]["value"].mean())


def beats(r: Results, matcher: str, better: str, worse: str, margin: float = MARGIN) -> Verdict:
    b, w = midpoint(r, matcher, better), midpoint(r, matcher, worse)
    return above(b - w, margin, f"{better} {b:.1f} vs {worse} {w:.1f}")


def zipit_rescale_best(r: Results) -> Verdict:
    scores = {fix: midpoint(r, "zipit", fix) for fix in ("rescale", "bias_cal", "bias_removal")}
    runner_up = max(v for k, v in scores.items() if k != "rescale")
    return above(scores["rescale"] - runner_up, 0.0,
                 ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))


def backward_near_best(r: Results) -> Verdict:
    curves = removal_curves(r.table[r.table["study"] == "fig13"])
    back = curves.query("direction == 'backward'").set_index("k")["mean"]
    near = max(back.get(5, -1.0), back.get(6, -1.0))
    return above(near - back.max(), -2.0, f"k = 5/6: {back.get(5, float('nan')):.1f} / "
                                          f"{back.get(6, float('nan')):.1f}; best k = "
                                          f"{int(back.idxmax())}: {back.max():.1f}")


def forward_hurts(r: Results) -> Verdict:
    curves = removal_curves(r.table[r.table["study"] == "fig13"])
    fwd = curves.query("direction == 'forward'").set_index("k")["mean"]
    worst_gap = fwd[0] - fwd[fwd.index > 0].max()
    return above(worst_gap, 0.0, f"k = 0: {fwd[0]:.1f}; forward k >= 1: at most "
                                 f"{fwd[fwd.index > 0].max():.1f}")


def wm_rescale_gain(r: Results) -> Verdict:
    return beats(r, "wm", "rescale", "none", 10.0)


CLAIMS = [
    Claim("03.wm_repair_rescale", "Fig. 3 Left (claim 7)", "After WM at alpha = 0.5, RESCALE "
          f"beats REPAIR by more than {MARGIN:g} points", "39.09 < 84.68 (Table 1 PFM0, AM)",
          lambda r: beats(r, "wm", "rescale", "repair")),
    Claim("03.wm_repair_biascal", "Fig. 3 Left (claim 7)", "After WM at alpha = 0.5, Bias Cal. "
          f"beats REPAIR by more than {MARGIN:g} points", "39.09 < 82.94 (Table 1 PFM0, AM)",
          lambda r: beats(r, "wm", "bias_cal", "repair")),
    Claim("03.wm_repair_removal", "Fig. 3 Left", "After WM at alpha = 0.5, Bias Removal beats "
          f"REPAIR by more than {MARGIN:g} points", "Fig. 3 Left (no number)",
          lambda r: beats(r, "wm", "bias_removal", "repair")),
    Claim("03.wm_rescale_gain", "Fig. 3 Left", "After WM at alpha = 0.5, RESCALE improves on no "
          "normalisation by more than 10 points", "46.50 -> 84.68 (Table 1 PFM0, AM)",
          wm_rescale_gain),
    Claim("03.zipit_repair_rescale", "Fig. 3 Right (claim 7)", "After ZipIt! at alpha = 0.5, "
          f"RESCALE beats REPAIR by more than {MARGIN:g} points", "67.93 < 84.7 (Table 6 PFM0)",
          lambda r: beats(r, "zipit", "rescale", "repair")),
    Claim("03.zipit_rescale_best", "Fig. 3 Right", "After ZipIt!, RESCALE is the best of the "
          "three VF-targeted methods at alpha = 0.5", "RESCALE 84.7 > Bias Cal. 83.24 (Table 6)",
          zipit_rescale_best),
    Claim("03.backward_removal", "Fig. 13 (claim 8)", "Backward removal of the last 5-6 layers "
          "is within 2 points of the best k", "near-optimal at k = 5-6", backward_near_best),
    Claim("03.forward_removal", "Fig. 13 (claim 8)", "Forward removal hurts: every k >= 1 is "
          "below k = 0", "forward hurts", forward_hurts),
]
