"""TADrop-style per-layer sparsity for one-shot magnitude pruning, at an exact mean sparsity.

TADrop (Luo et al., 2025, "One Size Does Not Fit All") gives each parameter tensor its own
sparsity from the shape of its value distribution: tensors whose values are dense and redundant
are pruned harder, sparse ones whose few large values are critical are spared. Its exact formula
is not public; this is our own allocation in that spirit, for pruning conv/linear weights.

Per layer l with n_l weights, a statistic of its weights measures how heavy-tailed (sparse)
they are: "kurtosis" (Pearson's E[(w - mean)^4] / var^2: 1.8 uniform, 3 Gaussian, 6 Laplace,
larger for heavier tails) or "hoyer" (Hoyer's sparsity (sqrt(n) - ||w||_1 / ||w||_2) /
(sqrt(n) - 1): 0 for equal magnitudes, about 0.2 for a large Gaussian tensor, 1 for a single
non-zero). The allocation uses a score s_l on a log scale, log(kurtosis) or logit(hoyer), so that
both statistics are unbounded and a Laplace layer sits about 0.5-0.7 above a Gaussian one. With
z_l = s_l minus the mean score over layers, the layer's sparsity is

    p_l = clip(sigmoid(t - strength * z_l), low, high),

with t chosen so that sum_l p_l n_l hits the target, then rounded to integer counts whose sum
is exactly round(mean_sparsity * total). The scores are centred but not standardised: layers that
share one distribution (a freshly initialised network) get nearly uniform sparsity instead of
having their sampling noise blown up to full strength. Direction: a *lower* statistic (a denser,
flatter, more Gaussian-like or uniform distribution, whose many similar-magnitude weights are
redundant) gets *more* sparsity; a heavy-tailed layer, whose information sits in a few large
weights, is pruned less. That is TADrop's rule. One can argue the other way (magnitude pruning
removes a smaller share of a heavy-tailed layer's L2 mass); a negative `strength` reverses it.
Working on the logit scale keeps every p_l inside (0, 1) at high mean sparsities.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from .hooks import module
from .prune import prunable_layers

STATISTICS = ("kurtosis", "hoyer")


def _check_mean(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ValueError(f"mean_sparsity must lie in [0, 1), got {value!r}; 0.9 zeroes 90% of "
                         "the prunable weights")
    return float(value)


def weight_statistic(weight: torch.Tensor, statistic: str, name: str = "weight") -> float:
    """The distribution statistic of one weight tensor (module docstring), in float64."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    w = weight.detach().double().flatten()
    if w.numel() < 2:
        raise ValueError(f"{name} has {w.numel()} weight; a distribution statistic needs >= 2")
    if statistic == "kurtosis":
        centred = w - w.mean()
        var = centred.pow(2).mean()
        if var == 0:
            raise ValueError(f"{name} is constant: its kurtosis is undefined")
        return float(centred.pow(4).mean() / var**2)
    l2 = torch.linalg.vector_norm(w)
    if l2 == 0:
        raise ValueError(f"{name} is all zeros: its Hoyer sparsity is undefined")
    root = math.sqrt(w.numel())
    return float((root - w.abs().sum() / l2) / (root - 1))


def _score(value: float, statistic: str) -> float:
    """The statistic on the allocation's log scale: log(kurtosis) or logit(hoyer)."""
    if statistic == "kurtosis":
        return math.log(value)
    value = min(max(value, 1e-6), 1 - 1e-6)
    return math.log(value / (1 - value))


def _fractions(z: np.ndarray, sizes: np.ndarray, target: int, strength: float, low: float,
               high: float) -> np.ndarray:
    """p_l = clip(sigmoid(t - strength z_l), low, high), t found by bisection so that
    sum p_l n_l = target (the sum is continuous and non-decreasing in t)."""
    if strength == 0 or not np.any(z):
        return np.full(len(z), min(max(target / sizes.sum(), low), high))

    def pruned(t: float) -> float:
        return float((np.clip(1 / (1 + np.exp(-(t - strength * z))), low, high) * sizes).sum())

    spread = abs(strength) * float(np.abs(z).max())
    lo, hi = -50.0 - spread, 50.0 + spread
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pruned(mid) < target else (lo, mid)
    return np.clip(1 / (1 + np.exp(-((lo + hi) / 2 - strength * z))), low, high)


def _counts(fractions: np.ndarray, sizes: np.ndarray, target: int, floors: np.ndarray,
            caps: np.ndarray) -> np.ndarray:
    """Integer counts within [floors, caps] summing to target, nearest to fractions * sizes:
    round down, then hand the remainder to the largest fractional parts (ties: first layer)."""
    ideal = fractions * sizes
    counts = np.clip(np.floor(ideal).astype(np.int64), floors, caps)
    left = target - int(counts.sum())
    step = 1 if left > 0 else -1
    order = sorted(range(len(sizes)), key=lambda i: (-step * (ideal[i] - counts[i]), i))
    while left:
        for i in order:
            if left and floors[i] <= counts[i] + step <= caps[i]:
                counts[i] += step
                left -= step
    return counts


def allocate(model: nn.Module, mean_sparsity: float, *, statistic: str = "kurtosis",
             strength: float = 1.0, bounds: tuple[float, float] = (0.0, 0.99)) -> dict[str, int]:
    """TADrop-style allocation: per prunable layer (`vfcore.prune.prunable_layers`), the number
    of its weights to zero (module docstring).

    The counts sum to exactly round(mean_sparsity * total prunable weights); each layer's
    sparsity lies in `bounds` (as counts: between ceil(low n_l) and floor(high n_l)). Before
    rounding, the per-layer fractions are monotone in the statistic (non-increasing for a
    positive strength); rounding moves each layer by less than one weight. strength = 0, or
    layers with equal statistics, give every layer the same fraction (layer-wise pruning).
    """
    mean = _check_mean(mean_sparsity)
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    if isinstance(strength, bool) or not isinstance(strength, Real) or not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number (0: uniform), got {strength!r}")
    low, high = bounds
    if not 0 <= low <= high < 1:
        raise ValueError(f"bounds must satisfy 0 <= low <= high < 1, got {bounds}")
    names = prunable_layers(model)
    weights = [module(model, name).weight for name in names]
    sizes = np.array([w.numel() for w in weights], dtype=np.int64)
    target = round(mean * int(sizes.sum()))
    floors = np.ceil(low * sizes - 1e-9).astype(np.int64)
    caps = np.floor(high * sizes + 1e-9).astype(np.int64)
    if not floors.sum() <= target <= caps.sum():
        raise ValueError(f"mean sparsity {mean} cannot be reached with per-layer bounds {bounds}: "
                         f"the bounds allow {floors.sum()} to {caps.sum()} zeroed weights, the "
                         f"target is {target}; widen the bounds")
    scores = np.array([_score(weight_statistic(w, statistic, name), statistic)
                       for w, name in zip(weights, names, strict=True)])
    z = scores - scores.mean()
    fractions = _fractions(z, sizes.astype(float), target, float(strength), low, high)
    counts = _counts(fractions, sizes, target, floors, caps)
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


def prune_allocated(model: nn.Module, allocation: Mapping[str, int | float]) -> nn.Module:
    """A copy of `model` with, in each allocated layer, its smallest-magnitude weights zeroed.

    A value is a count (int, 0..n) or a fraction (float in [0, 1), rounded to a count). Ties in
    magnitude go to the lower flat index, so exactly that many weights are zeroed (weights
    already zero count among them). Layers not in `allocation`, biases and norms are untouched;
    no masks are left behind.
    """
    names = set(prunable_layers(model))
    unknown = sorted(set(allocation) - names)
    if unknown:
        raise KeyError(f"allocation names {unknown}, which are not prunable layers of "
                       f"{type(model).__name__}; see vfcore.prune.prunable_layers(model)")
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in allocation.items():
            weight = module(out, name).weight
            n = weight.numel()
            if isinstance(value, Integral) and not isinstance(value, bool):
                if not 0 <= value <= n:
                    raise ValueError(f"{name}: count {value} outside 0..{n}")
                k = int(value)
            elif isinstance(value, Real) and not isinstance(value, bool) and 0 <= value < 1:
                k = round(float(value) * n)
            else:
                raise ValueError(f"{name}: {value!r} is neither a count nor a fraction in [0, 1)")
            order = torch.sort(weight.abs().flatten(), stable=True).indices[:k]
            pruned = torch.zeros(n, dtype=torch.bool, device=weight.device)
            pruned[order] = True
            weight.masked_fill_(pruned.view(weight.shape), 0.0)
    return out
