"""Why weight matching fails on the briefly trained CPU endpoints: their weights are still mostly
their random initialisation, and BatchNorm running statistics can outweigh them in its objective.

    python benchmarks/wm_init_share.py                        # fmnist_quarter, pairs 1-2 and 2-3
    python benchmarks/wm_init_share.py --profile smoke
    python benchmarks/wm_init_share.py --weight-decay 2e-3 --pairs 1
    python benchmarks/wm_init_share.py --model vgg16_bn --pairs 3
    python benchmarks/wm_init_share.py --model vgg16_bn --milestones --pairs 1   # constant lr
    python benchmarks/wm_init_share.py --epochs 16 --pairs 1
    python benchmarks/wm_init_share.py --width 0.5 --pairs 1
    python benchmarks/wm_init_share.py --augment --pairs 1             # the paper's crop + flip
    python benchmarks/wm_init_share.py --lr 0.16 --pairs 1                # a higher peak lr
    python benchmarks/wm_init_share.py --model vgg16_bn --epochs 12 --pairs 3
    python benchmarks/wm_init_share.py --model vgg16_bn --width 0.5 --pairs 3
    python benchmarks/wm_init_share.py --model resnet20 --width 1 --lr 0.1 --pairs 1  # Fig. 6A

For each endpoint it prints the cosine between every conv layer's trained weights and the same
layer at initialisation (rebuilt from the endpoint's seed), its test accuracy, and the share of
the state's squared norm held by BatchNorm running statistics (which the WM objective includes,
as the authors' code does). For each pair it prints the weight matching objective
sum <W_a, P(W_b)> of the identity, of weight matching (three seeds) and of the activation-matching
permutations; the identity's and weight matching's between the pair's untrained initialisations
(what WM finds where there is nothing to find); how many units WM and AM pair alike per group; and
the midpoint accuracy of direct merging, WM, AM, and WM on a restricted objective (the parameters
alone, or the conv and linear weights alone), without normalisation, with REPAIR and with RESCALE
(VGG16-BN and ResNet20: with RESET); for the plain VGG16 also AM + RESCALE at PFM 8/14 (Table 1).
Five levers train the endpoints with another recipe than the profile's: `--weight-decay D`,
`--lr L` (the peak learning rate, as Fig. 6's sweep), `--milestones F ...` (the fractions of the
run at which lr drops 10x; none: constant lr), `--epochs E` (a longer run, its lr steps at the
same fractions) and `--augment` (the paper's random crop and flip, which the CPU profiles leave
out; calibration then draws augmented images too); `--width W` trains them at another width.
Endpoints come from the cache (trained if missing: about 7 minutes each for the quarter-width
VGG16, 4 for VGG16-BN, 7 for a full-width ResNet20, on one thread).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from vfcore import align, merge_models, spec_for
from vfcore.align import Alignment
from vfcore.profiles import get_profile
from vfcore.spec import PermutationSpec
from vfcore.studies import Setup
from vfcore.transform import State, permute
from vfcore.weight_matching import match_weights, matching_objective

NORMS = {"vgg16": ("none", "repair", "rescale"), "vgg16_bn": ("none", "reset"),
         "resnet20": ("none", "reset")}
PFM_HEADLINE = 8
OBJECTIVES = ("parameters", "weights")
"""Objectives compared with WM's whole state (the authors' choice): the parameters alone (no
BatchNorm running statistics; the paper's Theta), or the conv and linear weights alone."""


def init_share(setup: Setup, model_name: str, seed: int, train: dict[str, float]) -> str:
    job = setup.job(model_name, seed, **train)
    model = setup.load(job)
    trained, init = model.state_dict(), job.build().state_dict()
    cosines = [torch.nn.functional.cosine_similarity(w.flatten(), init[k].flatten(), dim=0)
               for k, w in trained.items() if k.endswith("weight") and w.dim() == 4]
    accuracy = setup.accuracy(model, setup.profile.dataset_for(model_name))
    squares = {k: float(v.double().square().sum()) for k, v in trained.items()
               if v.is_floating_point()}
    running = sum(v for k, v in squares.items() if "running" in k) / sum(squares.values())
    return (f"test {accuracy:.1f}%; running statistics {100 * running:.1f}% of the state's "
            "squared norm; " + " ".join(f"{float(c):.2f}" for c in cosines))


def restricted_wm(spec: PermutationSpec, sa: State, sb: State, params: set[str],
                  objective: str) -> Alignment:
    """WM alignment of states `sa`, `sb` whose objective keeps only `objective`'s tensors (the
    rest count as zero); `params` names the model's parameters."""
    keep = {k for k, v in sa.items()
            if (k in params if objective == "parameters" else v.dim() >= 2)}

    def masked(state: State) -> State:
        return {k: v if k in keep or not v.is_floating_point() else torch.zeros_like(v)
                for k, v in state.items()}

    perms = match_weights(spec, masked(sa), masked(sb)).perms
    return Alignment("wm", spec, ({}, perms), (sa, permute(spec, perms, sb)))


def compare(setup: Setup, model_name: str, pair: int, train: dict[str, float]) -> None:
    a, b = setup.endpoints(model_name, pair, **train)
    spec, sa, sb = spec_for(a), a.state_dict(), b.state_dict()
    dataset = setup.profile.dataset_for(model_name)
    calibration = setup.calibration(a, dataset, pair)
    alignments = {m.upper(): align(a, b, m, calibration) for m in ("direct", "wm", "am")}
    params = {name for name, _ in a.named_parameters()}
    alignments |= {f"WM on {o}": restricted_wm(spec, sa, sb, params, o) for o in OBJECTIVES}
    wm, am = alignments["WM"].maps[1], alignments["AM"].maps[1]
    objective = [matching_objective(spec, sa, sb, wm)]
    objective += [matching_objective(spec, sa, sb, match_weights(spec, sa, sb, seed=k).perms)
                  for k in (1, 2)]
    print(f"pair {setup.profile.seeds(pair)}: WM objective, identity "
          f"{matching_objective(spec, sa, sb, {}):.1f}; WM (3 seeds) "
          + " / ".join(f"{o:.1f}" for o in objective)
          + f"; AM's permutations {matching_objective(spec, sa, sb, am):.1f}")
    ia, ib = (job.build().state_dict() for job in setup.pair_jobs(model_name, pair, **train))
    print(f"  the same between the two initialisations: identity "
          f"{matching_objective(spec, ia, ib, {}):.1f}; WM "
          f"{matching_objective(spec, ia, ib, match_weights(spec, ia, ib).perms):.1f}")
    agree = [float((wm[g] == am[g]).float().mean()) for g in spec.groups]
    print("  units WM and AM pair alike, per group: " + " ".join(f"{x:.2f}" for x in agree))
    for label, alignment in alignments.items():
        accuracy = {norm: setup.accuracy(merge_models(a, b, alignment, norm=norm,
                                                      calibration=calibration), dataset)
                    for norm in NORMS[model_name]}
        print(f"  {label} midpoint: " + ", ".join(f"{n} {v:.1f}%" for n, v in accuracy.items()))
    if model_name == "vgg16":
        pfm = merge_models(a, b, alignments["AM"], n_preserved=PFM_HEADLINE, norm="rescale",
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
    parser.add_argument("--lr", type=float, help="train the endpoints at this peak lr")
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
    train = {name: value for name, value in (("weight_decay", args.weight_decay), ("lr", args.lr),
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
