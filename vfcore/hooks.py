"""Reading and replacing intermediate tensors by module name: one mechanism for every kernel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the tensors it needs are recorded."""


def module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`, with an error that lists what exists if it does not."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"{type(model).__name__} has no module {name!r}") from None


@contextmanager
def hooked(model: nn.Module, hooks: dict[str, Callable], *, pre: bool = False,
           prepend: bool = False) -> Iterator[None]:
    """Register forward hooks `name -> fn(module, inputs, output)` for the duration of a block.

    With `pre`, they are forward pre-hooks `fn(module, inputs)`; with `prepend`, they run before
    hooks registered earlier (so a hook that replaces a tensor runs before those that read it).
    """
    def register(m: nn.Module, fn: Callable):
        if pre:
            return m.register_forward_pre_hook(fn, prepend=prepend)
        return m.register_forward_hook(fn, prepend=prepend)

    handles = [register(module(model, name), fn) for name, fn in hooks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def outputs_of(model: nn.Module, names: list[str], x: torch.Tensor,
               stop_early: bool = True) -> dict[str, torch.Tensor]:
    """The outputs of the named modules on input `x` (copies, so that in-place operations later
    in the forward pass cannot change them).

    With `stop_early`, the forward pass ends as soon as every named output has been seen.
    """
    found: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable:
        def fn(_m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            found[name] = out.clone()
            if stop_early and len(found) == len(names):
                raise StopForward
        return fn

    with hooked(model, {n: record(n) for n in names}), suppress(StopForward):
        model(x)
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"modules {missing} were not run by the forward pass")
    return found
