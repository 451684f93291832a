"""Why weight matching fails on the briefly trained norm-free VGG16s: their weights are still
mostly their random initialisation.

    python benchmarks/wm_init_share.py                        # fmnist_quarter, pairs 1-2 and 2-3
    python benchmarks/wm_init_share.py --profile smoke

For each endpoint it prints the cosine between every conv layer's trained weights and the same
layer at initialisation (rebuilt from the endpoint's seed). For each pair it prints the weight
matching objective sum <W_a, P(W_b)> reached by weight matching (three seeds) and by the
activation-matching permutations, how many units the two methods pair alike per group, and the
midpoint accuracy of each. Endpoints come from the cache (trained if missing).
"""

from __future__ import annotations

import argparse

import torch

from vfcore import align, merge_models, spec_for
from vfcore.studies import Setup
from vfcore.weight_matching import match_weights, matching_objective


def init_share(setup: Setup, seed: int) -> str:
    job = setup.job("vgg16", seed)
    trained, init = setup.load(job).state_dict(), job.build().state_dict()
    cosines = [torch.nn.functional.cosine_similarity(w.flatten(), init[k].flatten(), dim=0)
               for k, w in trained.items() if k.endswith("weight") and w.dim() == 4]
    return " ".join(f"{float(c):.2f}" for c in cosines)


def compare(setup: Setup, pair: int) -> None:
    a, b = setup.endpoints("vgg16", pair)
    spec, sa, sb = spec_for(a), a.state_dict(), b.state_dict()
    dataset = setup.profile.dataset_for("vgg16")
    calibration = setup.calibration(a, dataset, pair)
    alignments = {method: align(a, b, method, calibration) for method in ("wm", "am")}
    wm, am = alignments["wm"].maps[1], alignments["am"].maps[1]
    objective = [matching_objective(spec, sa, sb, wm)]
    objective += [matching_objective(spec, sa, sb, match_weights(spec, sa, sb, seed=k).perms)
                  for k in (1, 2)]
    print(f"pair {setup.profile.seeds(pair)}: WM objective, identity "
          f"{matching_objective(spec, sa, sb, {}):.1f}; WM (3 seeds) "
          + " / ".join(f"{o:.1f}" for o in objective)
          + f"; AM's permutations {matching_objective(spec, sa, sb, am):.1f}")
    agree = [float((wm[g] == am[g]).float().mean()) for g in spec.groups]
    print("  units WM and AM pair alike, per group: " + " ".join(f"{x:.2f}" for x in agree))
    for method, alignment in alignments.items():
        accuracy = {norm: setup.accuracy(merge_models(a, b, alignment, norm=norm,
                                                      calibration=calibration), dataset)
                    for norm in ("none", "repair", "rescale")}
        print(f"  {method.upper()} midpoint: " + ", ".join(f"{n} {v:.1f}%"
                                                         for n, v in accuracy.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fmnist_quarter")
    setup = Setup(parser.parse_args().profile, "cpu")
    for seed in range(1, setup.profile.models + 1):
        print(f"vgg16 seed {seed}: cos(trained, init) per conv layer: {init_share(setup, seed)}")
    for pair in range(min(2, setup.profile.pairs)):
        compare(setup, pair)


if __name__ == "__main__":
    main()
