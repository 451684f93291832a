"""The vanishing feature in merged networks (Sec. 5.1-5.2): Figs 2A-C, 11 and 12."""

from __future__ import annotations

import pandas as pd
import torch

from ..evaluation import predict
from ..normalize import reset_bn
from .merging import Measure, Merge, build, endpoint_cells, merge_cells
from .setup import Setup, frame

VERSION = 1
FIG2B_MODELS = ("vgg16", "vgg16_bn", "resnet20", "resnet20_ln")
FIG12_REMOVED = 5
"""Bias Removal of Fig. 12: the last 5 layers, the paper's near-optimal count (Fig. 13)."""


def _logits_cell(setup: Setup, model: str, pair: int) -> list[dict]:
    """Fig. 2A: per-class mean and std over test images of the direct midpoint's logits and the
    endpoints', f_0.5(0), and two summaries: the merged logits' spread across images relative to
    the endpoints', and E||f(x) - f(0)|| / E||f(x)||."""
    dataset = setup.profile.dataset_for(model)

    def compute() -> dict:
        a, b = setup.endpoints(model, pair)
        merged = build(setup, model, pair, Merge())
        test = setup.data(dataset, False)
        za, zb, zm = (predict(m, test, limit=setup.protocol.test_images, device=setup.device)
                      for m in (a, b, merged))
        zero = torch.zeros_like(setup.measure_batches(a, dataset, pair)[0][:1])
        with torch.no_grad():
            f0 = merged.eval()(zero).float().cpu()[0]
        edge_std = (za.std(0) + zb.std(0)) / 2
        return {"merged_mean": zm.mean(0).tolist(), "merged_std": zm.std(0).tolist(),
                "edge_mean": ((za.mean(0) + zb.mean(0)) / 2).tolist(),
                "edge_std": edge_std.tolist(), "f0": f0.tolist(),
                "std_ratio": float(zm.std(0).mean() / edge_std.mean()),
                "dist_to_f0": float((zm - f0).norm(dim=1).mean() / zm.norm(dim=1).mean())}

    return setup.cell("fig02a", {"model": model, "pair": pair, "matcher": "direct",
                                 "alpha": 0.5}, compute,
                      endpoints=setup.pair_jobs(model, pair), version=VERSION)


def bn_after(model: torch.nn.Module, layer_index: int) -> str:
    """The BatchNorm right after the `layer_index`-th weight layer (0-based)."""
    names = [n for n, _ in model.named_modules()]
    return names[names.index(model.weight_layers[layer_index]) + 1]


def _reset_cell(setup: Setup, pair: int, model: str = "vgg16_bn") -> list[dict]:
    """Fig. 2C: running mean and std of the BN after the 5th conv of the WM-merged VGG16-BN,
    before and after RESET, with the accuracy before and after."""
    dataset = setup.profile.dataset_for(model)

    def compute() -> dict:
        a, _ = setup.endpoints(model, pair)
        before = build(setup, model, pair, Merge("wm"))
        after = reset_bn(before, setup.calibration(a, dataset, pair))
        name = bn_after(a, 4)
        stats = {}
        for label, m in (("before", before), ("after", after)):
            bn = m.get_submodule(name)
            stats[f"mean_{label}"] = bn.running_mean.double().cpu()
            stats[f"std_{label}"] = bn.running_var.double().sqrt().cpu()
        return {**{k: v.tolist() for k, v in stats.items()},
                "accuracy_before": setup.accuracy(before, dataset),
                "accuracy_after": setup.accuracy(after, dataset),
                "std_ratio": float((stats["std_after"] / stats["std_before"]).median()),
                "mean_change": float((stats["mean_after"] - stats["mean_before"]).norm()
                                     / stats["mean_before"].norm()),
                "std_change": float((stats["std_after"] - stats["std_before"]).norm()
                                    / stats["std_before"].norm())}

    return setup.cell("fig02c", {"model": model, "pair": pair, "matcher": "wm", "alpha": 0.5},
                      compute, endpoints=setup.pair_jobs(model, pair), version=VERSION)


def vanishing_feature(setup: Setup) -> pd.DataFrame:
    """Fig. 2A (the direct ResNet20 midpoint outputs f_0.5(0) whatever the input), Fig. 2B (the
    normalised feature bound of direct merges decays with depth, least with LayerNorm), Fig. 2C
    (what RESET does to BN statistics), Fig. 11 (alignment and REPAIR/RESCALE against the decay
    in VGG16) and Fig. 12 (feature and offset norms of WM-merged VGG16 with Bias Cal. and Bias
    Removal). Depth curves include the norm layer after each weight layer, as the paper's do."""
    curves = Measure(("accuracy", "vf"), norms=True)
    records = []
    for model in FIG2B_MODELS:
        records += endpoint_cells(setup, model)
        records += merge_cells(setup, model, [Merge()], curves, study="fig02b")
    for pair in range(setup.pairs):
        records += _logits_cell(setup, "resnet20", pair)
        records += _reset_cell(setup, pair)
    fig11 = [Merge(), Merge("wm"), Merge("am"), Merge("wm", norm="repair"),
             Merge("wm", norm="rescale")]
    records += merge_cells(setup, "vgg16", fig11, curves, study="fig11")
    fig12 = [Merge("wm", alpha=0.0), Merge("wm", alpha=1.0), Merge("wm"),
             Merge("wm", bias="calibrate"), Merge("wm", bias="remove", k=FIG12_REMOVED)]
    records += merge_cells(setup, "vgg16", fig12, Measure(("accuracy", "offset")),
                           study="fig12")
    return frame(records)
