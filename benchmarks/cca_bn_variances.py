"""Why CCA "W/o Norm" on VGG16-BN is at chance at some PFM rows and not at others (Table 4).

    python benchmarks/cca_bn_variances.py                    # fmnist_quarter, all pairs
    python benchmarks/cca_bn_variances.py --profile smoke

CCA maps model b's units densely, and the merge carries each BatchNorm's running variance through
that map linearly (vfcore.transform), as it carries every per-channel tensor. A linear mix of
variances can be negative; a BatchNorm with a negative running variance outputs NaN, which the
accuracy counts as class 0. For each pair and PFM row this prints the merged model's test
accuracy, whether its logits hold NaN, and the merged BatchNorms (numbered by the conv they
follow; PFM l merges those from l on) that have a negative running variance.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from vfcore.studies import Setup
from vfcore.studies.merging import Merge, build
from vfcore.studies.pfm import PRESERVED

MODEL = "vgg16_bn"


def negative_variances(model: nn.Module, first: int) -> list[int]:
    """1-based numbers of the merged network's BatchNorms, from the `first`-th, whose running
    variance has a negative entry."""
    norms = [m for m in getattr(model, "merged", model).modules() if isinstance(m, nn.BatchNorm2d)]
    return [i for i, m in enumerate(norms, 1) if i >= first and bool((m.running_var < 0).any())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fmnist_quarter")
    args = parser.parse_args()
    setup = Setup(args.profile, "cpu")
    dataset = setup.profile.dataset_for(MODEL)
    for pair in range(setup.profile.pairs):
        print(f"pair {setup.profile.seeds(pair)}:")
        probe = setup.measure_batches(setup.endpoints(MODEL, pair)[0], dataset, pair)[0]
        for preserved in PRESERVED[MODEL]:
            merged = build(setup, MODEL, pair, Merge("cca", preserved=preserved)).eval()
            with torch.no_grad():
                nan = bool(merged(probe).isnan().any())
            accuracy = setup.accuracy(merged, dataset)
            print(f"  PFM {preserved:2d}: {accuracy:5.2f}%, NaN logits {nan}, negative running "
                  f"variance in BatchNorms {negative_variances(merged, max(preserved, 1))}")


if __name__ == "__main__":
    main()
