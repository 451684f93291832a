"""Tables as CSV and Markdown, and the claims table that ends every notebook."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_write_text

Row = Sequence[object]


def _cell(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown_table(header: Row, rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_table(header: Row, rows: Sequence[Row], name: str, directory: str | os.PathLike
               ) -> tuple[Path, Path]:
    """Write `name.csv` and `name.md` atomically; return their paths."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    directory = Path(directory)
    return (atomic_write_text(directory / f"{name}.csv", buf.getvalue()),
            atomic_write_text(directory / f"{name}.md", markdown_table(header, rows)))


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: its number, ours at this profile, and whether it holds."""

    claim: str
    paper: str
    ours: str
    holds: bool
    note: str = ""


def claims_table(claims: Sequence[Claim], name: str, directory: str | os.PathLike) -> str:
    """Save and return the Markdown claims table of a notebook."""
    header = ("claim", "paper", "ours", "holds", "note")
    rows = [(c.claim, c.paper, c.ours, "yes" if c.holds else "NO", c.note) for c in claims]
    save_table(header, rows, name, directory)
    return markdown_table(header, rows)
