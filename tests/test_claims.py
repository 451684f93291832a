"""The claims machinery: verdicts, the CI guard against committed claims, the README summary."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from vfcore.claims import Claim, Results, Verdict, evaluate, save
from vfcore.claims.core import above
from vfcore.claims.summary import ROOT, guard, load, readme_is_current, update_readme, what_holds
from vfcore.studies.setup import frame, rows

TABLE = frame(rows("demo", {"model": "m", "pair": 0}, {"accuracy": 80.0, "other": 70.0})
              + rows("demo", {"model": "m", "pair": 1}, {"accuracy": 84.0, "other": 60.0}))
CLAIMS = [
    Claim("x.gap", "Fig. 0", "accuracy beats other by 10 points", "12 points",
          lambda r: above(r.mean("demo") - r.mean("demo", "other"), 10.0, "gap")),
    Claim("x.missing", "Fig. 0", "needs a cell that is not there", "n/a",
          lambda r: above(r.mean("nothing"), 0.0, "never")),
    Claim("x.c100", "Table 9", "needs CIFAR-100", "n/a", lambda r: Verdict("", 0, 0, True),
          needs="cifar100"),
]


def test_verdicts_compare_means_over_pairs_with_the_margin():
    verdicts = evaluate(CLAIMS, Results(TABLE)).set_index("id")
    assert verdicts.loc["x.gap", "value"] == 17.0 and verdicts.loc["x.gap", "holds"] == "yes"
    assert verdicts.loc["x.missing", "holds"] == "NO"
    assert "not measured" in verdicts.loc["x.missing", "ours"]
    assert "x.c100" not in verdicts.index
    assert "x.c100" in evaluate(CLAIMS, Results(TABLE), ("cifar100",))["id"].tolist()


def _verdicts(value: float, holds: str, tolerance: float = 2.0) -> pd.DataFrame:
    return pd.DataFrame([{"id": "x.gap", "source": "s", "claim": "c", "paper": "p", "ours": "o",
                          "value": value, "threshold": 10.0, "holds": holds,
                          "tolerance": tolerance, "note": ""}])


@pytest.mark.parametrize(("value", "holds", "problems"), [
    (17.5, "yes", 0), (19.5, "yes", 1), (9.0, "NO", 2), (float("nan"), "NO", 1)])
def test_the_guard_refuses_a_flipped_or_moved_claim(tmp_path, value, holds, problems):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    save(_verdicts(17.0, "yes"), "claims_00_demo", tmp_path / "old")
    save(_verdicts(value, holds), "claims_00_demo", tmp_path / "new")
    found = guard(tmp_path / "new", tmp_path / "old")
    assert len(found) == problems, found
    if problems and holds == "NO":
        assert any("no longer holds" in p for p in found)
    if not math.isfinite(value):
        assert "no longer holds" in found[0]


def test_the_guard_notices_a_missing_notebook(tmp_path):
    (tmp_path / "new").mkdir()
    save(_verdicts(17.0, "yes"), "claims_00_demo", tmp_path / "old")
    assert "did the notebook run" in guard(tmp_path / "new", tmp_path / "old")[0]


def test_the_summary_counts_held_claims_per_profile(tmp_path):
    save(_verdicts(17.0, "yes"), "claims_00_demo", tmp_path / "smoke")
    save(_verdicts(17.0, "yes"), "claims_00_demo", tmp_path / "fmnist_quarter")
    save(_verdicts(1.0, "NO"), "claims_00_demo", tmp_path / "paper")
    save(_verdicts(17.0, "yes"), "claims_01_other", tmp_path / "smoke")
    table = what_holds(tmp_path)
    assert table.startswith("| notebook | smoke | fmnist_quarter | paper |")
    assert "| `00_demo` | 1/1 | 1/1 | 0/1 |" in table
    assert "| `01_other` | 1/1 | not run | not run |" in table
    assert "| **all** | **2/2** | **1/1** | **0/1** |" in table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- what-holds:begin -->\nold\n<!-- what-holds:end -->\nend\n")
    assert not readme_is_current(readme, tmp_path)
    assert update_readme(readme, tmp_path) and readme_is_current(readme, tmp_path)
    assert not update_readme(readme, tmp_path)


def test_the_committed_readme_summary_is_current():
    assert readme_is_current(), "run `python -m vfcore.claims readme` and commit the README"


def test_the_readme_explains_every_failure_at_fmnist_quarter():
    """The README's table of failures at the CPU rung names exactly the claims that fail there."""
    failing = {i for table in load(ROOT / "figures" / "fmnist_quarter").values()
               for i, holds in zip(table["id"], table["holds"], strict=True) if holds != "yes"}
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("**Every claim that fails at fmnist_quarter", 1)[1].split("\n## ", 1)[0]
    named = {i for row in section.splitlines() if row.startswith("| `")
             for i in re.findall(r"`([0-9]{2}\.[\w.]+)`", row.split(" | ")[0])}
    assert named == failing, (f"not explained: {sorted(failing - named)}; "
                              f"explained but holding: {sorted(named - failing)}")
