"""The report folder: refused when it would overwrite, then written file by file atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib as mpl

from ..io import atomic_write, atomic_write_text
from ..plots import STYLE
from .errors import BadInput
from .figures import figures
from .text import markdown


def check_output(path: str | os.PathLike, force: bool, *, folder: bool = False) -> Path:
    """Refuse an output that exists (a non-empty folder for `folder`) unless `force`."""
    path = Path(path)
    if not path.exists():
        return path
    if folder != path.is_dir():
        raise BadInput(f"{path} exists and is {'not ' if folder else ''}a folder")
    if not force and not (folder and not any(path.iterdir())):
        raise BadInput(f"{path} exists; choose another path or pass --force to overwrite it")
    return path


def write_report(report: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """Write report.json, the PNG figures and report.md into `folder`, each atomically."""
    folder = Path(folder)
    written = [atomic_write_text(folder / "report.json", json.dumps(report, indent=1) + "\n")]
    with mpl.rc_context(STYLE):
        for name, fig in figures(report).items():
            written.append(atomic_write(folder / f"{name}.png", lambda p, fig=fig: fig.savefig(
                p, format="png", metadata={"Software": None})))
    written.append(atomic_write_text(folder / "report.md", markdown(report)))
    return written
