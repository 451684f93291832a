"""Claims as data: the paper's number, our criterion with its margin, and the verdict.

A `Claim` names its source in the paper (table or figure), states the claim, quotes the paper's
number and holds a test: a function of the study results that returns a `Verdict` (our number
as text, the compared value, the threshold it is compared with, and whether it holds). Every
criterion is fixed before looking at the results; comparisons of means use margins chosen larger
than the spread between pairs. `tolerance` is how far the value may move between two runs of
the same profile (other thread counts, other machines of one kind) before CI calls it a change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..report import markdown_table, save_table
from ..studies.setup import MissingResult, expand_settings, summary

COLUMNS = ("id", "source", "claim", "paper", "ours", "value", "threshold", "holds",
           "tolerance", "note")


@dataclass(frozen=True)
class Verdict:
    ours: str
    value: float
    threshold: float
    holds: bool
    note: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    statement: str
    paper: str
    test: Callable[[Results], Verdict]
    tolerance: float = 2.0
    needs: str | None = None
    """A dataset the claim needs beyond the profile's main ones (CIFAR-100's tables)."""


class Results:
    """Queries on a study's tidy table: per-pair values of one cell, means over pairs."""

    def __init__(self, table: pd.DataFrame):
        self.table = expand_settings(table) if "setting" in table else table

    def select(self, study: str | None = None, metric: str = "accuracy", **coords) -> pd.DataFrame:
        df = self.table
        mask = df["metric"] == metric
        if study is not None:
            mask &= df["study"] == study
        for column, value in coords.items():
            if value is None:
                mask &= df[column].isna()
            else:
                mask &= df[column] == value
        out = df[mask]
        if out.empty:
            raise MissingResult(f"no rows for study={study!r} metric={metric!r} {coords}")
        return out

    def values(self, study: str | None = None, metric: str = "accuracy", **coords) -> np.ndarray:
        """The scalar value of each pair (sorted by pair)."""
        df = self.select(study, metric, **coords)
        return df.sort_values("pair")["value"].to_numpy(dtype=float)

    def mean(self, study: str | None = None, metric: str = "accuracy", **coords) -> float:
        return summary(self.values(study, metric, **coords))[0]

    def curve(self, study: str | None = None, metric: str = "depth", **coords) -> np.ndarray:
        """(pairs, points) array of a list-valued metric."""
        df = self.select(study, metric, **coords)
        return np.stack([g.sort_values("index")["value"].to_numpy(dtype=float)
                         for _, g in df.groupby("pair")])


def pm(values: Sequence[float] | np.ndarray, digits: int = 2) -> str:
    """'mean ± std' over pairs (ddof 1), or the value alone for one pair."""
    mean, std, n = summary(values)
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def above(value: float, threshold: float, ours: str, note: str = "") -> Verdict:
    """Holds when value > threshold."""
    return Verdict(ours, float(value), float(threshold), bool(value > threshold), note)


def below(value: float, threshold: float, ours: str, note: str = "") -> Verdict:
    """Holds when value < threshold."""
    return Verdict(ours, float(value), float(threshold), bool(value < threshold), note)


def evaluate(claims: Sequence[Claim], results: Results,
             datasets: Sequence[str] = ()) -> pd.DataFrame:
    """One row per claim (see COLUMNS); claims that need a dataset outside `datasets` are left
    out (the profile does not run them)."""
    rows = []
    for claim in claims:
        if claim.needs is not None and claim.needs not in datasets:
            continue
        try:
            v = claim.test(results)
        except MissingResult as err:
            v = Verdict("not measured at this profile", float("nan"), float("nan"), False,
                        str(err))
        rows.append({"id": claim.id, "source": claim.source, "claim": claim.statement,
                     "paper": claim.paper, "ours": v.ours, "value": round(v.value, 4),
                     "threshold": round(v.threshold, 4), "holds": "yes" if v.holds else "NO",
                     "tolerance": claim.tolerance, "note": v.note})
    return pd.DataFrame(rows, columns=list(COLUMNS))


SHOWN = ["source", "claim", "paper", "ours", "holds", "note"]
"""The columns of the claims table that ends a notebook."""


def markdown(verdicts: pd.DataFrame) -> str:
    """The claims table as it ends a notebook."""
    return markdown_table(verdicts[SHOWN])


def save(verdicts: pd.DataFrame, name: str, directory: str | Path) -> str:
    """Write `name.csv` (every column) and `name.md` atomically; return the Markdown."""
    return save_table(verdicts, name, directory, shown=SHOWN)
