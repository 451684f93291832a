"""Feeding a dataset to a model and scoring it: padded, channels-last batches on the model's
device, calibration batches drawn once, logits and top-1 accuracy in eval mode."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .data import ImageSet, batches
from .device import limit_threads, model_device, resolve_device
from .hooks import eval_mode


def is_cnn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last(model: nn.Module) -> bool:
    """Whether the model runs channels-last: CNNs do (faster on the CPU, `bench_train.py`),
    except those with a strided convolution on fewer than 8 channels, whose channels-last
    backward pass corrupts memory in torch 2.13's CPU kernels (seen with a 1x1 stride-2 conv on
    1-6 channels: a crash, or a hang with two threads)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(m.in_channels >= 8 for m in convs if max(m.stride) > 1)


def memory_format(model: nn.Module) -> torch.memory_format:
    return torch.channels_last if channels_last(model) else torch.contiguous_format


def pad_for(model: nn.Module, data: ImageSet) -> int | None:
    """The canvas size `data` must be zero-padded to for `model` (None when it already fits).

    Models built by `vfcore.build_model` record their input size (`model.config`); any other
    model gets the images as they are.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    channels, height, width = data.images.shape[1:]
    if channels != config.in_channels:
        raise ValueError(f"{data.name} images have {channels} channel(s) but the model expects "
                         f"{config.in_channels}; build it with in_channels={channels}")
    if max(height, width) > config.image_size:
        raise ValueError(f"{data.name} images are {height}x{width}, larger than the model's "
                         f"{config.image_size}x{config.image_size}; build it with a larger "
                         "image_size")
    return None if height == width == config.image_size else config.image_size


def input_batches(model: nn.Module, data: ImageSet, batch_size: int, *, augment: bool = False,
                  shuffle: bool = False, seed: int = 0, limit: int | None = None,
                  device: str | torch.device | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`data.batches` shaped for `model`: padded to its image size, channels-last for CNNs.

    `device` defaults to the model's device.
    """
    target = model_device(model) if device is None else resolve_device(device)
    return batches(data, batch_size, shuffle=shuffle, augment=augment, seed=seed, device=target,
                   pad_to=pad_for(model, data), channels_last=channels_last(model),
                   limit=limit)


def calibration_batches(model: nn.Module, data: ImageSet, n: int, *, seed: int = 0,
                        augment: bool = True, batch_size: int = 500,
                        device: str | torch.device | None = None) -> list[torch.Tensor]:
    """`n` shuffled (by default augmented) training inputs, materialised as a list of batches.

    Activation matching, REPAIR and RESET iterate these several times, so they are drawn once.
    """
    if not 1 <= n <= len(data):
        raise ValueError(f"calibration needs 1..{len(data)} images of {data.name}, asked for {n}")
    return [x for x, _ in input_batches(model, data, batch_size, augment=augment, shuffle=True,
                                        seed=seed, limit=n, device=device)]


def _prepare(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Move `model` to `device` (default: where it is) and return that device."""
    target = model_device(model) if device is None else resolve_device(device)
    model.to(target)
    return target


@torch.inference_mode()
def predict(model: nn.Module, data: ImageSet, *, batch_size: int = 1000,
            device: str | torch.device | None = None, limit: int | None = None) -> torch.Tensor:
    """Logits of the first `limit` samples (all by default), in eval mode, on the CPU."""
    limit_threads()
    target = _prepare(model, device)
    with eval_mode(model):
        out = [model(x).float().cpu() for x, _ in input_batches(
            model, data, batch_size, limit=limit, device=target)]
    return torch.cat(out) if out else torch.empty(0, data.num_classes)


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageSet, *, batch_size: int = 1000,
             device: str | torch.device | None = None, limit: int | None = None) -> float:
    """Top-1 accuracy in percent on the first `limit` samples (all by default), in eval mode."""
    limit_threads()
    target = _prepare(model, device)
    correct = torch.zeros((), dtype=torch.long, device=target)
    seen = 0
    with eval_mode(model):
        for x, y in input_batches(model, data, batch_size, limit=limit, device=target):
            correct += (model(x).argmax(1) == y).sum()
            seen += len(y)
    if seen == 0:
        raise ValueError(f"nothing to evaluate: {data.name} has {len(data)} samples, "
                         f"limit={limit}")
    return 100.0 * correct.item() / seen
