"""What holds, profile by profile: the README summary generated from the claims CSVs, and the CI
guard that compares regenerated claims with the committed ones.

    python -m vfcore.claims readme             # rewrite the README's "What holds" table
    python -m vfcore.claims guard NEW COMMITTED   # exit 1 when a committed claim changed
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("smoke", "fmnist_quarter", "paper")
"""The profiles the README compares, left to right."""
BEGIN, END = "<!-- what-holds:begin -->", "<!-- what-holds:end -->"


def load(directory: str | Path) -> dict[str, pd.DataFrame]:
    """Every claims CSV under `directory`, by notebook name."""
    return {p.stem.removeprefix("claims_"): pd.read_csv(p, keep_default_na=False)
            for p in sorted(Path(directory).glob("claims_*.csv"))}


def _number(text: object) -> float:
    """A value column entry; empty (a claim not measured) reads as NaN."""
    return float(text) if str(text).strip() else math.nan


def _counts(verdicts: pd.DataFrame | None) -> str:
    if verdicts is None:
        return "not run"
    held = int((verdicts["holds"] == "yes").sum())
    return f"{held}/{len(verdicts)}"


def what_holds(figures: str | Path = ROOT / "figures") -> str:
    """The README table: per notebook, the claims that hold at each profile."""
    tables = {p: load(Path(figures) / p) for p in PROFILES}
    notebooks = sorted({n for t in tables.values() for n in t})
    lines = ["| notebook | " + " | ".join(PROFILES) + " |", "|---|" + "---|" * len(PROFILES)]
    for notebook in notebooks:
        lines.append(f"| `{notebook}` | " + " | ".join(_counts(tables[p].get(notebook))
                                                      for p in PROFILES) + " |")
    totals = []
    for p in PROFILES:
        runs = list(tables[p].values())
        totals.append(_counts(pd.concat(runs)) if runs else "not run")
    lines.append("| **all** | " + " | ".join(f"**{t}**" for t in totals) + " |")
    return "\n".join(lines) + "\n"


def update_readme(readme: str | Path = ROOT / "README.md",
                  figures: str | Path = ROOT / "figures") -> bool:
    """Rewrite the table between the README's markers; return whether it changed."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} markers for the summary")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    new = pattern.sub(lambda _: f"{BEGIN}\n{what_holds(figures)}{END}", text)
    if new != text:
        atomic_write_text(readme, new)
    return new != text


def readme_is_current(readme: str | Path = ROOT / "README.md",
                      figures: str | Path = ROOT / "figures") -> bool:
    text = Path(readme).read_text(encoding="utf-8")
    return f"{BEGIN}\n{what_holds(figures)}{END}" in text


def guard(new: str | Path, committed: str | Path) -> list[str]:
    """Differences that CI refuses: a committed claim that held and no longer holds, a claim
    whose value moved by more than its tolerance, a claim or a claims file that disappeared."""
    problems = []
    fresh = load(new)
    for notebook, old in load(committed).items():
        if notebook not in fresh:
            problems.append(f"{notebook}: no regenerated claims (did the notebook run?)")
            continue
        now = fresh[notebook].set_index("id")
        for row in old.itertuples(index=False):
            if row.id not in now.index:
                problems.append(f"{notebook}: claim {row.id} is gone")
                continue
            current = now.loc[row.id]
            if row.holds == "yes" and current["holds"] != "yes":
                problems.append(f"{notebook}: claim {row.id} held and no longer holds "
                                f"({row.ours} -> {current['ours']})")
            before, after = _number(row.value), _number(current["value"])
            if (math.isfinite(before) and math.isfinite(after)
                    and abs(after - before) > float(row.tolerance)):
                problems.append(f"{notebook}: claim {row.id} moved from {before:g} to "
                                f"{after:g}, more than its tolerance {row.tolerance:g}")
    return problems
