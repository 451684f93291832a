"""One-shot unstructured magnitude pruning and post-pruning normalisation (Sec. 5.5, App. A.7).

Weights of every conv and linear layer are pruned (biases kept), globally or layer by layer, and
the result is a plain model with zeros in its weights: no masks or reparametrisation hooks are
left behind. The pruned model is then normalised with the unpruned model as its only reference.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from numbers import Real

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .hooks import module
from .models import check_compatible, has_batchnorm
from .normalize import Batch, repair, reset_bn

SCOPES = ("global", "layerwise")


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of every convolution and Linear module (ResNet shortcut convs included), in module
    order; works for any model.

    The paper prunes all conv and linear weights; the authors' ResNet20 scripts skip the 1x1
    shortcut convs, which we follow the paper in pruning.
    """
    names = [name for name, m in model.named_modules() if isinstance(m, _ConvNd | nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no convolution or Linear layer to prune")
    return names


def _check_sparsity(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {value!r}; 0.8 zeroes 80% of the "
                         "prunable weights")
    return float(value)


def _smallest(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k smallest entries; ties go to the lower flat index (stable sort)."""
    mask = torch.zeros_like(magnitudes, dtype=torch.bool)
    mask[torch.sort(magnitudes, stable=True).indices[:k]] = True
    return mask


def prune(model: nn.Module, sparsity: float, *, scope: str = "global") -> nn.Module:
    """A copy of `model` with the smallest-magnitude conv/linear weights set to zero.

    "global" zeroes the round(sparsity * total) smallest |w| over all prunable weights together;
    "layerwise" zeroes round(sparsity * n) in each layer of n weights. Ties are broken by flat
    position, so exactly that many weights are zeroed (weights that are already zero count among
    them, being the smallest). Biases and norm parameters are untouched.
    """
    fraction = _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")
    out = copy.deepcopy(model)
    weights = [module(out, name).weight for name in prunable_layers(out)]
    with torch.no_grad():
        if scope == "global":
            flat = torch.cat([w.detach().abs().flatten().cpu() for w in weights])
            masks = _smallest(flat, round(fraction * flat.numel())).split(
                [w.numel() for w in weights])
        else:
            masks = [_smallest(w.detach().abs().flatten().cpu(), round(fraction * w.numel()))
                     for w in weights]
        for w, mask in zip(weights, masks, strict=True):
            w.masked_fill_(mask.view(w.shape).to(w.device), 0)
    return out


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over the prunable (conv and linear) layers."""
    weights = [module(model, name).weight for name in prunable_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def normalize_pruned(pruned: nn.Module, unpruned: nn.Module, batches: Sequence[Batch],
                     *, mode: str | None = None) -> nn.Module:
    """Post-pruning normalisation with the unpruned model as the single reference.

    Models with BatchNorm get RESET (the BN layers re-estimate their statistics, which is what
    REPAIR reduces to there); others get REPAIR (`mode="repair"`, the default) or RESCALE
    (`mode="rescale"`) towards the unpruned model's per-channel statistics. The paper applies
    REPAIR to plain VGG16; the authors' code uses RESCALE there, which `mode` makes available.
    """
    check_compatible(pruned, unpruned)
    if has_batchnorm(pruned):
        if mode is not None:
            raise ValueError(f"mode={mode!r} is for models without BatchNorm; BN models are "
                             "normalised with RESET, so leave mode=None")
        return reset_bn(pruned, batches)
    mode = "repair" if mode is None else mode
    if mode not in ("repair", "rescale"):
        raise ValueError(f"unknown mode {mode!r} after pruning; expected 'repair' or 'rescale'")
    return repair(pruned, [unpruned], [1.0], batches, mode=mode)
