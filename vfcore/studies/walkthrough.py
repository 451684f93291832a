"""The walkthrough's headline numbers (notebook 00), per pair of small MLPs."""

from __future__ import annotations

import pandas as pd

from .. import vf
from ..evaluation import predict
from .merging import Merge, build
from .setup import Setup, frame

VERSION = 1
MODEL = "mlp"
WIDTH = 0.25
"""The walkthrough's MLPs: a quarter of the paper's 512 hidden units."""


def walkthrough(setup: Setup, width: float = WIDTH) -> pd.DataFrame:
    """For each pair of MLPs at `width`: the endpoints' mean accuracy, the direct midpoint's,
    its logits' spread relative to model A's, the last layer's tight bound of the normalised
    feature scale, and the midpoint after WM, after RESCALE and with PFM (L-1)/L."""
    dataset = setup.profile.linear_dataset
    records = []
    for pair in range(setup.pairs):
        def compute(pair: int = pair) -> dict:
            a, b = setup.endpoints(MODEL, pair, dataset, width=width)
            merged = build(setup, MODEL, pair, Merge(), dataset=dataset, width=width)
            test = setup.data(dataset, False)
            spread = [predict(m, test, limit=setup.protocol.test_images,
                              device=setup.device).std(dim=0).mean().item() for m in (a, merged)]
            batches = setup.calibration(a, dataset, pair)
            scale = vf.normalized_scale(merged, [a, b], batches, vf.vf_layers(merged))
            acc = {label: setup.accuracy(build(setup, MODEL, pair, merge, dataset=dataset,
                                               width=width), dataset)
                   for label, merge in (("wm", Merge("wm")), ("rescale", Merge(norm="rescale")),
                                        ("pfm_last", Merge(preserved=len(a.weight_layers) - 1)))}
            return {"edges": (setup.accuracy(a, dataset) + setup.accuracy(b, dataset)) / 2,
                    "direct": setup.accuracy(merged, dataset), "spread": spread[1] / spread[0],
                    "bound_last": float(vf.tight_bound(scale)[-1]), **acc}

        records += setup.cell("walkthrough", {"model": MODEL, "pair": pair,
                                              "setting": f"width={width}"}, compute,
                              endpoints=setup.pair_jobs(MODEL, pair, dataset, width=width),
                              version=VERSION)
    return frame(records)
