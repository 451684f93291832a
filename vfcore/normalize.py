"""Post-merging normalisation: RESET, REPAIR / RESCALE / RESHIFT, bias removal, bias calibration.

RESET (Algorithm 1) re-estimates BatchNorm statistics on calibration data. REPAIR (Eq. 1, Algorithm
2) gives every repaired channel of a merged model the mean and standard deviation of the same
channel in reference models, averaged with the merge weights; RESCALE (Sec. 5.3) matches the
standard deviation only, RESHIFT the mean only. Instead of inserting BatchNorm layers, the per-
channel affine correction is folded straight into the layer's weights and bias, so a repaired model
has the architecture (and, for layers with a bias, the parameter count) of the model it came from.
Every function returns a new model and leaves its inputs untouched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .device import model_device
from .feed import Feed, Stats
from .hooks import Batch, batch_inputs, eval_mode, module
from .merge import State, check_states, interpolate
from .models import ResidualLinear, check_compatible, has_batchnorm
from .trace import Structure, structure

Apply = Callable[[torch.Tensor, torch.Tensor], None]
Target = tuple[str, str, Apply]
MODES = ("repair", "rescale", "reshift")


def _check_batches(batches: Iterable[Batch], reiterable: bool) -> None:
    if isinstance(batches, torch.Tensor):
        raise TypeError("batches must be a list of batches, not one tensor (iterating a tensor "
                        "walks its samples); wrap it as [x]")
    if reiterable and isinstance(batches, Iterator):
        raise TypeError("batches is an iterator, but this pass iterates it several times; "
                        "pass a list, e.g. list(batches(...))")


def channel_stats(model: nn.Module, names: Sequence[str], batches: Iterable[Batch], *,
                  axes: dict[str, int] | None = None) -> dict[str, Stats]:
    """Per-channel mean and population std (float64) of the named modules' outputs.

    Channels are dim 1 unless `axes` gives a name another axis (a linear layer on channels-last
    values); conv outputs are pooled over the batch and all positions. The model runs in eval
    mode (so BatchNorm statistics are not touched) and each forward pass stops as soon as every
    named output has been seen. Each named module must run once per forward pass.
    """
    names = list(names)
    if not names:
        raise ValueError("no module names given to measure")
    _check_batches(batches, reiterable=False)
    with eval_mode(model), torch.no_grad():
        return Feed(model, batches).stats(names, axes=axes)


def reset_bn(model: nn.Module, batches: Iterable[Batch]) -> nn.Module:
    """RESET (Algorithm 1): re-estimate BatchNorm running statistics on calibration batches.

    A copy is put in training mode; every BatchNorm that is still training after `train()` (a
    wrapper may keep frozen parts in eval by overriding `train`) has its statistics reset and
    momentum set to None, so PyTorch stores the cumulative average over batches of each batch's
    mean and unbiased variance. All batches are forwarded without gradients; momenta are
    restored and the copy is returned in eval mode.
    """
    _check_batches(batches, reiterable=False)
    out = copy.deepcopy(model)
    out.train()
    bns = [m for m in out.modules()
           if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    if not bns:
        if has_batchnorm(out):
            raise ValueError("every BatchNorm stays in eval mode (or tracks no statistics) after "
                             "model.train(): there is nothing for RESET to re-estimate")
        raise ValueError("the model has no BatchNorm layer for RESET to re-estimate; normalise "
                         "models without BN with repair(model, references, weights, batches)")
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    device = model_device(out)
    n_batches = 0
    with torch.no_grad():
        for batch in batches:
            out(batch_inputs(batch).to(device))
            n_batches += 1
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    out.eval()
    if n_batches == 0:
        raise ValueError("batches is empty; give at least one calibration batch")
    return out


def repair_layers(model: nn.Module) -> list[str]:
    """The layers REPAIR/RESCALE correct by default (App. A.3), from the model's
    traced structure (`Structure.repair_layers`).

    The paper's choices: VGG every conv; ResNet each block's conv1 and conv2 (not the stem, not
    the shortcuts); linear nets and MLPs every hidden layer; the head never. For other models the
    same rule: every weight layer but the head, or, where residual branches join, the weight
    layers inside them. A wrapper exposing the merged model as `model.merged` (PFM) gets the
    merged model's layers.
    """
    merged = getattr(model, "merged", None)
    if isinstance(merged, nn.Module):
        return repair_layers(merged)
    return list(structure(model).repair_layers)


def fold_into(layer: nn.Module, name: str) -> Apply:
    """apply(scale, shift) that folds a per-output-channel affine map into a conv/linear layer.

    A ResidualLinear's output includes its input, so its weight also gets (scale - 1) on the
    diagonal: diag(s) (W x + b + x) + t = (diag(s) W + diag(s - 1)) x + (s b + t) + x.
    """
    if not isinstance(layer, _ConvNd | nn.Linear) or getattr(layer, "transposed", False):
        raise ValueError(f"{name} is a {type(layer).__name__}; the default REPAIR folds into "
                         "Conv2d or Linear layers only (or any other non-transposed convolution)")

    @torch.no_grad()
    def apply(scale: torch.Tensor, shift: torch.Tensor) -> None:
        w = layer.weight
        s = scale.to(device=w.device, dtype=w.dtype)
        t = shift.to(device=w.device, dtype=w.dtype)
        w.mul_(s.view(-1, *([1] * (w.dim() - 1))))
        if isinstance(layer, ResidualLinear):
            w.diagonal().add_(s - 1)
        if layer.bias is not None:
            layer.bias.mul_(s).add_(t)
        elif bool((shift != 0).any()):
            layer.bias = nn.Parameter(t.clone(), requires_grad=w.requires_grad)

    return apply


def _default_targets(model: nn.Module, traced: Structure, layers: list[str]) -> list[Target]:
    """(name, name, fold into that layer) for each layer, in forward order (so every layer
    before a cut is corrected before any layer after it)."""
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"layers {unknown} do not exist in {type(model).__name__}; the "
                         f"repairable layers are {traced.layers}")
    order = {name: i for i, name in enumerate(traced.layers)}
    return [(name, name, fold_into(modules[name], name))
            for name in sorted(layers, key=lambda name: order.get(name, -1))]


def _check_weights(weights: Sequence[float], n_refs: int) -> list[float]:
    weights = [float(w) for w in weights]
    if n_refs == 0:
        raise ValueError("repair needs at least one reference model")
    if len(weights) != n_refs:
        raise ValueError(f"got {len(weights)} weights for {n_refs} reference models; give one "
                         "weight per reference, e.g. [1 - alpha, alpha]")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"weights must be finite and non-negative, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {weights} (sum {sum(weights)})")
    return weights


def _correction(mode: str, mean: torch.Tensor, std: torch.Tensor, target_mean: torch.Tensor,
                target_std: torch.Tensor, eps: float, where: str) -> Stats:
    """Per-channel (scale, shift) that moves (mean, std) to the mode's targets."""
    if mode == "reshift":
        return torch.ones_like(mean), target_mean - mean
    denom = (std * std + eps).sqrt()
    if bool((denom == 0).any()):
        raise ValueError(f"{where} has channels with zero variance on the calibration data; "
                         "use eps > 0 or more varied calibration batches")
    scale = target_std / denom
    shift = target_mean - mean * scale if mode == "repair" else torch.zeros_like(mean)
    return scale, shift


def repair(model: nn.Module, references: Sequence[nn.Module], weights: Sequence[float],
           batches: Sequence[Batch], *, mode: str = "repair", layers: Sequence[str] | None = None,
           eps: float = 1e-5, max_cache_bytes: int = 2**30) -> nn.Module:
    """REPAIR (Eq. 1), RESCALE or RESHIFT of `model` towards weighted reference statistics.

    At each repaired layer's output (before any norm or activation) and for each channel, the
    targets are mean = sum_i w_i mean_i and std = sum_i w_i std_i over the references (standard
    deviations are averaged, as in the paper). "repair" matches both, "rescale" multiplies by
    target_std / Std (no centring, Sec. 5.3) and "reshift" adds target_mean - mean. Layers are
    corrected in forward order, each measured after the earlier ones were corrected, so on the
    calibration data every corrected channel hits its targets (exactly up to `eps`, which is
    added to the variance as BatchNorm does).

    The correction is folded into the layer (weight rows times scale, bias times scale plus
    shift). A layer without a bias (only bias-free convs, such as ResNet20-LN's and ResNet20-BN's)
    gets a new bias Parameter when its shift is nonzero: one extra parameter per repaired channel.

    `batches` is iterated once per layer, so it must be re-iterable: a list of input tensors or
    (x, y) pairs. To avoid re-running the whole prefix for every layer, the values crossing a cut
    of the traced graph just before the layer being repaired are cached, up to `max_cache_bytes`
    (0 disables it; passes then start at the input, which gives the same result more slowly).
    `layers` defaults to `repair_layers(model)`; they are taken in forward order. Channels are
    on each layer's output channel axis (the last one for a linear layer on channels-last
    values).

    A wrapper (PFM) may define `repair_targets(layers) -> [(module path in the wrapper to
    measure, layer name in the references, apply(scale, shift))]`, in forward order; scale and
    shift are per-channel float64 tensors. The references must share the architecture of
    `model` (of `model.merged` for a wrapper).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    references = list(references)
    weights = _check_weights(weights, len(references))
    base = getattr(model, "merged", model)
    for ref in references:
        check_compatible(base, ref)
    _check_batches(batches, reiterable=True)
    layers = repair_layers(model) if layers is None else list(layers)
    if not layers:
        raise ValueError("no layers to repair; leave layers=None for the paper's choice")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers lists a layer more than once: {layers}")

    traced = structure(base)
    out = copy.deepcopy(model)
    repair_targets = getattr(out, "repair_targets", None)
    wrapped = callable(repair_targets)
    targets = repair_targets(layers) if wrapped else _default_targets(out, traced, layers)
    ref_names = list(dict.fromkeys(ref_name for _, ref_name, _ in targets))
    for name in ref_names:
        try:
            module(references[0], name)
        except KeyError:
            raise ValueError(f"layer {name!r} does not exist in the reference models; the "
                             f"repairable layers are {repair_layers(references[0])}") from None
    axes = {name: traced.layer_axes.get(name, 1) for name in ref_names}

    ref_stats = [channel_stats(ref, ref_names, batches, axes=axes) for ref in references]
    feed = Feed(out, batches, max_cache_bytes, None if wrapped else traced)
    with eval_mode(out), torch.no_grad():
        for path, ref_name, apply in targets:
            target_mean = sum(w * s[ref_name][0] for w, s in zip(weights, ref_stats, strict=True))
            target_std = sum(w * s[ref_name][1] for w, s in zip(weights, ref_stats, strict=True))
            cut = None if wrapped else traced.cut_before(ref_name)
            mean, std = feed.stats([path], cut, {path: axes[ref_name]})[path]
            if mean.shape != target_mean.shape:
                raise ValueError(f"{path} has {mean.numel()} channels but reference layer "
                                 f"{ref_name} has {target_mean.numel()}; are the widths the same?")
            target_mean, target_std = target_mean.to(mean.device), target_std.to(mean.device)
            apply(*_correction(mode, mean, std, target_mean, target_std, eps, path))
    return out


def remove_biases(model: nn.Module, k: int, *, from_end: bool = True) -> nn.Module:
    """Bias Removal (Sec. 5.3, Fig. 13): zero the biases of the last k weight layers.

    With `from_end=False` the first k layers lose their biases instead (forward removal). Only
    conv/linear biases of the model's L weight layers (its traced `weight_layers`) are zeroed;
    norm-layer biases are kept.
    """
    names = structure(model).weight_layers
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(names):
        raise ValueError(f"k must be an integer in [0, {len(names)}] (the model's weight layers),"
                         f" got {k!r}")
    out = copy.deepcopy(model)
    chosen = names[len(names) - k:] if from_end else names[:k]
    with torch.no_grad():
        for name in chosen:
            bias = module(out, name).bias
            if bias is not None:
                bias.zero_()
    return out


def bias_calibrated_state(model: nn.Module, state_a: State, state_b: State,
                          alpha: float) -> State:
    """Bias Calibration (Sec. 5.3): interpolate weights, give biases the homogeneous weights.

    The bias of weight layer l (1-based over the model's L weight layers) becomes
    (1 - alpha)^l b_a + alpha^l b_b; everything else, norm biases included, is interpolated
    linearly. A layer off the counted path takes the depth of the path it joins (a ResNet
    shortcut conv, biased in plain ResNets, its block's conv2: `Structure.bias_depths`). This is
    the paper's layer index: the authors' code instead counts every state key containing
    "weight" (norm weights too) when it computes the exponent.
    """
    check_states(model.state_dict(), state_a)
    out = interpolate(state_a, state_b, alpha)
    for layer, depth in structure(model).bias_depths.items():
        key = f"{layer}.bias"
        if key in state_a:
            a, b = state_a[key], state_b[key].to(state_a[key].dtype)
            out[key] = (1 - alpha) ** depth * a + alpha ** depth * b
    return out
