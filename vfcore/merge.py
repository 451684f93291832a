"""Linear interpolation of whole state dicts, and the barrier along the merging line."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

State = dict[str, torch.Tensor]


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")


def check_states(state_a: State, state_b: State) -> None:
    """Raise unless two state dicts have the same keys and shapes."""
    missing, extra = sorted(set(state_a) - set(state_b)), sorted(set(state_b) - set(state_a))
    if missing or extra:
        raise ValueError(f"state dicts differ: only in the first {missing[:5]}, only in the "
                         f"second {extra[:5]}; both must come from the same architecture")
    for k, v in state_a.items():
        if v.shape != state_b[k].shape:
            raise ValueError(f"{k}: shapes {tuple(v.shape)} and {tuple(state_b[k].shape)} differ;"
                             " are the widths the same?")


def interpolate(state_a: State, state_b: State, alpha: float) -> State:
    """(1 - alpha) * state_a + alpha * state_b for every floating tensor, norm buffers included.

    Integer buffers (BN's num_batches_tracked) are taken from `state_a`.
    """
    check_alpha(alpha)
    check_states(state_a, state_b)
    return {k: torch.lerp(v, state_b[k].to(v.dtype), alpha) if v.is_floating_point() else v.clone()
            for k, v in state_a.items()}


def with_state(template: nn.Module, state: State) -> nn.Module:
    """A copy of `template` (on its device, in eval mode) holding `state`."""
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model.eval()


def merged_model(template: nn.Module, state_a: State, state_b: State, alpha: float) -> nn.Module:
    """A copy of `template` holding the interpolated weights."""
    return with_state(template, interpolate(state_a, state_b, alpha))


def alphas(n: int = 11) -> np.ndarray:
    """n evenly spaced merge coefficients in [0, 1] (the paper uses 11)."""
    return np.linspace(0.0, 1.0, n)


def barrier(coefficients: Sequence[float], accuracies: Sequence[float]) -> float:
    """The paper's barrier: max over alpha of the line between the endpoint accuracies minus the
    merged accuracy. `coefficients` must start at 0 and end at 1 (the endpoints)."""
    a, acc = np.asarray(coefficients, float), np.asarray(accuracies, float)
    if a.ndim != 1 or a.shape != acc.shape or a[0] != 0.0 or a[-1] != 1.0:
        raise ValueError("coefficients must be a 1-D grid from 0 to 1 matching the accuracies")
    line = (1 - a) * acc[0] + a * acc[-1]
    return float(np.max(line - acc))
