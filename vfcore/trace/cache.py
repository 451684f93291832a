"""Deriving a model's structure once per architecture, with a default example input.

Tracing costs a forward pass and a graph analysis, and the studies call kernels thousands of
times, so structures are cached by `models.architecture` (the model's class, its modules, its
state dict's keys and shapes). A model built by `vfcore.build_model` is traced on a zero batch of
its configured input shape; any other model needs one example batch the first time its class is
traced (`spec_for(model, example_input)`); later models of that class reuse the sample shape.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..models import ModelConfig, architecture
from .assemble import structure_of
from .structure import Structure

CACHE_SIZE = 64
_cache: OrderedDict[tuple, Structure] = OrderedDict()
_samples: dict[type, tuple[int, ...]] = {}


def zero_batch(model: nn.Module, n: int = 2) -> torch.Tensor:
    """A zero batch of n inputs for `model`: of its configured shape for vfcore's own models,
    else of the sample shape its class was last traced with (in the model's dtype and device).
    """
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        shape = (config.in_channels, config.image_size, config.image_size)
    elif type(model) in _samples:
        shape = _samples[type(model)]
    else:
        raise ValueError(
            f"vfcore cannot guess an input for {type(model).__name__}: derive its structure once "
            "with vfcore.spec_for(model, example_input), example_input a batch the model accepts; "
            "every kernel then reuses it for models of this class")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype, device = (param.dtype, param.device) if param is not None else (None, None)
    return torch.zeros((n, *shape), dtype=dtype, device=device)


def structure(model: nn.Module, example_input: torch.Tensor | None = None) -> Structure:
    """The `Structure` of `model`'s architecture, traced on first use and cached.

    `example_input` (one batch the model accepts) is needed only the first time a class that
    vfcore did not build is traced. Raises TraceError, naming the node and the operation, for a
    model whose structure cannot be derived.
    """
    key = architecture(model)
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    if isinstance(example_input, torch.Tensor) and example_input.dim() >= 2:
        _samples[type(model)] = tuple(example_input.shape[1:])
    derived = structure_of(model, zero_batch(model) if example_input is None else example_input)
    _cache[key] = derived
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return derived
