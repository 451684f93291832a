"""Why weight matching fails on the briefly trained VGG16s: their weights are still mostly their
random initialisation.

    python benchmarks/wm_init_share.py                        # fmnist_quarter, pairs 1-2 and 2-3
    python benchmarks/wm_init_share.py --profile smoke
    python benchmarks/wm_init_share.py --weight-decay 2e-3 --pairs 1
    python benchmarks/wm_init_share.py --model vgg16_bn --pairs 3
    python benchmarks/wm_init_share.py --model vgg16_bn --milestones --pairs 1   # constant lr
    python benchmarks/wm_init_share.py --epochs 16 --pairs 1
    python benchmarks/wm_init_share.py --width 0.5 --pairs 1
    python benchmarks/wm_init_share.py --augment --pairs 1             # the paper's crop + flip
    python benchmarks/wm_init_share.py --model vgg16_bn --epochs 12 --pairs 3
    python benchmarks/wm_init_share.py --model vgg16_bn --width 0.5 --pairs 3

For each endpoint it prints the cosine between every conv layer's trained weights and the same
layer at initialisation (rebuilt from the endpoint's seed), and its test accuracy. For each pair
it prints the weight matching objective sum <W_a, P(W_b)> reached by weight matching (three
seeds) and by the activation-matching permutations, how many units the two methods pair alike per
group, the midpoint accuracy of direct merging, WM and AM without normalisation, with REPAIR and
with RESCALE (VGG16-BN: with RESET), and for the plain VGG16 AM + RESCALE at PFM 8/14 (Table 1).
Four levers that might move weights away from their initialisation train the endpoints with
another recipe than the profile's: `--weight-decay D`, `--milestones F ...` (the fractions of the
run at which lr drops 10x; none: constant lr), `--epochs E` (a longer run, its lr steps at the
same fractions) and `--augment` (the paper's random crop and flip, which the CPU profiles leave
out; calibration then draws augmented images too); `--width W` trains them at another width.
Endpoints come from the cache (trained if missing: about 7 minutes each for the quarter-width
VGG16, 4 for VGG16-BN, on one thread).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from vfcore import align, merge_models, spec_for
from vfcore.profiles import get_profile
from vfcore.studies import Setup
from vfcore.weight_matching import match_weights, matching_objective

NORMS = {"vgg16": ("none", "repair", "rescale"), "vgg16_bn": ("none", "reset")}
PFM_HEADLINE = 8


def init_share(setup: Setup, model_name: str, seed: int, train: dict[str, float]) -> str:
    job = setup.job(model_name, seed, **train)
    model = setup.load(job)
    trained, init = model.state_dict(), job.build().state_dict()
    cosines = [torch.nn.functional.cosine_similarity(w.flatten(), init[k].flatten(), dim=0)
               for k, w in trained.items() if k.endswith("weight") and w.dim() == 4]
    accuracy = setup.accuracy(model, setup.profile.dataset_for(model_name))
    return f"test {accuracy:.1f}%; " + " ".join(f"{float(c):.2f}" for c in cosines)


def compare(setup: Setup, model_name: str, pair: int, train: dict[str, float]) -> None:
    a, b = setup.endpoints(model_name, pair, **train)
    spec, sa, sb = spec_for(a), a.state_dict(), b.state_dict()
    dataset = setup.profile.dataset_for(model_name)
    calibration = setup.calibration(a, dataset, pair)
    alignments = {method: align(a, b, method, calibration) for method in ("direct", "wm", "am")}
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
                    for norm in NORMS[model_name]}
        print(f"  {method.upper()} midpoint: " + ", ".join(f"{n} {v:.1f}%"
                                                         for n, v in accuracy.items()))
    if model_name == "vgg16":
        pfm = merge_models(a, b, alignments["am"], n_preserved=PFM_HEADLINE, norm="rescale",
                           calibration=calibration)
        print(f"  AM + RESCALE at PFM {PFM_HEADLINE}/14 (Table 1's headline): "
              f"{setup.accuracy(pfm, dataset):.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fmnist_quarter")
    parser.add_argument("--model", choices=sorted(NORMS), default="vgg16")
    parser.add_argument("--weight-decay", type=float, help="train the endpoints with this decay")
    parser.add_argument("--milestones", type=float, nargs="*",
                        help="train with lr steps at these fractions of the run (none: constant)")
    parser.add_argument("--epochs", type=float, help="train the endpoints this many epochs")
    parser.add_argument("--width", type=float, help="train the endpoints at this width")
    parser.add_argument("--augment", action="store_true",
                        help="train and calibrate with random crop and flip")
    parser.add_argument("--pairs", type=int, default=2, help="how many pairs to compare")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    if args.augment:
        profile = replace(profile, augment=True)
    if args.milestones is not None:
        overrides = dict(profile.recipe_overrides)
        overrides[args.model] = {**overrides.get(args.model, {}),
                                 "milestones": tuple(args.milestones)}
        profile = replace(profile, recipe_overrides=overrides)
    setup = Setup(profile, "cpu")
    train = {name: value for name, value in (("weight_decay", args.weight_decay),
                                              ("epochs", args.epochs), ("width", args.width))
             if value is not None}
    pairs = min(args.pairs, setup.profile.pairs)
    seeds = sorted({s for pair in range(pairs) for s in setup.profile.seeds(pair)})
    for seed in seeds:
        print(f"{args.model} seed {seed}: {init_share(setup, args.model, seed, train)} "
              "(cos(trained, init) per conv layer)")
    for pair in range(pairs):
        compare(setup, args.model, pair, train)


if __name__ == "__main__":
    main()
