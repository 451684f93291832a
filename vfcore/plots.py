"""One figure style for every notebook, and saving figures as PNG and PDF."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt

from .io import atomic_write

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "pdf.fonttype": 42,
    "svg.hashsalt": "vfcore",
}


def use_style() -> None:
    """Apply the vfcore figure style (call once at the top of a notebook)."""
    mpl.rcParams.update(STYLE)


def figures_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """`figures/<profile>/` of the repository (or under `root`)."""
    base = Path(root) if root else Path(__file__).resolve().parent.parent / "figures"
    path = base / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: plt.Figure, name: str, directory: str | os.PathLike) -> list[Path]:
    """Write `name.png` and `name.pdf` atomically (PDFs without a creation date, so that
    regenerating an unchanged figure leaves the file unchanged)."""
    paths = []
    for ext in ("png", "pdf"):
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        path = Path(directory) / f"{name}.{ext}"
        paths.append(atomic_write(path, lambda p, ext=ext, meta=meta: fig.savefig(
            p, format=ext, metadata=meta)))
    return paths
