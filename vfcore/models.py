"""The paper's architectures, and what makes two models one architecture.

Every model built here records its configuration (`model.config`, which gives the shape of its
input) and lists its `L` weight layers in forward order (`model.weight_layers`): the
convolutions and linear layers the paper counts, which excludes ResNet shortcut convolutions.
The kernels do not rely on either: they derive the same facts by tracing any model
(`vfcore.trace`); the built-ins are their golden tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}
NORMS = ("bn", "ln", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Everything `build_model` needs to rebuild a model: stored with checkpoints."""

    name: str
    width: float = 1.0
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32

    def as_dict(self) -> dict:
        return asdict(self)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at each spatial position (the paper's LN for CNNs)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output keeps the input's memory layout: a channels-last view reaching a strided
        convolution of a model that runs NCHW can crash torch 2.13's CPU backward pass
        (`vfcore.evaluation.channels_last`)."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                  else torch.contiguous_format)
        return y.permute(0, 3, 1, 2).contiguous(memory_format=layout)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A per-channel normalisation layer of the given kind ("bn", "ln" or "none")."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return ChannelLayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def scaled(channels: int, width: float, what: str) -> int:
    """Channel count at a width multiplier; an empty layer is an error, not a silent zero."""
    n = int(round(channels * width))
    if n < 1:
        raise ValueError(
            f"width {width} leaves {what} with {channels} * {width} < 1 channels; "
            f"use a width of at least {1 / channels:.4g}"
        )
    return n


class ResidualLinear(nn.Linear):
    """A linear layer with an identity shortcut: y = Wx + b + x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x


class LinearNet(nn.Module):
    """A deep linear network (no activation), optionally with residual hidden layers.

    The paper's Sec. 4 nets: `depth` layers of `width` units, weights drawn from N(0, init_std)
    and zero biases. With `residual`, hidden layers 2..depth-1 add their input (Fig. 2D).
    """

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int,
                 init_std: float, residual: bool = False):
        super().__init__()
        dims = [in_features] + [width] * (depth - 1) + [num_classes]
        layers = []
        for i in range(depth):
            hidden = 0 < i < depth - 1
            layer_type = ResidualLinear if residual and hidden else nn.Linear
            layers.append(layer_type(dims[i], dims[i + 1]))
        self.layers = nn.ModuleList(layers)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)
        self.weight_layers = [f"layers.{i}" for i in range(depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x


class MLP(nn.Module):
    """A ReLU multilayer perceptron (Git Re-Basin's MNIST MLP shape by default)."""

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int):
        super().__init__()
        dims = [in_features] + [width] * (depth - 1) + [num_classes]
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:
                blocks.append(nn.ReLU())
        self.layers = nn.Sequential(*blocks)
        self.weight_layers = [f"layers.{2 * i}" for i in range(depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class VGG(nn.Module):
    """CIFAR VGG: 3x3 convs (with bias), optional BN/LN, ReLU, 4 max-pools, one linear head."""

    def __init__(self, cfg: list[int | str], width: float, num_classes: int, in_channels: int,
                 norm: str):
        super().__init__()
        layers: list[nn.Module] = []
        self.weight_layers: list[str] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = scaled(int(v), width, f"a {v}-channel conv")
            self.weight_layers.append(f"features.{len(layers)}")
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if norm != "none":
                layers.append(make_norm(norm, out))
            layers.append(nn.ReLU())
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.weight_layers.append("classifier")
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's `vgg_init`: Kaiming normal (fan_out) convs, N(0, 0.01) head, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """conv-norm-ReLU-conv-norm, plus the shortcut, then ReLU (open_lth's ResNet block)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.norm1 = make_norm(norm, c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.norm2 = make_norm(norm, c_out)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=bias), make_norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.relu1(self.norm1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): a 3x3 stem, three stages of n blocks (16, 32, 64 x width), a head."""

    def __init__(self, depth: int, width: float, num_classes: int, in_channels: int, norm: str):
        super().__init__()
        n = (depth - 2) // 6
        widths = [scaled(c, width, f"a {c}-channel stage") for c in (16, 32, 64)]
        bias = norm == "none"
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=bias)
        self.norm = make_norm(norm, widths[0])
        self.relu = nn.ReLU()
        blocks, channels = [], widths[0]
        self.stage_of_block: list[int] = []
        for stage, c in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, c, stride, norm))
                self.stage_of_block.append(stage)
                channels = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.weight_layers = (
            ["conv"]
            + [f"blocks.{k}.conv{j}" for k in range(len(blocks)) for j in (1, 2)]
            + ["fc"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.norm(self.conv(x))))
        return self.fc(self.pool(x).flatten(1))


def _linear(depth: int, width: int, init_std: float, residual: bool = False):
    def build(c: ModelConfig) -> nn.Module:
        hidden = scaled(width, c.width, f"a {width}-unit layer")
        return LinearNet(c.in_channels * c.image_size**2, hidden, depth, c.num_classes, init_std,
                         residual)
    return build


def _mlp(c: ModelConfig) -> nn.Module:
    return MLP(c.in_channels * c.image_size**2, scaled(512, c.width, "a 512-unit layer"), 4,
               c.num_classes)


def _vgg(cfg: str, norm: str):
    return lambda c: VGG(VGG_CONFIGS[cfg], c.width, c.num_classes, c.in_channels, norm)


def _resnet(depth: int, norm: str):
    return lambda c: ResNet(depth, c.width, c.num_classes, c.in_channels, norm)


ARCHITECTURES = {
    "linear8": _linear(8, 32, 0.002),
    "linear5": _linear(5, 32, 0.005),
    "linear5_res": _linear(5, 32, 0.005, residual=True),
    "mlp": _mlp,
    "vgg11": _vgg("vgg11", "none"),
    "vgg11_bn": _vgg("vgg11", "bn"),
    "vgg11_ln": _vgg("vgg11", "ln"),
    "vgg16": _vgg("vgg16", "none"),
    "vgg16_bn": _vgg("vgg16", "bn"),
    "vgg16_ln": _vgg("vgg16", "ln"),
    "resnet20": _resnet(20, "bn"),
    "resnet20_ln": _resnet(20, "ln"),
    "resnet20_plain": _resnet(20, "none"),
}


def build_model(name: str, *, width: float = 1.0, num_classes: int = 10, in_channels: int = 3,
                image_size: int = 32) -> nn.Module:
    """Build one of the paper's architectures (`ARCHITECTURES`) at a width multiplier.

    Linear nets and the MLP flatten `in_channels x image_size x image_size` inputs; the CNNs
    accept any image size (32 is the paper's). Width 1 reproduces the paper's parameter counts.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(ARCHITECTURES)}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise ValueError("num_classes, in_channels and image_size must be positive")
    config = ModelConfig(name, float(width), num_classes, in_channels, image_size)
    model = ARCHITECTURES[name](config)
    model.config = config
    return model


def rebuild(model: nn.Module) -> nn.Module:
    """A fresh model of the same configuration (new random weights)."""
    c = model_config(model)
    return build_model(c.name, width=c.width, num_classes=c.num_classes,
                       in_channels=c.in_channels, image_size=c.image_size)


def model_config(model: nn.Module) -> ModelConfig:
    """The configuration a vfcore model was built with; other models are rejected clearly."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(
            f"{type(model).__name__} was not built by vfcore.build_model; kernels need the "
            "structure that build_model records (config, weight_layers)"
        )
    return config


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def architecture(model: nn.Module) -> tuple:
    """What identifies a model's architecture: its class, its modules' names and types, and its
    state dict's keys and shapes (not the values). Models with equal keys merge with each other
    and share one traced structure (`vfcore.trace`)."""
    return (type(model), tuple((name, type(m)) for name, m in model.named_modules()),
            tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()))


def check_compatible(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise, naming the first difference, unless two models share one architecture: the same
    class and modules, and state dicts with the same keys and shapes."""
    (type_a, modules_a, state_a), (type_b, modules_b, state_b) = (architecture(model_a),
                                                                  architecture(model_b))
    if type_a is not type_b:
        raise ValueError(f"models differ: {type_a.__name__} vs {type_b.__name__}; merging needs "
                         "the same architecture")
    if modules_a != modules_b:
        a, b = next((x, y) for x, y in zip(modules_a + ((None, None),),
                                            modules_b + ((None, None),), strict=False) if x != y)
        raise ValueError(f"models differ: module {a[0]!r} ({getattr(a[1], '__name__', None)}) "
                         f"vs {b[0]!r} ({getattr(b[1], '__name__', None)}); merging needs the "
                         "same architecture")
    keys_a, keys_b = dict(state_a), dict(state_b)
    if keys_a.keys() != keys_b.keys():
        only_a, only_b = sorted(keys_a.keys() - keys_b), sorted(keys_b.keys() - keys_a)
        raise ValueError(f"models differ: state keys only in the first {only_a[:5]}, only in the "
                         f"second {only_b[:5]}; merging needs the same architecture")
    for key, shape in keys_a.items():
        if shape != keys_b[key]:
            raise ValueError(f"models differ: {key} has shape {shape} vs {keys_b[key]}; merging "
                             "needs the same architecture and width")
