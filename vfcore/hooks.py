"""Running a model to read or replace intermediate tensors by module name.

One copy of each mechanism every kernel needs: eval mode for a block (`eval_mode`), the input
tensor of a batch (`batch_inputs`), forward hooks by name (`hooked`), and a forward pass that
hands named outputs to a callback and stops as soon as it has them all (`forward_until`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress

import torch
from torch import nn

Batch = torch.Tensor | tuple | list


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the tensors it needs are recorded."""


def module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`, with an error that names the model if it does not exist."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"{type(model).__name__} has no module {name!r}") from None


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Run a block with the models in eval mode, then restore every submodule's own flag."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def batch_inputs(batch: Batch) -> torch.Tensor:
    """The input tensor of a batch given as a tensor or as an (inputs, labels) pair."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a batch must be an input tensor or an (inputs, labels) pair, got "
                        f"{type(batch).__name__}")
    return x


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


def forward_until(model: nn.Module, x: torch.Tensor, names: list[str],
                  use: Callable[[str, torch.Tensor], None], *, inputs: Collection[str] = (),
                  stop: type[StopForward] = StopForward,
                  call: Callable[[], object] | None = None) -> None:
    """Run `model(x)` (or `call()`, a pass that runs model's modules some other way, such as
    part of its traced graph), handing each named module's output (its first input, for the
    names in `inputs`) to `use(name, tensor)` when it is produced, and end the pass once every
    name has been seen.

    `use` sees each tensor before any later in-place operation can change it. A module that runs
    twice in one pass is an error (its output would be ambiguous); one that never runs as well.
    `stop` lets a caller end the pass with its own StopForward subclass, so that hooks of other
    callers in the same pass keep theirs.
    """
    seen: set[str] = set()

    def reader(name: str) -> Callable:
        def fn(_m: nn.Module, args: tuple, out: torch.Tensor | None = None) -> None:
            if name in seen:
                raise RuntimeError(f"module {name!r} ran twice in one forward pass; read modules "
                                   "that are called once")
            seen.add(name)
            use(name, args[0] if out is None else out)
            if len(seen) == len(names):
                raise stop
        return fn

    outputs = {n: reader(n) for n in names if n not in inputs}
    pre = {n: reader(n) for n in names if n in inputs}
    with hooked(model, outputs), hooked(model, pre, pre=True), suppress(stop):
        if call is None:
            model(x)
        else:
            call()
    missing = [n for n in names if n not in seen]
    if missing:
        raise RuntimeError(f"modules {missing} were not run by the forward pass")


@torch.no_grad()
def outputs_of(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Copies of the named modules' outputs on input `x`; the pass stops once it has them all."""
    found: dict[str, torch.Tensor] = {}
    forward_until(model, x, names, lambda name, out: found.__setitem__(name, out.clone()))
    return found
