"""Pairwise mergeability metrics after alignment, and a small sparse predictor built on them.

After "Demystifying Mergeability" (Zhou, Zhao, Yu and Rodola, arXiv 2601.22285), which relates
interpretable pairwise metrics of fine-tuned models to merge success with an L1-regularised
linear model: here the pairs are endpoints trained from different initialisations, compared
after alignment, and the metrics include the paper's vanishing-feature ratio. The predictor
utilities rank-correlate metrics with merge quality and fit a lasso whose error is estimated by
leaving one configuration (architecture, width, dataset, ...) out at a time.

`pair_metrics` returns, for two endpoints expressed in one coordinate system by an `Alignment`:

- "weight_cosine", "weight_distance": cosine similarity and L2 distance of the aligned
  conv/linear weights, all layers flattened into one vector (biases and norms left out);
- "wm_cosine": the weight-matching objective <theta_a, theta_b> over every floating tensor of the
  aligned states (what weight matching maximises), divided by sqrt(<theta_a, theta_a>
  <theta_b, theta_b>), i.e. the cosine of the full aligned state vectors: the raw objective
  grows with width, this ratio lies in [-1, 1] at every width. Biases, norm weights and BN
  running statistics are part of it (as in weight matching), so two unrelated BN models that
  share their initial norm weights and statistics score well above 0;
- "activation_correlation": per permutation group, the Pearson correlation between each merged
  unit of a and the same merged unit of b at the group's feature read point
  (`vfcore.features.feature_statistics`, "last"), averaged over units and then over groups;
  units that are constant (dead) in either model on the data have no correlation and are left
  out;
- "gradient_cosine": cosine of the two aligned models' cross-entropy gradients with respect to
  all parameters, on the first calibration batch, in eval mode;
- "vf_ratio": the vanishing-feature ratio of the midpoint merge: E||g(x)|| of the interpolated
  model (alpha = 0.5, no RESET or REPAIR) at the last hidden weight layer (the weight layer just
  before the head, `weight_layers[-2]`, its output before any norm) over the endpoints' mean
  (`vfcore.vf.normalized_scale`, Def. 5.1 and App. A.3 of the paper).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from .align import Alignment
from .device import model_device
from .features import feature_statistics
from .hooks import Batch, batch_inputs, eval_mode
from .merge import check_states, interpolate, with_state
from .prune import prunable_layers
from .spec import spec_for
from .transform import GroupMap
from .vf import normalized_scale
from .weight_matching import matching_objective

DEAD = 1e-12
"""A unit whose variance is below this fraction of its group's largest variance counts as dead."""


# ---------------------------------------------------------------------------------------------
# Pair metrics


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v)))


def _as_matrix(m: GroupMap | None, d: int, device: torch.device) -> torch.Tensor:
    """A group map as the (d, d) matrix taking a model's units to merged units."""
    if m is None:
        return torch.eye(d, dtype=torch.float64, device=device)
    if isinstance(m, torch.Tensor):
        return torch.eye(d, dtype=torch.float64, device=device)[m.to(device)]
    return m[0].to(device, torch.float64)


def matched_correlation(cov: torch.Tensor, map_a: GroupMap | None,
                        map_b: GroupMap | None) -> float:
    """Mean correlation between matched merged units, from the (2d, 2d) covariance of [a; b]
    in the models' own units; dead units are left out (nan when every unit is dead)."""
    d = cov.shape[0] // 2
    ta, tb = (_as_matrix(m, d, cov.device) for m in (map_a, map_b))
    cross = (ta @ cov[:d, d:] @ tb.T).diagonal()
    var_a = (ta @ cov[:d, :d] @ ta.T).diagonal()
    var_b = (tb @ cov[d:, d:] @ tb.T).diagonal()
    live = (var_a > DEAD * var_a.max()) & (var_b > DEAD * var_b.max())
    if not live.any():
        return math.nan
    return float((cross[live] / (var_a[live] * var_b[live]).sqrt()).mean())


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model), torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).double().flatten()
                      for p, g in zip(params, grads, strict=True)])


def _first_batch(batches: Sequence[Batch], labels: torch.Tensor | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    first = batches[0]
    x = batch_inputs(first).to(device)
    if labels is None:
        if not isinstance(first, (tuple, list)) or len(first) < 2:
            raise ValueError("pass labels for the first batch, or batches of (inputs, labels)")
        labels = first[1]
    if labels.dim() != 1 or len(labels) != len(x) or labels.is_floating_point():
        raise ValueError(f"labels must be integer class indices, one per input of the first "
                         f"batch ({len(x)}), got shape {tuple(labels.shape)}, {labels.dtype}")
    return x, labels.to(device)


def pair_metrics(model_a: nn.Module, model_b: nn.Module, alignment: Alignment,
                 batches: Sequence[Batch], labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mergeability metrics of one aligned endpoint pair (module docstring).

    `batches` is a list, read several times; `labels` are the first batch's class indices (or
    None when batches are (inputs, labels) pairs). Activation correlations come from the
    original models' features mapped by `alignment.maps`, which is exact for dense maps too; the
    vf_ratio normalises by the original endpoints. Nothing is modified.
    """
    if not isinstance(batches, (list, tuple)) or not batches:
        raise ValueError("batches must be a non-empty list (several metrics read it)")
    sa, sb = alignment.states
    check_states(model_a.state_dict(), sa)
    check_states(sa, sb)
    device = model_device(model_a)
    aligned = [with_state(model_a, s) for s in (sa, sb)]
    keys = [f"{name}.weight" for name in prunable_layers(model_a)]
    wa = torch.cat([sa[k].double().flatten() for k in keys])
    wb = torch.cat([sb[k].double().flatten() for k in keys])

    spec = spec_for(model_a)
    norm = math.sqrt(matching_objective(spec, sa, sa, {}) * matching_objective(spec, sb, sb, {}))
    stats = feature_statistics(model_a, model_b, batches, spec)
    correlations = [matched_correlation(s.cov, alignment.maps[0].get(g), alignment.maps[1].get(g))
                    for g, s in stats.items()]
    live = [c for c in correlations if not math.isnan(c)]

    x, y = _first_batch(batches, labels, device)
    grads = [_gradient(m, x, y) for m in aligned]

    layers = getattr(model_a, "weight_layers", None)
    if not layers or len(layers) < 2:
        raise TypeError(f"{type(model_a).__name__} lists no hidden weight layer "
                        "(`weight_layers`); build it with vfcore.build_model")
    merged = with_state(model_a, interpolate(sa, sb, 0.5))
    vf = normalized_scale(merged, [model_a, model_b], batches, [layers[-2]])[0]
    return {
        "weight_cosine": _cosine(wa, wb),
        "weight_distance": float(torch.linalg.vector_norm(wa - wb)),
        "wm_cosine": matching_objective(spec, sa, sb, {}) / norm,
        "activation_correlation": float(np.mean(live)) if live else math.nan,
        "gradient_cosine": _cosine(*grads),
        "vf_ratio": float(vf),
    }


# ---------------------------------------------------------------------------------------------
# Predictor utilities (numpy / scipy only)


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y) or len(y) < 2:
        raise ValueError(f"expected X of shape (n, p) and y of shape (n,) with n >= 2, got "
                         f"{X.shape} and {y.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("X and y must be finite (drop or impute missing metrics first)")
    return X, y


def _check_lam(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or \
            not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0 (0: least squares), got {lam!r}")
    return float(lam)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr); nan when either input is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"spearman needs two 1-D sequences of one length >= 2, got {x.shape} "
                         f"and {y.shape}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class LassoFit:
    """A fitted lasso: coefficients on the original feature scale and the intercept."""

    coef: np.ndarray
    intercept: float
    lam: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=float) @ self.coef + self.intercept


def lasso_fit(X: np.ndarray, y: np.ndarray, lam: float, *, tol: float = 1e-12,
              max_iter: int = 100_000) -> LassoFit:
    """Lasso by cyclic coordinate descent on standardised features, with an intercept.

    Minimises (1 / 2n) ||y - b - Z beta||^2 + lam ||beta||_1, where Z holds the columns of X
    centred and divided by their (population) standard deviation, so lam acts equally on every
    feature; constant columns get coefficient 0. Stops when a sweep moves no coefficient by more
    than tol * std(y); lam = 0 is ordinary least squares. Coefficients are returned on X's scale.
    """
    X, y = _check_xy(X, y)
    lam = _check_lam(lam)
    n, p = X.shape
    mean, scale = X.mean(0), X.std(0)
    varying = scale > 0
    Z = np.zeros_like(X)
    Z[:, varying] = (X[:, varying] - mean[varying]) / scale[varying]
    beta = np.zeros(p)
    residual = y - y.mean()
    step_tol = tol * max(float(y.std()), np.finfo(float).tiny)
    for _ in range(max_iter):
        largest = 0.0
        for j in np.flatnonzero(varying):
            rho = Z[:, j] @ residual / n + beta[j]
            new = math.copysign(max(abs(rho) - lam, 0.0), rho)
            if new != beta[j]:
                residual -= Z[:, j] * (new - beta[j])
                largest = max(largest, abs(new - beta[j]))
                beta[j] = new
        if largest <= step_tol:
            break
    else:
        raise RuntimeError(f"lasso did not converge in {max_iter} sweeps; raise max_iter or lam "
                           "(strongly correlated features converge slowly at small lam)")
    coef = np.where(varying, beta / np.where(varying, scale, 1.0), 0.0)
    return LassoFit(coef, float(y.mean() - mean @ coef), lam)


def _check_groups(groups: Sequence, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must give one label per row ({n}), got shape {groups.shape}")
    if len(np.unique(groups)) < 2:
        raise ValueError("leave-one-group-out needs at least two groups")
    return groups


def leave_one_group_out(X: np.ndarray, y: np.ndarray, groups: Sequence,
                        lam: float) -> np.ndarray:
    """Out-of-group predictions: each group's rows are predicted by a lasso fitted on every
    other group's rows only (one fold per configuration)."""
    X, y = _check_xy(X, y)
    groups = _check_groups(groups, len(y))
    predictions = np.empty(len(y))
    for g in np.unique(groups):
        held = groups == g
        predictions[held] = lasso_fit(X[~held], y[~held], lam).predict(X[held])
    return predictions


def choose_lambda(X: np.ndarray, y: np.ndarray, groups: Sequence,
                  grid: Sequence[float]) -> float:
    """The lam of `grid` with the smallest leave-one-group-out mean squared error (plain LOGO);
    ties go to the largest lam, the sparser model. A lam whose lasso does not converge on some
    fold (small lam on strongly correlated features) cannot be chosen."""
    grid = sorted({_check_lam(lam) for lam in grid}, reverse=True)
    if not grid:
        raise ValueError("grid must hold at least one lam")
    errors = []
    for lam in grid:
        try:
            predicted = leave_one_group_out(X, y, groups, lam)
        except RuntimeError:
            errors.append(math.inf)
            continue
        errors.append(float(np.mean((predicted - np.asarray(y)) ** 2)))
    if all(math.isinf(e) for e in errors):
        raise RuntimeError(f"the lasso converged for no lam of {grid}; give larger lams")
    return grid[int(np.argmin(errors))]


def nested_leave_one_group_out(X: np.ndarray, y: np.ndarray, groups: Sequence,
                               grid: Sequence[float]) -> tuple[np.ndarray, dict]:
    """Out-of-group predictions with lam chosen inside each fold: for every held-out group,
    `choose_lambda` runs LOGO on the remaining groups only, so no choice sees the held-out rows.
    Returns the predictions and the lam chosen per held-out group; needs >= 3 groups."""
    X, y = _check_xy(X, y)
    groups = _check_groups(groups, len(y))
    if len(np.unique(groups)) < 3:
        raise ValueError("nested leave-one-group-out needs at least three groups")
    predictions, chosen = np.empty(len(y)), {}
    for g in np.unique(groups):
        held = groups == g
        lam = choose_lambda(X[~held], y[~held], groups[~held], grid)
        predictions[held] = lasso_fit(X[~held], y[~held], lam).predict(X[held])
        chosen[g.item()] = lam
    return predictions, chosen
