"""How the report names a merge: its alignment and normalisation."""

from __future__ import annotations


def label(key: str) -> str:
    """`am+reset` -> `AM + RESET`; `direct` stays lower case."""
    return " + ".join(part if part == "direct" else part.upper() for part in key.split("+"))


def merge_label(alignment: str, norm: str) -> str:
    """`AM + RESET`, or just the alignment without normalisation."""
    return label(alignment if norm == "none" else f"{alignment}+{norm}")
