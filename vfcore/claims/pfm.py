"""Claims of notebook 05: Preserve-First Merging (Tables 1, 3, 4, 6-14, Fig. 17; claims 9-16)."""

from __future__ import annotations

import numpy as np

from ..studies.pfm import PRESERVED, PRESERVED_C100_BN
from .core import Claim, Results, Verdict, above, below

PAPER_COST = {
    "vgg16": {3: (1.008, 1.19), 6: (1.08, 1.49), 8: (1.2, 1.67), 12: (1.84, 1.97)},
    "vgg16_bn": {3: (1.008, 1.19), 6: (1.08, 1.49), 8: (1.2, 1.67), 12: (1.84, 1.97)},
    "vgg16_bn/100": {7: (1.12, 1.61), 10: (1.52, 1.91)},
    "resnet20": {6: (1.04, 1.3), 10: (1.14, 1.51), 13: (1.24, 1.68), 19: (2.0, 2.0)},
}
"""The paper's (params ratio, FLOPs ratio) per preserved count (Tables 1, 4, 7; "/100": the
CIFAR-100 head of Table 9)."""
PAPER_BASE = {"vgg16": 14_719_818, "vgg16_bn": 14_728_266, "resnet20": 272_474}


def column_pairs(r: Results, model: str, matcher: str, norm: str, dataset: str | None,
                 n: int) -> np.ndarray:
    """Per-pair accuracy of one table cell: PFM n with `matcher` and `norm` (or Bias Cal.)."""
    bias = "calibrate" if norm == "bias_cal" else None
    coords = {"matcher": matcher, "norm": "none" if norm == "bias_cal" else norm, "bias": bias,
              "l": n} | ({"dataset": dataset} if dataset else {})
    return r.values(f"pfm_{model}", **coords)


def column(r: Results, model: str, matcher: str, norm: str, *, dataset: str | None = None,
           counts: tuple[int, ...] | None = None) -> np.ndarray:
    """Mean accuracy over pairs at each preserved count of one table column."""
    return np.array([column_pairs(r, model, matcher, norm, dataset, n).mean()
                     for n in counts or PRESERVED[model]])


def endpoint_pairs(r: Results, model: str, metric: str, dataset: str | None = None) -> np.ndarray:
    """Per-pair accuracy of endpoint a or b ("model_a", "model_b") or of their ensemble."""
    coords = {"model": model} | ({"dataset": dataset} if dataset else {})
    return r.values("endpoints", metric, **coords)


def best_endpoint(r: Results, model: str, dataset: str | None = None) -> float:
    return max(endpoint_pairs(r, model, "model_a", dataset).mean(),
               endpoint_pairs(r, model, "model_b", dataset).mean())


def seq(values: np.ndarray) -> str:
    return " -> ".join(f"{v:.1f}" for v in values)


def rises(values: np.ndarray, slack: float = 2.0) -> bool:
    """Ends above its start and never drops by more than `slack` points from one l to the next."""
    return bool(values[-1] > values[0] and np.all(np.diff(values) >= -slack))


def reaches_endpoint(r: Results, model: str, matcher: str, norm: str, n: int) -> Verdict:
    counts = PRESERVED[model]
    value = column(r, model, matcher, norm)[counts.index(n)]
    best = best_endpoint(r, model)
    return above(value - best, -1.0, f"{value:.2f} vs better endpoint {best:.2f}",
                 "above both endpoints" if value > best else "below the better endpoint")


def all_rise(r: Results) -> Verdict:
    columns = [("vgg16", m, n) for m in ("am", "zipit", "cca")
               for n in ("none", "repair", "rescale", "bias_cal")]
    columns += [("vgg16_bn", m, n) for m in ("am", "zipit") for n in ("none", "reset")]
    columns += [("vgg16_bn", "cca", "reset")]
    columns += [("resnet20", m, n) for m in ("am", "zipit") for n in ("none", "reset")]
    failing = [f"{model} {m}+{n}" for model, m, n in columns
               if not rises(column(r, model, m, n))]
    return Verdict(f"{len(columns) - len(failing)}/{len(columns)} columns",
                   float(len(columns) - len(failing)), float(len(columns) - 0.5), not failing,
                   ("fails: " + ", ".join(failing)) if failing else "")


def rescale_beats_repair(r: Results, matcher: str) -> Verdict:
    rs, rp = column(r, "vgg16", matcher, "rescale")[0], column(r, "vgg16", matcher, "repair")[0]
    return above(rs - rp, 2.0, f"{rs:.2f} vs {rp:.2f}")


def reset_essential(r: Results, model: str) -> Verdict:
    before, after = column(r, model, "am", "none")[0], column(r, model, "am", "reset")[0]
    return above(after - before, 20.0, f"{before:.2f} -> {after:.2f}")


def resnet_rises(r: Results) -> Verdict:
    acc = column(r, "resnet20", "am", "reset")
    best = best_endpoint(r, "resnet20")
    holds = acc[0] < acc[3] < acc[4] and acc[4] >= best - 1.0
    return Verdict(f"{acc[0]:.2f} < {acc[3]:.2f} < {acc[4]:.2f} (better endpoint {best:.2f})",
                   float(acc[4] - best), -1.0, bool(holds))


def cca_chance(r: Results) -> Verdict:
    acc = column(r, "vgg16_bn", "cca", "none")
    return below(acc.max(), 10.0 + 5.0, seq(acc))


def cca_reset(r: Results) -> Verdict:
    acc = column(r, "vgg16_bn", "cca", "reset")
    ensemble = r.mean("endpoints", "ensemble", model="vgg16_bn")
    holds = acc[-1] > acc[0] and acc[-1] >= ensemble - 1.0
    return Verdict(f"{acc[0]:.2f} -> {acc[-1]:.2f} (ensemble {ensemble:.2f})",
                   float(acc[-1] - ensemble), -1.0, bool(holds))


def cca_rescale(r: Results) -> Verdict:
    acc = column(r, "vgg16", "cca", "rescale")
    return above(acc[3] - acc[0], 0.0, f"{acc[0]:.2f} -> {acc[3]:.2f}")


def fig17(r: Results, model: str) -> Verdict:
    df = r.select(f"fig17_{model}", "depth")
    area = df.groupby("l")["value"].mean().sort_index()
    step = float(np.diff(area.to_numpy()).min())
    return above(step, 0.0, seq(area.to_numpy()), "value: smallest step between counts")


def costs_match(r: Results) -> Verdict:
    worst = 0.0
    for name, table in PAPER_COST.items():
        model, _, classes = name.partition("/")
        setting = f"classes={classes or 10}"
        for n, (params, flops) in table.items():
            ours_p = r.mean("cost", "params_ratio", model=model, l=n, setting=setting)
            ours_f = r.mean("cost", "macs_ratio", model=model, l=n, setting=setting)
            worst = max(worst, abs(ours_p - params), abs(ours_f - flops))
    base_ok = all(r.mean("cost", "params", model=m, l=0, setting="classes=10") == count
                  for m, count in PAPER_BASE.items())
    c8 = (r.mean("cost", "params", model="vgg16", l=8, setting="classes=10"),
          r.mean("cost", "macs", model="vgg16", l=8, setting="classes=10"))
    return Verdict(f"largest ratio gap {worst:.3f}; VGG16 PFM 8: {c8[0] / 1e6:.2f}M params, "
                   f"{c8[1] / 1e9:.2f}G MACs", worst, 0.01, bool(worst <= 0.01 and base_ok))


def c100_bn(r: Results) -> Verdict:
    acc = column(r, "vgg16_bn", "am", "reset", dataset="cifar100", counts=PRESERVED_C100_BN)
    best = best_endpoint(r, "vgg16_bn", "cifar100")
    return above(acc[3] - best, 0.0, f"{acc[3]:.2f} vs {best:.2f}")


def c100_vgg(r: Results) -> Verdict:
    full = max(column(r, "vgg16", "am", n, dataset="cifar100")[0]
               for n in ("none", "repair", "rescale", "bias_cal"))
    pfm8 = column(r, "vgg16", "am", "rescale", dataset="cifar100")[3]
    return above(pfm8 - full, 10.0, f"best full merge {full:.2f}; RESCALE at PFM 8 {pfm8:.2f}")


CLAIMS = [
    Claim("05.headline", "Table 1 (claim 9)", "VGG16, AM + RESCALE at PFM 8/14 reaches the better "
          "endpoint (within 1 point, or above)", "92.43 vs endpoints 91.88 / 91.67",
          lambda r: reaches_endpoint(r, "vgg16", "am", "rescale", 8)),
    Claim("05.costs", "Tables 1, 4, 7, 9, 12-14", "PFM parameter and FLOP ratios of VGG16, "
          "VGG16-BN and ResNet20 match the paper within 0.01 and the base parameter counts "
          "exactly (VGG16 PFM 8: 17.64M, 1.2x; 0.52 G, 1.67x)", "e.g. ResNet20 PFM 13: 1.24x, "
          "1.68x", costs_match, tolerance=0.001),
    Claim("05.monotone", "Table 1 (claim 10)", "VGG16, AM W/o Norm rises with l (PFM 0/3/6/8/12; "
          "no step down by more than 2 points)", "46.50 -> 62.40 -> 85.81 -> 91.15 -> 92.88",
          lambda r: Verdict(seq(column(r, "vgg16", "am", "none")),
                            float(column(r, "vgg16", "am", "none")[-1]
                                  - column(r, "vgg16", "am", "none")[0]), 0.0,
                            rises(column(r, "vgg16", "am", "none")))),
    Claim("05.all_rise", "Tables 1, 3, 4, 6-8", "Accuracy rises with l for every alignment and "
          "normalisation (VGG16-BN CCA W/o Norm excluded: chance everywhere in the paper)",
          "all columns", all_rise, tolerance=1.0),
    Claim("05.rescale_repair_am", "Table 1 (claim 7)", "VGG16, AM at PFM 0: RESCALE beats REPAIR "
          "by more than 2 points", "84.68 > 39.09", lambda r: rescale_beats_repair(r, "am")),
    Claim("05.rescale_repair_zipit", "Table 6 (claim 7)", "VGG16, ZipIt! at PFM 0: RESCALE beats "
          "REPAIR by more than 2 points", "84.7 > 67.93",
          lambda r: rescale_beats_repair(r, "zipit")),
    Claim("05.rescale_repair_cca", "Table 3 (claim 16)", "VGG16, CCA at PFM 0: RESCALE beats "
          "REPAIR by more than 2 points", "83.14 > 57.73",
          lambda r: rescale_beats_repair(r, "cca")),
    Claim("05.cca_rescale", "Table 3 (claim 16)", "VGG16, CCA + RESCALE improves from PFM 0 to "
          "PFM 8", "83.14 -> 91.77", cca_rescale),
    Claim("05.bn_headline", "Table 8 (claim 11)", "VGG16-BN, AM + RESET at PFM 8/14 reaches the "
          "better endpoint (within 1 point, or above)", "94.16 vs 93.48 / 93.41",
          lambda r: reaches_endpoint(r, "vgg16_bn", "am", "reset", 8)),
    Claim("05.resnet", "Table 7 (claim 12)", "ResNet20, AM + RESET rises PFM 0 < 13 < 19 and PFM "
          "19/20 reaches the better endpoint (within 1 point)", "64.12 < 76.76 < 93.10 "
          "(endpoints 91.85 / 91.79)", resnet_rises),
    Claim("05.reset_bn", "Table 8", "VGG16-BN, AM at PFM 0: RESET adds at least 20 points",
          "18.71 -> 89.88", lambda r: reset_essential(r, "vgg16_bn")),
    Claim("05.reset_resnet", "Table 7", "ResNet20, AM at PFM 0: RESET adds at least 20 points",
          "11.65 -> 64.12", lambda r: reset_essential(r, "resnet20")),
    Claim("05.cca_chance", "Table 4 (claim 15)", "VGG16-BN, CCA W/o Norm collapses to chance "
          "(at most chance + 5 points) at every l", "10.00 at PFM 0-12", cca_chance),
    Claim("05.cca_reset", "Table 4 (claim 15)", "VGG16-BN, CCA + RESET rises from PFM 0 to "
          "PFM 12 and PFM 12 is within 1 point of the ensemble", "91.17 -> 94.42 (ensemble "
          "94.37)", cca_reset),
    Claim("05.c100_bn", "Table 9 (claim 13)", "CIFAR-100 VGG16-BN, AM + RESET at PFM 10/14 beats "
          "both endpoints", "73.56 vs 72.76 / 72.79", c100_bn, needs="cifar100"),
    Claim("05.c100_vgg", "Table 10 (claim 14)", "CIFAR-100 VGG16: RESCALE at PFM 8 gains at least "
          "10 points on the best full merge", "33.76 best full merge; 52.46 at PFM 8", c100_vgg,
          needs="cifar100"),
    *[Claim(f"05.fig17_{m}", "Fig. 17", f"{label}: the mean bound over depth increases with "
            "every extra preserved count (AM, no normalisation)", "more preserved layers, less "
            "VF", lambda r, m=m: fig17(r, m), tolerance=0.1)
      for m, label in (("vgg16", "VGG16"), ("vgg16_bn", "VGG16-BN"), ("resnet20", "ResNet20"))],
]


