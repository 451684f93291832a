"""The report's figures: where the feature vanishes, the accuracy of every remedy, and the PFM
curve, each alone and side by side, in vfcore's figure style (`vfcore.plots.STYLE`)."""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..plots import STYLE
from .labels import label, merge_label
from .measure import ALIGNMENTS, VANISHED

CLIP = 2.0
"""The top of the feature-scale axis: a bound far above 1 (a normalised random network) would
flatten the curves that matter."""


def _legend_below(ax: Axes) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)


def _reference_lines(ax: Axes, report: dict[str, Any]) -> None:
    ends = report["endpoints"]
    ax.axhline(ends["mean"], color="0.3", lw=1, ls=":", label="endpoints' mean")
    ax.axhline(ends["ensemble"], color="0.6", lw=1, ls="-.", label="ensemble")


def draw_vf(ax: Axes, report: dict[str, Any]) -> None:
    """Smoothed bound per layer of each plain merge (solid) and of the best alignment with each
    normalisation (dashed); the raw scales as dots."""
    x = np.arange(1, len(report["layers"]) + 1)
    for key, curve in report["vf"].items():
        (line,) = ax.plot(x, curve["bound"], ls="--" if "+" in key else "-", label=label(key))
        ax.plot(x, curve["scale"], ".", color=line.get_color(), alpha=0.5)
    ax.plot([], [], ".", color="0.4", label="dots: measured")
    ax.axhline(VANISHED, color="0.5", lw=1, ls=":")
    ax.axhline(1.0, color="0.8", lw=1)
    top = max(max(c["bound"]) for c in report["vf"].values())
    ax.set_ylim(0, min(max(1.1, 1.05 * top), CLIP))
    if top > CLIP:
        ax.text(0.98, 0.97, f"cut off at {CLIP:g} (all values in report.json)", ha="right",
                va="top", transform=ax.transAxes, fontsize=7, color="0.4")
    ax.set_xlabel("layer l")
    ax.set_ylabel("normalised feature scale (smoothed bound)")
    ax.set_title("Where the feature vanishes")
    _legend_below(ax)


def draw_remedies(ax: Axes, report: dict[str, Any]) -> None:
    """Accuracy of every alignment and normalisation, grouped by alignment."""
    norms = report["norms"]
    grid = {(r["alignment"], r["norm"]): r["accuracy"] for r in report["remedies"]}
    width = 0.8 / len(norms)
    for i, norm in enumerate(norms):
        x = np.arange(len(ALIGNMENTS)) + (i - (len(norms) - 1) / 2) * width
        bars = ax.bar(x, [grid[m, norm] for m in ALIGNMENTS], width,
                      label="no normalisation" if norm == "none" else norm.upper())
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    _reference_lines(ax, report)
    ax.set_xticks(np.arange(len(ALIGNMENTS)), [label(m) for m in ALIGNMENTS])
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy per remedy")
    _legend_below(ax)


def draw_pfm(ax: Axes, report: dict[str, Any]) -> None:
    """Accuracy of PFM over the number of preserved layers."""
    pfm = report["pfm"]
    points = pfm["points"]
    ax.plot([p["l"] for p in points], [p["accuracy"] for p in points], "o-", label="PFM l/L")
    _reference_lines(ax, report)
    ax.set_ylim(0, 100)
    ax.set_xlabel("preserved layers l")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Preserve-First Merging ({merge_label(pfm['alignment'], pfm['norm'])})")
    _legend_below(ax)


PANELS = {"vf": draw_vf, "remedies": draw_remedies, "pfm": draw_pfm}
FIGURES = ("summary", *PANELS)
"""The report's figures, written as `<name>.png`: the three panels side by side, then each."""


def figures(report: dict[str, Any]) -> dict[str, Figure]:
    """The report's figures by name (`FIGURES`)."""
    out = {}
    with mpl.rc_context(STYLE):
        summary = Figure(figsize=(13, 4.6), layout="constrained")
        for ax, draw in zip(summary.subplots(1, 3), PANELS.values(), strict=True):
            draw(ax, report)
        summary.suptitle(f"vfcore diagnose: {report['inputs']['model']} on "
                         f"{report['inputs']['data']}")
        out["summary"] = summary
        for name, draw in PANELS.items():
            fig = Figure(figsize=(5, 4.6), layout="constrained")
            draw(fig.subplots(), report)
            out[name] = fig
    return out
