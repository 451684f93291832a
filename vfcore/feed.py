"""Calibration passes that start where the last one left off: the layer-by-layer kernels
(REPAIR / RESCALE, RegMean and Chain of Merges) read one layer at a time, in forward order, and
would otherwise run every batch from the input for every layer.

A pass that reads a layer can cache, on the way, the values live at a cut of the traced graph
before that layer (`Structure.cut_before`). Once every layer before that cut is final, later passes
start there (`Structure.run`), so a sweep over the layers costs about two forward passes per
batch instead of one per layer. The cache is kept only while it fits in `max_cache_bytes`; past
that every pass starts from the input, which gives the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from functools import partial

import torch
from torch import nn

from .device import model_device
from .hooks import Batch, batch_inputs, forward_until
from .stats import Moments
from .trace import Structure

Stats = tuple[torch.Tensor, torch.Tensor]


def _copy(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value


class Feed:
    """Runs calibration batches through one model, from the input or from a cut's cached values.

    Cached values are copied before each use, as the graph may change them in place. The caller
    runs every pass of one feed in the same train/eval mode, without gradients, and changes no
    layer before a cut while later passes still start from it.
    """

    def __init__(self, model: nn.Module, batches: Iterable[Batch], max_cache_bytes: int = 0,
                 traced: Structure | None = None):
        self.model, self.batches, self.max_cache_bytes = model, batches, max_cache_bytes
        self.traced = traced
        self.device = model_device(model)
        self.start = 0
        self.cache: list[tuple] = []

    def _values(self, i: int, x: torch.Tensor, cut: int) -> tuple:
        """The values live at `cut` on batch i, from the cache when it lies at or before it."""
        if self.cache and self.start <= cut:
            values, start = tuple(_copy(v) for v in self.cache[i]), self.start
        else:
            values, start = (x,), 0
        if start == cut:
            return values
        return self.traced.run(self.model, values, start=start, stop=cut)

    def each(self, names: list[str], use: Callable[[str, torch.Tensor], None],
             cut: int | None = None, *, inputs: Collection[str] = ()) -> Iterator[int]:
        """One pass per batch that hands the named modules' outputs (their first input, for the
        names in `inputs`) to `use` and stops once it has them all; yields the batch's index after
        each pass, so that passes through several models can go batch by batch together.

        `cut` is a cut of the traced graph before the named values whose preceding layers are
        final: passes start from its values, which are cached (if they fit) for later passes.
        """
        caching = cut is not None and self.traced is not None and self.max_cache_bytes > 0
        captured: list[tuple] | None = [] if caching and cut != self.start else None
        captured_bytes = 0
        n_batches = 0
        for i, batch in enumerate(self.batches):
            n_batches += 1
            x = batch_inputs(batch).to(self.device)
            call = None
            if caching:
                values = self._values(i, x, cut)
                if captured is not None:
                    captured.append(tuple(_copy(v) for v in values))
                    captured_bytes += sum(v.nbytes for v in captured[-1]
                                          if isinstance(v, torch.Tensor))
                    if captured_bytes > self.max_cache_bytes:
                        captured = None
                call = partial(self.traced.run, self.model, values, start=cut)
            forward_until(self.model, x, names, use, inputs=inputs, call=call)
            yield i
        if n_batches == 0:
            raise ValueError("batches is empty; give at least one calibration batch")
        if captured is not None:
            self.start, self.cache = cut, captured

    def stats(self, names: list[str], cut: int | None = None,
              axes: dict[str, int] | None = None) -> dict[str, Stats]:
        """Per-channel mean and population std (float64) of the named outputs, channels on
        `axes[name]` (default 1), over every batch; `cut` as for `each`."""
        axes = axes or {}
        acc = {name: Moments() for name in names}

        def use(name: str, out: torch.Tensor) -> None:
            acc[name].add(out.movedim(axes.get(name, 1), 1))

        for _ in self.each(names, use, cut):
            pass
        return {name: (a.mean, a.std) for name, a in acc.items()}
