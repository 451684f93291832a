"""Declarative permutation specs: which state-dict axes share one permutation of hidden units.

A spec maps every state-dict key to the group of each of its axes (None: not permuted), in the
style of Git Re-Basin. Norm weights, biases and running statistics follow their channels; all
convolutions writing into one ResNet residual stream share that stage's group. `features` names,
per group, the modules whose outputs carry that group's units after the nonlinearity: activation
matching, ZipIt! and CCA correlate those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from .models import MLP, VGG, LinearNet, ResidualLinear, ResNet, model_config

Axes = tuple[str | None, ...]


@dataclass(frozen=True)
class PermutationSpec:
    axes: dict[str, Axes]
    features: dict[str, list[str]] = field(default_factory=dict)

    @cached_property
    def groups(self) -> dict[str, list[tuple[str, int]]]:
        """Group name -> every (state key, axis) it permutes, in a fixed order."""
        out: dict[str, list[tuple[str, int]]] = {}
        for key, axes in self.axes.items():
            for axis, group in enumerate(axes):
                if group is not None:
                    out.setdefault(group, []).append((key, axis))
        return out

    def check(self, state: dict[str, torch.Tensor]) -> dict[str, int]:
        """Validate a state dict against the spec; return each group's size.

        Missing or extra keys, wrong ranks and groups whose axes disagree in size are errors:
        a spec that does not fit the model must never produce a silent bad merge.
        """
        missing = sorted(set(self.axes) - set(state))
        extra = sorted(set(state) - set(self.axes))
        if missing or extra:
            raise ValueError(
                f"state dict does not fit the permutation spec: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                f"{'...' if len(extra) > 5 else ''}. Load a checkpoint of the same architecture."
            )
        sizes: dict[str, int] = {}
        for key, axes in self.axes.items():
            if state[key].dim() != len(axes):
                raise ValueError(f"{key} has shape {tuple(state[key].shape)}, spec expects rank "
                                 f"{len(axes)}")
            for axis, group in enumerate(axes):
                if group is None:
                    continue
                n = state[key].shape[axis]
                if sizes.setdefault(group, n) != n:
                    raise ValueError(f"group {group!r} has size {sizes[group]} but {key} axis "
                                     f"{axis} has {n}: the spec does not fit this model")
        return sizes


def _norm_axes(prefix: str, norm: nn.Module, group: str) -> dict[str, Axes]:
    """Spec entries of a norm layer whose channels belong to `group`."""
    axes: dict[str, Axes] = {}
    for name, _ in list(norm.named_parameters(recurse=False)) + list(
            norm.named_buffers(recurse=False)):
        axes[f"{prefix}.{name}"] = () if name == "num_batches_tracked" else (group,)
    return axes


def _weight_axes(prefix: str, layer: nn.Module, out: str | None,
                 inp: str | None) -> dict[str, Axes]:
    kernel = (None,) * (layer.weight.dim() - 2)
    axes: dict[str, Axes] = {f"{prefix}.weight": (out, inp, *kernel)}
    if layer.bias is not None:
        axes[f"{prefix}.bias"] = (out,)
    return axes


def _vgg_spec(model: VGG) -> PermutationSpec:
    axes: dict[str, Axes] = {}
    features: dict[str, list[str]] = {}
    group: str | None = None
    for i, layer in enumerate(model.features):
        name = f"features.{i}"
        if isinstance(layer, nn.Conv2d):
            axes |= _weight_axes(name, layer, name, group)
            group = name
        elif isinstance(layer, nn.ReLU):
            features[group] = [name]
        elif not isinstance(layer, nn.MaxPool2d):
            axes |= _norm_axes(name, layer, group)
    axes |= _weight_axes("classifier", model.classifier, None, group)
    return PermutationSpec(axes, features)


def _resnet_spec(model: ResNet) -> PermutationSpec:
    stream = [f"stream{s}" for s in range(3)]
    axes = _weight_axes("conv", model.conv, stream[0], None) | _norm_axes("norm", model.norm,
                                                                          stream[0])
    features: dict[str, list[str]] = {stream[0]: ["relu"]}
    current = stream[0]
    for k, (block, stage) in enumerate(zip(model.blocks, model.stage_of_block, strict=True)):
        p, inner, out = f"blocks.{k}", f"blocks.{k}.inner", stream[stage]
        axes |= _weight_axes(f"{p}.conv1", block.conv1, inner, current)
        axes |= _norm_axes(f"{p}.norm1", block.norm1, inner)
        axes |= _weight_axes(f"{p}.conv2", block.conv2, out, inner)
        axes |= _norm_axes(f"{p}.norm2", block.norm2, out)
        if isinstance(block.shortcut, nn.Sequential):
            axes |= _weight_axes(f"{p}.shortcut.0", block.shortcut[0], out, current)
            axes |= _norm_axes(f"{p}.shortcut.1", block.shortcut[1], out)
        features[inner] = [f"{p}.relu1"]
        features.setdefault(out, []).append(f"{p}.relu2")
        current = out
    axes |= _weight_axes("fc", model.fc, None, current)
    return PermutationSpec(axes, features)


def _linear_spec(model: LinearNet) -> PermutationSpec:
    axes: dict[str, Axes] = {}
    features: dict[str, list[str]] = {}
    group: str | None = None
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        name = f"layers.{i}"
        out = None if i == last else group if isinstance(layer, ResidualLinear) else name
        axes |= _weight_axes(name, layer, out, group)
        if out is not None:
            features.setdefault(out, []).append(name)
        group = out
    return PermutationSpec(axes, features)


def _mlp_spec(model: MLP) -> PermutationSpec:
    axes: dict[str, Axes] = {}
    features: dict[str, list[str]] = {}
    group: str | None = None
    names = model.weight_layers
    for i, name in enumerate(names):
        out = None if i == len(names) - 1 else name
        axes |= _weight_axes(name, model.get_submodule(name), out, group)
        if out is not None:
            features[out] = [f"layers.{2 * i + 1}"]
        group = out
    return PermutationSpec(axes, features)


_BUILDERS = {VGG: _vgg_spec, ResNet: _resnet_spec, LinearNet: _linear_spec, MLP: _mlp_spec}


def spec_for(model: nn.Module) -> PermutationSpec:
    """The permutation spec of a vfcore model, checked against the model's own state dict."""
    model_config(model)
    builder = _BUILDERS.get(type(model))
    if builder is None:
        raise TypeError(f"no permutation spec for {type(model).__name__}")
    spec = builder(model)
    spec.check(model.state_dict())
    return spec
