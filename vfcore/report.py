"""Tables of the notebooks as CSV and Markdown, written atomically beside the figures."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from .io import atomic_write_text


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats with 2 decimals, `|` escaped)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * table.shape[1]]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines) + "\n"


def save_table(table: pd.DataFrame, name: str, directory: str | os.PathLike, *,
               shown: list[str] | None = None) -> str:
    """Write `name.csv` (every column) and `name.md` (the `shown` columns, default all)
    atomically; return the Markdown."""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, lineterminator="\n", float_format="%.4g")
    directory = Path(directory)
    atomic_write_text(directory / f"{name}.csv", buffer.getvalue())
    text = markdown_table(table if shown is None else table[shown])
    atomic_write_text(directory / f"{name}.md", text)
    return text
