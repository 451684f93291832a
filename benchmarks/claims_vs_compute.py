"""At which width and training length do the claims that fail at the smoke profile start to hold?

    python benchmarks/claims_vs_compute.py                    # every rung, 2 training workers
    python benchmarks/claims_vs_compute.py --rungs 0 1        # a selection

Each rung is the smoke profile with the VGG16s (plain and BN) at another width and length, three
models per configuration (pairs 1-2, 2-3, 1-3). For each rung it trains (cached) and measures, with
the studies' own cells, the claims the smoke profile cannot show:

- Fig. 3 / claim 7: after WM at alpha 0.5, RESCALE beats REPAIR by more than 5 points (VGG16);
- Table 1 / claim 9: AM + RESCALE at PFM 8/14 reaches the better endpoint within 1 point;
- Fig. 4 Left: aligning all layers (AM) gains at least 5 points over aligning none, and 80% of
  the gain is reached by two thirds of the depth;
- Fig. 8: RESCALE is steadier than REPAIR across weight decay (AM, midpoint, wd 1e-4 and 5e-4);
- claim 5: WM + RESET brings VGG16-BN within 10 points of its endpoints.

It writes `benchmarks/claims_vs_compute.csv` and `.png` (each claim's value against the
training compute of one VGG16 endpoint: 3 x 2 x forward MACs x training images, a measure that
does not depend on the machine or its load) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vfcore.claims import Results
from vfcore.jobs import train_all
from vfcore.pfm import pfm_cost
from vfcore.profiles import SMOKE
from vfcore.studies import Setup, endpoint_cells, frame, merge_cells
from vfcore.studies.merging import Merge

RUNGS = [(1 / 8, 2.0, 1.0), (1 / 8, 4.0, 2.0), (1 / 4, 2.0, 1.0)]
"""(VGG width, VGG16 epochs, VGG16-BN epochs); the first is the smoke profile's. Each rung costs
about twice the one before it in training compute (a 1/4-width rung at 4 epochs would take ~1 h of
training on a 2-core CPU)."""
OUT = Path(__file__).resolve().parent / "claims_vs_compute"
WDS = (1e-4, 5e-4)


def rung_setup(width: float, epochs: float, bn_epochs: float) -> Setup:
    widths = {**SMOKE.widths, "vgg16": width, "vgg16_bn": width}
    profile = dataclasses.replace(SMOKE, name=f"rung_w{width:g}_e{epochs:g}", pairs=3,
                                  widths=widths, epochs={**SMOKE.epochs, "vgg16": epochs,
                                                         "vgg16_bn": bn_epochs})
    return Setup(profile, "cpu")


def measure(setup: Setup) -> dict[str, float]:
    """The value of each claim's criterion at this rung (positive: the claim holds)."""
    rows = endpoint_cells(setup, "vgg16") + endpoint_cells(setup, "vgg16_bn")
    rows += merge_cells(setup, "vgg16", [Merge("wm", norm=n) for n in ("repair", "rescale")]
                        + [Merge("am", preserved=8, norm="rescale")]
                        + [Merge("am", permuted=n) for n in (0, 10, 14)], study="vgg16")
    rows += merge_cells(setup, "vgg16_bn", [Merge("wm", norm="reset")], study="vgg16_bn")
    for wd in WDS:
        rows += merge_cells(setup, "vgg16", [Merge("am", norm=n) for n in ("repair", "rescale")],
                            study="fig08", weight_decay=wd)
    r = Results(frame(rows))
    best = max(r.mean("endpoints", "model_a", model="vgg16"),
               r.mean("endpoints", "model_b", model="vgg16"))
    permuted = {n: r.mean("vgg16", norm="none", permuted=str(n)) for n in (0, 10, 14)}
    gain = permuted[14] - permuted[0]
    spread = {n: np.ptp([r.mean("fig08", norm=n, train_weight_decay=wd) for wd in WDS])
              for n in ("repair", "rescale")}
    bn_edge = (r.mean("endpoints", "model_a", model="vgg16_bn")
               + r.mean("endpoints", "model_b", model="vgg16_bn")) / 2
    return {
        "fig3_rescale_minus_repair": r.mean("vgg16", norm="rescale", matcher="wm")
        - r.mean("vgg16", norm="repair", matcher="wm") - 5.0,
        "table1_pfm8_minus_best": r.mean("vgg16", norm="rescale", l=8) - best + 1.0,
        "fig4_gain": gain - 5.0,
        "fig4_share_by_two_thirds": (permuted[10] - permuted[0]) / gain - 0.8 if gain > 0
        else -1.0,
        "fig8_repair_minus_rescale_range": spread["repair"] - spread["rescale"],
        "claim5_wm_reset_minus_endpoints": r.mean("vgg16_bn", norm="reset") - bn_edge + 10.0,
        "vgg16_endpoint_accuracy": (best + min(r.mean("endpoints", "model_a", model="vgg16"),
                                               r.mean("endpoints", "model_b", model="vgg16"))) / 2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rungs", nargs="*", type=int, default=list(range(len(RUNGS))))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    records = []
    for i in args.rungs:
        width, epochs, bn_epochs = RUNGS[i]
        setup = rung_setup(width, epochs, bn_epochs)
        jobs = [setup.job(m, s) for m in ("vgg16", "vgg16_bn") for s in (1, 2, 3)]
        jobs += [setup.job("vgg16", s, weight_decay=wd) for wd in WDS for s in (1, 2, 3)]
        seconds = train_all(jobs, workers=args.workers)
        start = time.perf_counter()
        values = measure(setup)
        one = setup.load(jobs[0])
        cost = train_seconds(setup, jobs[0])
        images = epochs * len(setup.data(setup.profile.dataset_for("vgg16"), True))
        pflop = 6 * pfm_cost(one, 0).base_macs * images / 1e15
        records += [{"width": width, "epochs": epochs, "bn_epochs": bn_epochs,
                     "endpoint_pflop": pflop, "endpoint_seconds": cost, "claim": k, "value": v}
                    for k, v in values.items()]
        print(f"rung {i} (width {width:g}, {epochs:g} epochs): trained in {seconds:.0f} s, "
              f"measured in {time.perf_counter() - start:.0f} s; one VGG16 endpoint "
              f"{pflop:.3f} PFLOP, {cost:.0f} s recorded on one thread; "
              f"params {sum(p.numel() for p in one.parameters())}", flush=True)
    table = pd.DataFrame(records)
    csv = OUT.with_suffix(".csv")
    if csv.exists():  # a selection of rungs keeps the others' rows
        kept = pd.read_csv(csv)
        rung = ["width", "epochs", "bn_epochs"]
        rerun = kept[rung].round(3).apply(tuple, axis=1).isin(
            set(table[rung].round(3).apply(tuple, axis=1)))
        table = pd.concat([kept[~rerun], table]).sort_values("endpoint_pflop", kind="stable")
    table.to_csv(csv, index=False, float_format="%.3f")
    print(table.pivot_table(index="claim", columns=["width", "epochs"], values="value")
          .round(2).to_string())
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for claim, part in table[table["claim"] != "vgg16_endpoint_accuracy"].groupby("claim"):
        ax.plot(part["endpoint_pflop"], part["value"], "o-", label=claim)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="training compute of one VGG16 endpoint (PFLOP)",
           ylabel="criterion value (> 0: the claim holds)")
    ax.legend(fontsize=7)
    fig.savefig(OUT.with_suffix(".png"), dpi=130, bbox_inches="tight")
    return 0


def train_seconds(setup: Setup, job) -> float:
    """The recorded training time of a cached endpoint."""
    sidecar = json.loads((setup.cache_dir / f"{job.key}.json").read_text())
    return float(sidecar["meta"]["train_seconds"])


if __name__ == "__main__":
    sys.exit(main())
