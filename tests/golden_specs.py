"""Hand-written permutation specs and layer facts of vfcore's built-in architectures.

These were the library's specs before they were derived by tracing; they stay here as golden
fixtures: the traced structure of every built-in must equal them (up to group names), and the
paper's layer choices (REPAIR layers, PFM cuts, bias depths) are written out by hand.
"""

from __future__ import annotations

from torch import nn

from vfcore.models import MLP, VGG, LinearNet, ResidualLinear, ResNet
from vfcore.spec import Axes, PermutationSpec


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


BUILDERS = {VGG: _vgg_spec, ResNet: _resnet_spec, LinearNet: _linear_spec, MLP: _mlp_spec}


def hand_spec(model: nn.Module) -> PermutationSpec:
    """The hand-written spec of a built-in model, checked against its state dict."""
    spec = BUILDERS[type(model)](model)
    spec.check(model.state_dict())
    return spec


def hand_repair_layers(model: nn.Module) -> list[str]:
    """The paper's REPAIR layers (App. A.3): VGG every conv; ResNet each block's conv1 and
    conv2; linear nets and MLPs every hidden layer; never the head."""
    if isinstance(model, ResNet):
        return [name for name in model.weight_layers if name.startswith("blocks.")]
    return list(model.weight_layers[:-1])


def hand_cut_groups(model: nn.Module, n_preserved: int) -> list[tuple[str, int]]:
    """The (state key, axis) whose group each value crossing a PFM cut carries, in forward order:
    the input alone for no preserved layer; a ResNet cut inside a block also carries the block's
    input (the shortcut still needs it)."""
    if n_preserved == 0:
        return []
    name = model.weight_layers[n_preserved - 1]
    out = (f"{name}.weight", 0)
    if isinstance(model, ResNet) and name.startswith("blocks."):
        block = name.rsplit(".", 1)[0]
        return [(f"{block}.conv1.weight", 1), out]
    return [out]


def hand_bias_depths(model: nn.Module) -> dict[str, int]:
    """Bias Calibration depths: a weight layer's 1-based index; a ResNet shortcut conv its
    block's conv2's."""
    depth = {name: i for i, name in enumerate(model.weight_layers, start=1)}
    if isinstance(model, ResNet):
        for k, block in enumerate(model.blocks):
            if isinstance(block.shortcut, nn.Sequential):
                depth[f"blocks.{k}.shortcut.0"] = depth[f"blocks.{k}.conv2"]
    return depth
