"""The paper's claims, one list per notebook, and the tools around them: evaluating a study's
results (`check`), the CI guard against committed verdicts (`guard`) and the README summary
(`python -m vfcore.claims readme`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import (
    beyond,
    linear,
    normalization,
    partial,
    pfm,
    pruning,
    sweeps,
    vanishing,
    walkthrough,
    zipping,
)
from .core import Claim, Results, Verdict, evaluate, markdown, pm, save

CLAIMS: dict[str, list[Claim]] = {
    "00_walkthrough": walkthrough.CLAIMS,
    "01_linear_networks": linear.CLAIMS,
    "02_vanishing_feature": vanishing.CLAIMS,
    "03_normalization": normalization.CLAIMS,
    "04_partial_alignment": partial.CLAIMS,
    "05_preserve_first_merging": pfm.CLAIMS,
    "06_pfm_vs_partial_zip": zipping.CLAIMS,
    "07_pruning": pruning.CLAIMS,
    "08_hyperparameters": sweeps.CLAIMS,
    "09_beyond": beyond.CLAIMS,
}
"""Every notebook's claims, by notebook name."""


def check(notebook: str, table: pd.DataFrame, datasets: tuple[str, ...] = (),
          directory: str | Path | None = None) -> pd.DataFrame:
    """Evaluate a notebook's claims on its study table; with `directory`, write
    `claims_<notebook>.csv` and `.md` there."""
    if notebook not in CLAIMS:
        raise ValueError(f"no claims for notebook {notebook!r}; known: {', '.join(CLAIMS)}")
    verdicts = evaluate(CLAIMS[notebook], Results(table), datasets)
    if directory is not None:
        save(verdicts, f"claims_{notebook}", directory)
    return verdicts


__all__ = ["CLAIMS", "Claim", "Results", "Verdict", "check", "evaluate", "markdown", "pm",
           "save"]
