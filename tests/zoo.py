"""Small models from outside vfcore, written the way common model code writes them, for tracing.

Each one exercises a structure the built-in architectures lack: torchvision-style residual
blocks (a ReLU module reused, 1x1 downsample shortcuts), a channel concatenation, a ConvNeXt
block (depthwise conv, channels-last LayerNorm, layer scale), a skip connection in an MLP; and
models whose structure must be refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet18 block: one ReLU module used twice, `out += identity`."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18Style(nn.Module):
    """Stem, max-pool, two stages of two BasicBlocks (the second downsamples), pooled head."""

    def __init__(self, width: int = 4, num_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ConcatNet(nn.Module):
    """Two conv branches concatenated along channels, a BatchNorm over the concatenation, and a
    linear head on a flattened 2 x 2 map (each channel spans four inputs of the head)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch_a = nn.Conv2d(4, 3, 3, padding=1)
        self.branch_b = nn.Conv2d(4, 5, 1)
        self.bn = nn.BatchNorm2d(8)
        self.mix = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(6 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.branch_a(x)), F.relu(self.branch_b(x))], dim=1)
        x = F.relu(self.mix(self.bn(x)))
        return self.head(self.pool(x).flatten(1))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's pattern: a traced-through subclass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, channels-last LayerNorm, inverted bottleneck of two linears with GELU,
    layer scale, residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.gamma[:, None, None] * y.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    """Patchify stem with a channels-first LayerNorm, two ConvNeXt blocks, pooled LN head."""

    def __init__(self, c: int = 4, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.stem_norm = LayerNorm2d(c)
        self.blocks = nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.head_norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_norm(self.stem(x)))
        return self.head(self.head_norm(x.mean((2, 3))))


class SkipMLP(nn.Module):
    """A three-hidden-layer ReLU MLP whose first hidden output skips to the third's."""

    def __init__(self, d_in: int = 6, width: int = 5, num_classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.fc4 = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        return self.fc4(h + F.relu(self.fc3(F.relu(self.fc2(h)))))


# ----------------------------------------------------------------------------- refused models


class DataDependent(nn.Module):
    """Python control flow on a tensor value: not traceable."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class SelfAttention(nn.Module):
    """Token mixing by a matmul of two activations."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.out = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2)
        return self.out(scores.softmax(-1) @ x)


class GroupedConv(nn.Module):
    """A grouped convolution with 1 < groups < channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(self.conv(x))


class PartialGroupNorm(nn.Module):
    """A GroupNorm with 1 < groups < channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)))


class ChannelMean(nn.Module):
    """A mean over the channel axis (not a norm)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head((y - y.mean(1, keepdim=True)).mean((2, 3)))


@torch.no_grad()
def randomise(model: nn.Module, seed: int,
              vector: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Give `model` generic parameters and statistics in place: He-scaled weight matrices,
    running variances in [0.5, 1.5), and every other floating vector `vector(key, noise)`, with
    noise standard normal (tests choose how alive the units are)."""
    gen = torch.Generator().manual_seed(seed)
    for key, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=gen)
        if key.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen))
        elif t.dim() >= 2:
            t.copy_(noise * (2 / t[0].numel()) ** 0.5)
        else:
            t.copy_(vector(key, noise))
