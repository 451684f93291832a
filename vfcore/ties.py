"""TIES-merging (Yadav et al., NeurIPS 2023), adapted to endpoints from different initialisations.

TIES merges task vectors tau_i = theta_i - base of models fine-tuned from one pretrained base:
it trims each tau_i to its largest-magnitude entries (a fraction `density` per tensor), elects a
sign per entry (the sign of the sum of the trimmed vectors), averages per entry only the trimmed
values that are non-zero and agree with that sign (the "disjoint mean"), and returns
base + lam * tau. Our endpoints share no pretrained base, so the base is a choice:

- "zero": the task vectors are the aligned weights themselves;
- "midpoint": the base is the mean of the aligned models, tau_i = theta_i - mean.

With two models the midpoint base is degenerate: tau_a = -tau_b exactly, so both trim to the same
entries and every elected sign is a tie. We compute tau_i = mean_j (theta_i - theta_j), which is
exactly antisymmetric in floating point, and let a tie elect sign 0, which no entry agrees with:
the merged task vector is zero and TIES returns the midpoint, i.e. plain averaging. (Without
exact antisymmetry, rounding noise in tau_a + tau_b would pick each entry's winner at random.)

TIES applies to conv/linear weights and their biases; every other floating tensor (norm
parameters, running statistics) is averaged, integer buffers come from the first state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .merge import State, check_states

BASES = ("zero", "midpoint")


def _check_states(states: Sequence[State]) -> list[State]:
    if isinstance(states, dict) or not states:
        raise ValueError("states must be a non-empty list of state dicts (one per aligned model)")
    states = list(states)
    for other in states[1:]:
        check_states(states[0], other)
    return states


def _check_base(base: str) -> None:
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose one of {BASES} (models trained from "
                         "different initialisations share no pretrained base)")


def ties_keys(state: State, layers: Sequence[str] | None = None) -> list[str]:
    """The keys TIES merges: `<layer>.weight` and `<layer>.bias` of each conv/linear layer.

    Without `layers`, a layer is any key ending in ".weight" whose tensor has two or more
    dimensions (conv and linear weights; 1-D norm weights are excluded). Pass the layer names
    (e.g. `vfcore.prune.prunable_layers(model)`) for models with multi-dimensional norm weights.
    """
    if layers is None:
        layers = [k[:-len(".weight")] for k, t in state.items()
                  if k.endswith(".weight") and t.is_floating_point() and t.dim() >= 2]
    keys: list[str] = []
    for layer in layers:
        if f"{layer}.weight" not in state:
            raise KeyError(f"the state dict has no {layer}.weight; layers must name modules "
                           "with a weight")
        keys += [f"{layer}.{p}" for p in ("weight", "bias") if f"{layer}.{p}" in state]
    return keys


def task_vectors(tensors: Sequence[torch.Tensor],
                 base: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The base and each model's task vector for one tensor, in float64.

    "zero": base 0, tau_i = theta_i. "midpoint": base = mean_j theta_j and tau_i = mean_j
    (theta_i - theta_j), which equals theta_i - base and is exactly antisymmetric for two models.
    """
    _check_base(base)
    thetas = [t.detach().double() for t in tensors]
    if base == "zero":
        return torch.zeros_like(thetas[0]), thetas
    n = len(thetas)
    taus = [sum(t - other for other in thetas) / n for t in thetas]
    return sum(thetas) / n, taus


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """tau with all but its round(density * numel) largest-magnitude entries set to zero.

    Equal magnitudes are kept in flat order (a stable sort), so exactly that many survive.
    """
    k = round(density * tau.numel())
    flat = tau.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.sort(flat.abs(), descending=True, stable=True).indices[:k]] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(tau)


def elect_and_average(trimmed: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per entry, the mean of the non-zero trimmed values whose sign is the sign of their sum.

    A zero sum (a tie, or nothing kept) elects sign 0; nothing agrees with it and the entry is 0.
    """
    elected = torch.stack(list(trimmed)).sum(0).sign()
    agree = [(t.sign() == elected) & (t != 0) for t in trimmed]
    count = torch.stack(agree).sum(0)
    total = sum(torch.where(a, t, torch.zeros_like(t)) for a, t in zip(agree, trimmed,
                                                                       strict=True))
    return total / count.clamp_min(1)


def ties_merge(states: Sequence[State], *, base: str, density: float, lam: float = 1.0,
               layers: Sequence[str] | None = None) -> State:
    """TIES-merge aligned state dicts (module docstring): base + lam * disjoint mean of the
    trimmed, sign-elected task vectors for conv/linear weights and biases (`ties_keys`), the mean
    of the states for every other floating tensor. Computed in float64, returned in each
    tensor's dtype and device.
    """
    states = _check_states(states)
    _check_base(base)
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1] (the fraction of each task vector kept), "
                         f"got {density!r}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number (TIES scales the merged task vector by "
                         f"it; 1 keeps it as is), got {lam!r}")
    merged_keys = set(ties_keys(states[0], layers))
    out: State = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        tensors = [s[key] for s in states]
        if key in merged_keys:
            origin, taus = task_vectors(tensors, base)
            tau = elect_and_average([trim(t, density) for t in taus])
            value = origin + lam * tau
        else:
            value = sum(t.double() for t in tensors) / len(tensors)
        out[key] = value.to(first.dtype)
    return out


def sign_disagreement(state_a: State, state_b: State, layers: Sequence[str],
                      base: str) -> dict[str, float]:
    """Per layer, the fraction of its weight entries whose task-vector signs differ.

    Zeros have no sign: an entry where either task vector is zero is left out of the count, and
    a layer with no entry signed in both models gets 0 (nothing disagrees). With base "zero" the
    signs are those of the aligned weights; with "midpoint" two distinct models disagree on every
    entry where they differ (tau_a = -tau_b), so the answer is 1 wherever defined.
    """
    check_states(state_a, state_b)
    _check_base(base)
    out: dict[str, float] = {}
    for layer in layers:
        key = f"{layer}.weight"
        if key not in state_a:
            raise KeyError(f"the state dicts have no {key}; layers must name weight layers")
        _, (tau_a, tau_b) = task_vectors([state_a[key], state_b[key]], base)
        product = tau_a.sign() * tau_b.sign()
        signed = int((product != 0).sum())
        out[layer] = int((product < 0).sum()) / signed if signed else 0.0
    return out
