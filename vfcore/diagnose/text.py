"""The report in words: a few sentences that read it, and `report.md` with the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .figures import FIGURES
from .labels import label, merge_label
from .measure import ALIGNMENTS, VANISHED


def _vanishing(curve: dict[str, Any], n_layers: int) -> str:
    if curve["vanishes_at"] is None:
        return (f"its bound stays above {VANISHED:g} (the feature does not vanish; it ends at "
                f"{curve['bound'][-1]:.2f})")
    return (f"its bound falls below {VANISHED:g} at layer {curve['vanishes_at']} of {n_layers} "
            f"(`{curve['vanishes_at_layer']}`, {curve['vanishes_at_depth']:g}% of the depth) "
            f"and ends at {curve['bound'][-1]:.2f}")


def reading(report: dict[str, Any]) -> list[str]:
    """A few sentences that read the report: accuracies, where the feature vanishes, which
    remedy recovers how much, what PFM costs."""
    ends, best, n_layers = report["endpoints"], report["best"], len(report["layers"])
    plain = {r["alignment"]: r["accuracy"] for r in report["remedies"] if r["norm"] == "none"}
    lines = [f"The endpoints score {ends['a']:.1f}% and {ends['b']:.1f}% (mean "
             f"{ends['mean']:.1f}%); their ensemble {ends['ensemble']:.1f}%."]
    if ends["mean"] < report["chance"] + 10:
        lines.append(f"**The endpoints are close to chance ({report['chance']:g}%): the "
                     "accuracies below say little about merging. Diagnose trained models.**")
    lines.append("Merged at alpha = 0.5 without normalisation: "
                 + ", ".join(f"{label(m)} {acc:.1f}%" for m, acc in plain.items()) + ".")
    top = max(plain, key=plain.get)
    lines.append(f"Vanishing feature, {label(top)} merge: "
                 f"{_vanishing(report['vf'][top], n_layers)}.")
    for r in report["remedies"]:
        if r["alignment"] == best["alignment"] and r["norm"] != "none":
            share = ("" if r["recovered"] is None else
                     f", recovering {100 * r['recovered']:.0f}% of the gap between the direct "
                     "merge and the endpoints' mean")
            curve = report["vf"][f"{r['alignment']}+{r['norm']}"]
            lines.append(f"{merge_label(r['alignment'], r['norm'])}: "
                         f"{r['accuracy']:.1f}%{share}; {_vanishing(curve, n_layers)}.")
    lines.append(f"Best merge: {merge_label(best['alignment'], best['norm'])}, "
                 f"{best['accuracy']:.1f}%.")
    points = report["pfm"]["points"]
    target = ends["mean"] - 1
    reached = next((p for p in points if p["accuracy"] >= target), None)
    if reached is None:
        top_point = max(points, key=lambda p: p["accuracy"])
        lines.append(f"PFM never comes within 1 point of the endpoints' mean; its best is "
                     f"{top_point['accuracy']:.1f}% at l = {top_point['l']} of {n_layers}.")
    elif reached["l"] == 0:
        lines.append("The best merge is already within 1 point of the endpoints' mean: PFM "
                     "has nothing to add.")
    else:
        lines.append(f"PFM keeping the first {reached['l']} of {n_layers} layers unmerged "
                     f"reaches {reached['accuracy']:.1f}%, within 1 point of the endpoints' "
                     f"mean, at {reached['params_ratio']:.2f}x the parameters of one model.")
    return lines


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(report: dict[str, Any]) -> str:
    """report.md: the reading, the summary figure and the tables behind it."""
    info, norms, n_layers = report["inputs"], report["norms"], len(report["layers"])
    files = " + ".join(f"`{Path(c['path']).name}`" for c in info["checkpoints"])
    out = [f"# Merge diagnosis: {files}", "",
           f"{info['model']} on {info['data']}; calibration and measurement on "
           f"{info['calibration_images']} training images, accuracy on the first "
           f"{info['test_images']} test images; alpha = {info['alpha']}, seed {info['seed']}, "
           f"device {info['device']}; vfcore {report['vfcore_version']}.", "",
           "![summary](summary.png)", "", "## Reading", ""]
    out += [f"- {line}" for line in reading(report)]
    out += ["", "## Accuracy per remedy (%)", "",
            _row(["alignment", *(n.upper() if n != "none" else "no normalisation"
                                 for n in norms)]),
            "|---" * (1 + len(norms)) + "|"]
    grid = {(r["alignment"], r["norm"]): r["accuracy"] for r in report["remedies"]}
    out += [_row([label(m), *(f"{grid[m, n]:.1f}" for n in norms)]) for m in ALIGNMENTS]
    ends = report["endpoints"]
    out += ["", f"Endpoints {ends['a']:.1f} and {ends['b']:.1f}, ensemble "
            f"{ends['ensemble']:.1f}; chance {report['chance']:g}.", "",
            "## Vanishing feature (smoothed bound of the normalised scale)", "",
            f"1 means the merged model keeps as much input-induced feature as the endpoints; "
            f"below {VANISHED:g} (**bold**) it has vanished. Scales and bounds are in "
            "report.json.", ""]
    keys = list(report["vf"])
    out += [_row(["layer", "module", *(label(k) for k in keys)]), "|---" * (2 + len(keys)) + "|"]
    for i, name in enumerate(report["layers"]):
        cells = [report["vf"][k]["bound"][i] for k in keys]
        out.append(_row([i + 1, f"`{name}`", *(f"**{v:.2f}**" if v < VANISHED else f"{v:.2f}"
                                                for v in cells)]))
    pfm = report["pfm"]
    out += ["", f"## Preserve-First Merging ({merge_label(pfm['alignment'], pfm['norm'])})", "",
            f"The first l of {n_layers} layers of both endpoints run unmerged; l = {n_layers} "
            "is the ensemble.", "", _row(["l", "accuracy (%)", "parameters (x one model)"]),
            "|---|---|---|"]
    out += [_row([p["l"], f"{p['accuracy']:.1f}", f"{p['params_ratio']:.2f}"])
            for p in pfm["points"]]
    out += ["", "Figures: " + ", ".join(f"`{name}.png`" for name in FIGURES)
            + "; every number: `report.json`.", ""]
    return "\n".join(out)
