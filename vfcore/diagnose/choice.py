"""The model `--model` asks for: a built-in architecture or a callable of one's own, built for
the dataset and checked against its images before any checkpoint is loaded into it."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import dataset_shape
from ..evaluation import memory_format
from ..hooks import eval_mode
from ..models import ARCHITECTURES, build_model
from ..profiles import LINEAR_MODELS
from ..spec import spec_for
from ..trace import TraceError
from .errors import BadInput


@dataclass(frozen=True)
class ModelChoice:
    """What `--model` and its options ask for: a built-in name (`vfcore.models.ARCHITECTURES`)
    or `package.module:callable` returning an nn.Module. Unset sizes come from the checkpoint's
    vfcore metadata, else from the dataset."""

    name: str
    width: float | None = None
    in_channels: int | None = None
    num_classes: int | None = None
    image_size: int | None = None

    @property
    def builtin(self) -> bool:
        """Whether `name` is a built-in architecture rather than a callable of one's own."""
        return ":" not in self.name


def _import_callable(target: str) -> Callable[[], Any]:
    """`package.module:callable`, importable from the current directory too."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise BadInput(f"--model {target!r}: write a built-in name or package.module:callable")
    sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as err:
        raise BadInput(f"--model {target!r}: cannot import it ({err})") from err
    finally:
        sys.path.remove(os.getcwd())
    if not callable(found):
        raise BadInput(f"--model {target!r} is not callable")
    return found


def _builtin(choice: ModelChoice, shape: tuple[int, int, int], saved: dict[str, Any]
             ) -> tuple[nn.Module, str]:
    """A built-in model and its description; each size from the option, the checkpoint's saved
    configuration or the dataset, in that order."""
    if choice.name not in ARCHITECTURES:
        raise BadInput(f"unknown model {choice.name!r}: use one of {', '.join(ARCHITECTURES)}, "
                       "or package.module:callable for a model of your own")
    channels, native, classes = shape

    def pick(given: Any, key: str, default: Any) -> Any:
        return saved.get(key, default) if given is None else given

    width = pick(choice.width, "width", 1.0)
    in_channels = pick(choice.in_channels, "in_channels", channels)
    num_classes = pick(choice.num_classes, "num_classes", classes)
    image_size = pick(choice.image_size, "image_size",
                      native if choice.name in LINEAR_MODELS else max(32, native))
    try:
        model = build_model(choice.name, width=width, num_classes=num_classes,
                            in_channels=in_channels, image_size=image_size)
    except ValueError as err:
        raise BadInput(str(err)) from err
    text = (f"{choice.name} (width {width:g}, {in_channels}x{image_size}x{image_size} inputs, "
            f"{num_classes} classes)")
    return model, text


def _custom(choice: ModelChoice) -> tuple[nn.Module, str]:
    """The model a `package.module:callable` returns, and its description."""
    given = [flag for flag, value in (("--width", choice.width),
                                      ("--in-channels", choice.in_channels),
                                      ("--classes", choice.num_classes)) if value is not None]
    if given:
        raise BadInput(f"{', '.join(given)} apply to built-in models only; {choice.name} "
                       "builds the model itself")
    factory = _import_callable(choice.name)
    try:
        model = factory()
    except Exception as err:  # the user's code: report what it raised
        raise BadInput(f"--model {choice.name}: calling it raised {type(err).__name__}: {err}"
                       ) from err
    if not isinstance(model, nn.Module):
        raise BadInput(f"--model {choice.name} returned a {type(model).__name__}, not an "
                       "nn.Module")
    return model, f"{choice.name} ({type(model).__name__})"


def build(choice: ModelChoice, data: str, saved: dict[str, Any]) -> tuple[nn.Module, str, int]:
    """(model, description, the image size it takes) for `data`'s images; `saved` is the first
    checkpoint's vfcore metadata. Built-in CNNs take images zero-padded to 32x32 unless
    `choice.image_size` says otherwise; other models the dataset's own size by default."""
    shape = dataset_shape(data)
    if choice.builtin:
        model, description = _builtin(choice, shape, saved)
        return model, description, model.config.image_size
    model, description = _custom(choice)
    return model, description, choice.image_size or shape[1]


def _example(model: nn.Module, data: str, image_size: int, device: torch.device
             ) -> torch.Tensor:
    """A zero batch of `data`'s shape that `model` accepts, with one logit per class."""
    channels, _, classes = dataset_shape(data)
    config = getattr(model, "config", None)
    if config is not None and config.in_channels != channels:
        raise BadInput(f"{data} images have {channels} channel(s) but the model takes "
                       f"{config.in_channels}: pass --data with {config.in_channels}-channel "
                       "images or build the model for this dataset")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = torch.zeros(2, channels, image_size, image_size, device=device,
                    dtype=param.dtype if param is not None else None)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except Exception as err:  # any failure of the forward pass means the shapes do not fit
        raise BadInput(f"the model does not accept {data} images ({channels}x{image_size}x"
                       f"{image_size}): {type(err).__name__}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"the model's output on a batch of {data} images is {got}; vfcore needs "
                       f"(batch, {classes}) logits for the dataset's {classes} classes")
    return x


def place(model: nn.Module, description: str, data: str, image_size: int,
          device: torch.device) -> nn.Module:
    """`model` in eval mode on `device` (channels-last for CNNs), once it is known to take
    `data`'s images at `image_size`, to give one logit per class, and to trace."""
    native = dataset_shape(data)[1]
    if image_size < native:
        raise BadInput(f"{data} images are {native}x{native}, larger than the model's "
                       f"{image_size}x{image_size} inputs")
    model = model.to(device, memory_format=memory_format(model)).eval()
    example = _example(model, data, image_size, device)
    try:
        spec_for(model, example)
    except TraceError as err:
        raise BadInput(f"vfcore cannot derive the structure of {description}: {err}") from err
    return model
