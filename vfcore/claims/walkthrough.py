"""Claims of notebook 00, the classroom walkthrough: the paper's story on small MLPs."""

from __future__ import annotations

from .core import Claim, Results, Verdict, above, below, pm


def gap(r: Results, better: str, worse: str, margin: float) -> Verdict:
    b, w = r.values("walkthrough", better), r.values("walkthrough", worse)
    return above(b.mean() - w.mean(), margin, f"{pm(b, 1)}% vs {pm(w, 1)}%")


CLAIMS = [
    Claim("00.collapse", "Fig. 1", "Averaging two independently trained networks collapses "
          "accuracy (the direct midpoint at least 30 points below the mean endpoint)",
          "8-layer linear nets: 8.94% vs 85.76%", lambda r: gap(r, "edges", "direct", 30.0)),
    Claim("00.constant", "Fig. 2A", "The merged model's logits hardly depend on the input "
          "(their spread over test images < 25% of model A's)", "logits ≈ f_0.5(0)",
          lambda r: below(r.mean("walkthrough", "spread"), 0.25,
                          f"spread ratio {pm(r.values('walkthrough', 'spread'))}"),
          tolerance=0.1),
    Claim("00.vanishes", "Fig. 2B", "The input-induced feature vanishes with depth (tight bound "
          "of the normalised scale < 0.25 at the last layer)", "bounds decay with depth",
          lambda r: below(r.mean("walkthrough", "bound_last"), 0.25,
                          f"last-layer bound {pm(r.values('walkthrough', 'bound_last'))}"),
          tolerance=0.1),
    Claim("00.alignment", "Table 1", "Alignment helps (the WM midpoint at least 20 points above "
          "direct)", "VGG16 AM 46.50% vs direct near chance",
          lambda r: gap(r, "wm", "direct", 20.0)),
    Claim("00.rescale", "Table 1", "Renormalisation helps (direct + RESCALE at least 10 points "
          "above direct)", "VGG16 AM 46.50% -> 84.68% with RESCALE",
          lambda r: gap(r, "rescale", "direct", 10.0)),
    Claim("00.pfm", "Table 1", "Preserving the first layers helps (direct PFM (L-1)/L at least "
          "20 points above PFM 0)", "VGG16 AM 46.50% (PFM 0) -> 92.88% (PFM 12/14)",
          lambda r: gap(r, "pfm_last", "direct", 20.0)),
]
