"""Claims of notebook 02: the vanishing feature in merged networks (Figs 2A-C, 11, 12; claims 4
and 5)."""

from __future__ import annotations

import numpy as np

from .core import Claim, Results, Verdict, above, below, pm

NON_LN = ("vgg16", "vgg16_bn", "resnet20")
LABELS = {"vgg16": "VGG16", "vgg16_bn": "VGG16-BN", "resnet20": "ResNet20",
          "resnet20_ln": "ResNet20-LN"}


def final_bound(r: Results, model: str) -> np.ndarray:
    """The bound at 100% depth of the direct merge, per pair."""
    return r.curve("fig02b", "bound", model=model)[:, -1]


def mean_bound(r: Results, study: str, **coords) -> float:
    """The bound's mean over the 20 depth points, averaged over pairs."""
    return float(r.curve(study, "depth", **coords).mean())


def decays(r: Results) -> Verdict:
    worst = max(final_bound(r, m).mean() for m in NON_LN)
    return below(worst, 0.5, ", ".join(f"{LABELS[m]} {pm(final_bound(r, m))}" for m in NON_LN),
                 "bound at 100% depth")


def ln_least(r: Results) -> Verdict:
    ln = final_bound(r, "resnet20_ln").mean()
    best_other = max(final_bound(r, m).mean() for m in NON_LN)
    return above(ln - best_other, 0.05, f"ResNet20-LN {ln:.2f} vs at most {best_other:.2f}")


def reset_shrinks_std(r: Results) -> Verdict:
    ratio = r.values("fig02c", "std_ratio")
    return below(ratio.mean(), 0.7, f"median per-channel ratio {pm(ratio)}")


def reset_keeps_mean(r: Results) -> Verdict:
    mean, std = r.values("fig02c", "mean_change"), r.values("fig02c", "std_change")
    return Verdict(f"mean {pm(mean)} vs std {pm(std)}", float(mean.mean()), 0.25,
                   bool(mean.mean() < 0.25 and mean.mean() < std.mean()))


def reset_recovers(r: Results) -> Verdict:
    before, after = r.values("fig02c", "accuracy_before"), r.values("fig02c", "accuracy_after")
    edge = (r.values("endpoints", "model_a", model="vgg16_bn").mean()
            + r.values("endpoints", "model_b", model="vgg16_bn").mean()) / 2
    ours = f"{pm(before)}% -> {pm(after)}% (endpoints {edge:.1f}%)"
    return Verdict(ours, float(after.mean() - edge), -10.0,
                   bool(before.mean() < edge - 30 and after.mean() >= edge - 10))


def logits_constant(r: Results) -> Verdict:
    ratio = r.values("fig02a", "std_ratio")
    return below(ratio.mean(), 0.3, f"std ratio {pm(ratio, 3)}")


def logits_at_offset(r: Results) -> Verdict:
    dist = r.values("fig02a", "dist_to_f0")
    return below(dist.mean(), 0.3, f"relative distance {pm(dist, 3)}")


def alignment_reduces_vf(r: Results) -> Verdict:
    direct = mean_bound(r, "fig11", matcher="direct", norm="none")
    wm = mean_bound(r, "fig11", matcher="wm", norm="none")
    am = mean_bound(r, "fig11", matcher="am", norm="none")
    return above(min(wm, am) - direct, 0.0,
                 f"mean bound over depth: direct {direct:.3f}, WM {wm:.3f}, AM {am:.3f}")


def repair_raises(r: Results) -> Verdict:
    wm = mean_bound(r, "fig11", matcher="wm", norm="none")
    repair = mean_bound(r, "fig11", matcher="wm", norm="repair")
    rescale = mean_bound(r, "fig11", matcher="wm", norm="rescale")
    return above(min(repair, rescale) - wm, 0.1,
                 f"WM {wm:.2f}, REPAIR {repair:.2f}, RESCALE {rescale:.2f}")


def offset_ratio(r: Results, setting: str | None) -> np.ndarray:
    h = r.curve("fig12", "h", matcher="wm", alpha=0.5, setting=setting)[:, -1]
    g = r.curve("fig12", "g", matcher="wm", alpha=0.5, setting=setting)[:, -1]
    return h / g


def bias_fixes_offset(r: Results) -> Verdict:
    plain = offset_ratio(r, None)
    cal, rem = offset_ratio(r, "bias=calibrate"), offset_ratio(r, "bias=remove:5")
    worst = max(cal.mean(), rem.mean()) / plain.mean()
    return below(worst, 0.5, f"||f(0)|| / E||f(x)-f(0)|| at the output: WM {pm(plain)}, "
                             f"Bias Cal. {pm(cal)}, Bias Removal {pm(rem)}",
                 "value: the larger of the two fixed ratios over WM's")


CLAIMS = [
    Claim("02.logits_constant", "Fig. 2A (claim 4)", "The direct ResNet20 midpoint has "
          "near-constant logits (spread across images < 0.3x the endpoints')", "near-constant",
          logits_constant, tolerance=0.1),
    Claim("02.logits_offset", "Fig. 2A (claim 4)", "... and they sit near f_0.5(0) "
          "(E‖f(x) - f(0)‖ < 0.3 E‖f(x)‖)", "≈ f_0.5(0)", logits_at_offset, tolerance=0.1),
    Claim("02.decays", "Fig. 2B (claim 4)", "The direct-merge bound decays with depth to below "
          "0.5 at 100% for VGG16, VGG16-BN and ResNet20", "decays", decays, tolerance=0.1),
    Claim("02.ln_least", "Fig. 2B (claim 4)", "ResNet20-LN is least severe (its bound at 100% "
          "depth exceeds the others' by more than 0.05)", "LN least severe", ln_least,
          tolerance=0.1),
    Claim("02.reset_std", "Fig. 2C (claim 5)", "RESET shrinks the BN running std of the "
          "WM-merged VGG16-BN (median per-channel ratio after/before < 0.7)", "variance drops",
          reset_shrinks_std, tolerance=0.1),
    Claim("02.reset_mean", "Fig. 2C (claim 5)", "RESET leaves the running mean nearly unchanged "
          "(relative change < 0.25 and smaller than the std's)", "mean ~unchanged",
          reset_keeps_mean, tolerance=0.1),
    Claim("02.reset_recovers", "Claim 5", "RESET lifts the WM-merged VGG16-BN from near chance "
          "(> 30 points below the endpoints) to within 10 points of them",
          "15.16% -> ≈ 90% (endpoints 93.2 / 93.4)", reset_recovers),
    Claim("02.alignment_vf", "Fig. 11 Left", "WM and AM reduce the vanishing feature (higher mean "
          "bound over depth than direct merging)", "alignment reduces VF", alignment_reduces_vf,
          tolerance=0.1),
    Claim("02.repair_raises", "Fig. 11 Right", "REPAIR and RESCALE raise the feature scale of "
          "the WM merge (mean bound over depth higher by more than 0.1)", "raised",
          repair_raises, tolerance=0.3),
    Claim("02.bias_offset", "Fig. 12", "Bias Cal. and Bias Removal (last 5) at least halve the "
          "output offset/feature ratio of WM-merged VGG16", "offset reduced", bias_fixes_offset,
          tolerance=0.1),
]
