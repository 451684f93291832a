"""The plot vocabulary of the notebooks: one style, one way to draw a mean over pairs with its
spread, and the recurring axes (merging coefficient, depth, preserved layers, sweeps).

Tidy study tables go in (`curve`), figures come out as PNG and PDF under `figures/<profile>/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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
AXES = {
    "alpha": ("α", "Test accuracy (%)"),
    "depth": ("Percentage of Total Depth L (%)", r"Normalised bound $\varepsilon^{(l)}$"),
    "preserved": ("Number of preserved layers l", "Test accuracy (%)"),
    "sparsity": ("Sparsity (%)", "Test accuracy (%)"),
}
"""x and y labels of the recurring figures."""


def use_style() -> None:
    """Apply the vfcore figure style (call once at the top of a notebook)."""
    mpl.rcParams.update(STYLE)


def figures_dir(profile: str, folder: str | os.PathLike | None = None) -> Path:
    """Where a notebook writes: `folder` when given, else `figures/<profile>/` of the repository
    (under `$VFCORE_FIGURES` when set: the test suite writes there, so that running it leaves
    the committed figures alone)."""
    base = Path(os.environ.get("VFCORE_FIGURES")
                or Path(__file__).resolve().parent.parent / "figures")
    path = Path(folder) if folder else base / profile
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


def curve(table: pd.DataFrame, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x values, (pairs, points) values) of the rows of one curve; several rows of one pair at
    one x (e.g. weight-matching restarts) are averaged."""
    means = table.groupby(["pair", x])["value"].mean().unstack(x)
    return means.columns.to_numpy(dtype=float), means.to_numpy(dtype=float)


def band(ax: plt.Axes, x: np.ndarray, values: np.ndarray, label: str, *, marker: str = "o",
         **style) -> None:
    """The mean over pairs (rows of `values`) as a line, and ± one standard deviation (ddof 1)
    as a shaded band when there is more than one pair."""
    values = np.atleast_2d(values)
    mean = values.mean(0)
    (line,) = ax.plot(x, mean, marker=marker, label=label, **style)
    if len(values) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)


def decorate(ax: plt.Axes, kind: str, title: str, *, reference: float | None = None,
             legend: bool = True) -> None:
    """Labels of a recurring axis kind (`AXES`), a title, and an optional dotted reference
    line (the endpoints' mean accuracy, or 1 for a normalised scale)."""
    xlabel, ylabel = AXES[kind]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if reference is not None:
        ax.axhline(reference, color="0.5", lw=1, ls=":")
    if legend:
        ax.legend()


def logits(ax: plt.Axes, curves: dict[str, tuple[np.ndarray, np.ndarray]],
           offset: np.ndarray | None = None, offset_label: str = r"$f(0)$") -> None:
    """Per-class mean logits with error bars of 0.1 std over images (Figs 2A, 5A), and the
    response to an all-zeros input as a dashed line."""
    classes = np.arange(len(next(iter(curves.values()))[0]))
    shifts = np.linspace(-0.15, 0.15, len(curves))
    for shift, (label, (mean, std)) in zip(shifts, curves.items(), strict=True):
        ax.errorbar(classes + shift, mean, yerr=0.1 * std, fmt="o-", capsize=2, label=label)
    if offset is not None:
        ax.plot(classes, offset, "k--", lw=1.2, label=offset_label)
    ax.set_xticks(classes)
    ax.set_xlabel("Class")
    ax.set_ylabel("Logit (mean ± 0.1 std)")
    ax.legend()
