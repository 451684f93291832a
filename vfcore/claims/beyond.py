"""Claims of notebook 09: the methods that came after the paper, each stated as its own paper
states it (adapted to two models trained from different initialisations), and the questions
the vanishing-feature view raises about them. Criteria fixed before the runs."""

from __future__ import annotations

import numpy as np

from ..studies.beyond import BUDGETS, predictor
from .core import Claim, Results, Verdict, above, below, pm


def merged(r: Results, model: str, merger: str | None = None, norm: str = "none",
           metric: str = "accuracy", study: str = "regression") -> np.ndarray:
    coords = {"model": model, "matcher": "am", "norm": norm, "merger": merger}
    return r.values(study, metric, **coords)


def depth(r: Results, model: str, merger: str | None = None, norm: str = "none") -> float:
    """Mean of the bound over the 20 depth points, averaged over pairs."""
    return float(r.curve("regression", "depth", model=model, matcher="am", norm=norm,
                         merger=merger).mean())


def regmean_beats_average(r: Results, model: str) -> Verdict:
    reg, avg = merged(r, model, "regmean"), merged(r, model)
    return above(reg.mean() - avg.mean(), 2.0, f"RegMean {pm(reg)}% vs averaging {pm(avg)}%")


def chain_beats_regmean(r: Results, model: str) -> Verdict:
    chain, reg = merged(r, model, "chain"), merged(r, model, "regmean")
    return above(chain.mean() - reg.mean(), 1.0, f"Chain {pm(chain)}% vs RegMean {pm(reg)}%")


def chain_keeps_feature(r: Results, model: str) -> Verdict:
    chain, reg, avg = (depth(r, model, m) for m in ("chain", "regmean", None))
    return above(chain - reg, 0.05, f"mean bound over depth: Chain {chain:.2f}, RegMean "
                                    f"{reg:.2f}, averaging {avg:.2f}")


def chain_vs_repair(r: Results, model: str) -> Verdict:
    norm = "reset" if model.endswith("_bn") or model == "resnet20" else "repair"
    chain, fixed = merged(r, model, "chain"), merged(r, model, None, norm)
    return above(chain.mean() - fixed.mean(), 0.0, f"Chain {pm(chain)}% vs averaging + "
                                                   f"{norm.upper()} {pm(fixed)}%")


def pleas_curve(r: Results, metric: str = "accuracy") -> dict[float, float]:
    df = r.select("pleas", metric)
    return df.groupby(df["budget"].astype(float))["value"].mean().to_dict()


def pleas_ensemble(r: Results) -> Verdict:
    acc = pleas_curve(r)[2.0]
    ensemble = r.mean("endpoints", "ensemble", model="vgg16")
    return below(abs(acc - ensemble), 0.5, f"budget 2.0: {acc:.2f}% vs ensemble {ensemble:.2f}%")


def pleas_rises(r: Results) -> Verdict:
    acc = [pleas_curve(r)[b] for b in BUDGETS]
    return Verdict(" -> ".join(f"{a:.1f}" for a in acc), float(acc[-1] - acc[0]), 0.0,
                   bool(acc[-1] > acc[0] and np.all(np.diff(acc) >= -2.0)))


def pfm_at_budget(r: Results, budget: float) -> float:
    """PFM's accuracy at the largest l whose parameter ratio does not exceed `budget`."""
    ratios = r.select("pfm_cost", "params_ratio").set_index("l")["value"]
    best = int(ratios[ratios <= budget + 1e-9].index.max())
    acc = r.select("pfm_budget", model="vgg16", l=best)
    return float(acc["value"].mean())


def pleas_vs_pfm(r: Results, budget: float) -> Verdict:
    pleas, pfm = pleas_curve(r)[budget], pfm_at_budget(r, budget)
    return above(pfm - pleas, 0.0, f"PFM {pfm:.1f}% vs PLeaS {pleas:.1f}% at {budget:g}x "
                                   "parameters")


def ties_vs_average(r: Results, model: str) -> Verdict:
    best = max(merged(r, model, "ties_zero", study="ties", norm=n).mean()
               for n in ("none", "reset" if model.endswith("_bn") else "rescale"))
    avg = max(merged(r, model, None, n, study="ties").mean()
              for n in ("none", "reset" if model.endswith("_bn") else "rescale"))
    return below(best - avg, 0.0, f"best TIES (base zero) {best:.1f}% vs averaging {avg:.1f}%")


def signs_track_vf(r: Results, model: str) -> Verdict:
    signs = r.curve("signs", "sign_disagreement", model=model).mean(0)
    scale = r.curve("ties", "scale", model=model, matcher="am", norm="none", merger=None).mean(0)
    rho = float(np.corrcoef(np.argsort(np.argsort(signs[:-1])),
                            np.argsort(np.argsort(scale[:-1])))[0, 1])
    return below(rho, 0.0, f"rank correlation over layers {rho:+.2f} (sign disagreement "
                           f"{signs.min():.2f}-{signs.max():.2f})")


def allocation(r: Results, model: str, rule: str, kind: str, sparsity: float) -> float:
    df = r.select("layer_sparsity", kind, model=model, rule=rule)
    return float(df[np.isclose(df["sparsity"], sparsity)]["value"].mean())


def tadrop_helps(r: Results, model: str) -> Verdict:
    gaps = [allocation(r, model, "tadrop", "pruned", s)
            - allocation(r, model, "layerwise", "pruned", s) for s in (0.9, 0.95)]
    return above(min(gaps), 0.0, "over uniform at 90 / 95%: "
                                 + " / ".join(f"{g:+.1f}" for g in gaps))


def vf_best_predictor(r: Results, target: str) -> Verdict:
    correlations, _ = predictor(r.table, target)
    ranked = correlations.assign(size=correlations["spearman"].abs()).sort_values(
        "size", ascending=False)
    top = ranked.iloc[0]
    vf = float(correlations.set_index("metric").loc["vf_ratio", "spearman"])
    runner = float(ranked[ranked["metric"] != "vf_ratio"]["size"].iloc[0])
    return above(abs(vf) - runner, 0.0, f"VF ratio rho {vf:+.2f}; strongest "
                                        f"{top['metric']} {top['spearman']:+.2f}")


def predictor_works(r: Results, target: str) -> Verdict:
    _, scores = predictor(r.table, target)
    return above(scores["all_spearman"], 0.5, f"out-of-configuration Spearman "
                                              f"{scores['all_spearman']:.2f}, R^2 "
                                              f"{scores['all_r2']:.2f}")


CLAIMS = [
    *[Claim(f"09.regmean_{m}", "RegMean (Jin et al., ICLR 2023)", f"{m}: the regression merge "
            "beats averaging of the aligned weights by more than 2 points", "beats averaging",
            lambda r, m=m: regmean_beats_average(r, m)) for m in ("vgg16", "vgg16_bn", "resnet20")],
    *[Claim(f"09.chain_{m}", "Chain of Merges (Buzzega et al., 2025)", f"{m}: inputs through the "
            "merged prefix beat RegMean's per-endpoint inputs by more than 1 point",
            "beats RegMean", lambda r, m=m: chain_beats_regmean(r, m))
      for m in ("vgg16", "vgg16_bn", "resnet20")],
    *[Claim(f"09.chain_vf_{m}", "question 1", f"{m}: re-estimating through the merged prefix "
            "keeps more feature than RegMean (mean bound over depth higher by 0.05)",
            "vfcore's hypothesis", lambda r, m=m: chain_keeps_feature(r, m), tolerance=0.1)
      for m in ("vgg16", "vgg16_bn", "resnet20")],
    *[Claim(f"09.chain_repair_{m}", "question 1", f"{m}: Chain of Merges beats averaging + the "
            "paper's normalisation", "vfcore's hypothesis", lambda r, m=m: chain_vs_repair(r, m))
      for m in ("vgg16", "vgg16_bn", "resnet20")],
    Claim("09.pleas_ensemble", "PLeaS (Nasery et al., 2024)", "PLeaS at budget 2.0 is the "
          "ensemble (within 0.5 points)", "known answer", pleas_ensemble, tolerance=0.5),
    Claim("09.pleas_rises", "PLeaS", "PLeaS accuracy rises with the budget", "rises",
          pleas_rises),
    *[Claim(f"09.pfm_vs_pleas_{b:g}", "question 2", f"At {b:g}x parameters, PFM (AM, normalised) "
            "beats PLeaS on VGG16", "vfcore's hypothesis", lambda r, b=b: pleas_vs_pfm(r, b))
      for b in (1.25, 1.5)],
    *[Claim(f"09.ties_{m}", "TIES (Yadav et al., NeurIPS 2023)", f"{m}: TIES (base zero, any "
            "density) does not beat averaging for models from different initialisations",
            "adaptation: no shared base", lambda r, m=m: ties_vs_average(r, m))
      for m in ("vgg16", "vgg16_bn")],
    *[Claim(f"09.signs_{m}", "TIES / question", f"{m}: layers whose aligned weights disagree more "
            "in sign keep less feature (negative rank correlation over layers)",
            "vfcore's hypothesis", lambda r, m=m: signs_track_vf(r, m), tolerance=0.3)
      for m in ("vgg16", "vgg16_bn")],
    *[Claim(f"09.tadrop_{m}", "TADrop (2025)", f"{m}: the TADrop-style allocation beats uniform "
            "layer-wise pruning at 90% and 95% before normalisation", "denser layers take more",
            lambda r, m=m: tadrop_helps(r, m)) for m in ("vgg16_bn", "resnet20")],
    *[Claim(f"09.vf_predicts_{t}", "question 5", f"The VF ratio is the best single predictor of "
            f"the normalised {t.replace('_', ' + ').upper()} accuracy (largest |Spearman|)",
            "vfcore's hypothesis", lambda r, t=t: vf_best_predictor(r, t), tolerance=0.2)
      for t in ("am_none", "am_reset")],
    *[Claim(f"09.predictor_{t}", "Demystifying Mergeability (2025)", "A lasso on the pair "
            f"metrics predicts the normalised {t.replace('_', ' + ').upper()} accuracy of unseen "
            "configurations (out-of-fold Spearman > 0.5)", "predictable",
            lambda r, t=t: predictor_works(r, t), tolerance=0.2)
      for t in ("am_none", "am_reset")],
]


