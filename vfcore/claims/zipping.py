"""Claims of notebook 06: PFM against partial zipping (Fig. 18; claim 17)."""

from __future__ import annotations

import numpy as np

from .core import Claim, Results, Verdict


def accuracy(r: Results, method: str, norm: str) -> dict[int, float]:
    """Mean accuracy over pairs per number K of unmerged layers (K = 0: the full merge, the
    same model for both methods)."""
    df = r.select("fig18", matcher="am", norm=norm)
    unmerged = df["unmerged"] if "unmerged" in df else df["l"] * float("nan")
    pfm = df[unmerged.isna()]
    out = pfm.groupby(pfm["l"].astype(int))["value"].mean().to_dict()
    if method == "zip":
        zipped = df[unmerged.notna()]
        out = {0: out[0]} | zipped.groupby(zipped["unmerged"].astype(int))["value"].mean().to_dict()
    return out


def pfm_wins(r: Results, norm: str) -> Verdict:
    pfm = accuracy(r, "pfm", norm)
    zipped = accuracy(r, "zip", norm)
    inner = [k for k in sorted(pfm) if 0 < k < max(pfm) and k in zipped]
    losses = [k for k in inner if pfm[k] < zipped[k]]
    wins = len(inner) - len(losses)
    gap = float(np.mean([pfm[k] - zipped[k] for k in inner]))
    return Verdict(f"{wins}/{len(inner)} (behind at K = {losses or 'none'})", float(wins),
                   float(len(inner) - 2.5), wins >= len(inner) - 2, f"mean gap {gap:+.1f} points")


CLAIMS = [
    Claim("06.pfm_wins", "Fig. 18 (claim 17)", "PFM >= partial zipping at all but at most 2 of "
          "K = 1..L-1 unmerged layers (AM, no normalisation)", "all K except K = 2",
          lambda r: pfm_wins(r, "none"), tolerance=1.0),
    Claim("06.pfm_wins_rescale", "Fig. 18 (claim 17)", "... and with RESCALE",
          "all K except K = 2", lambda r: pfm_wins(r, "rescale"), tolerance=1.0),
]
