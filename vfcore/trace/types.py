"""The values the tracer reports: its error, and the tensors that cross a cut of the network."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import Axis


class TraceError(ValueError):
    """A model whose permutation structure cannot be derived; the message names the node."""


@dataclass(frozen=True)
class Live:
    """A value crossing a cut: its graph node, its channel group (or block), its channel axis.

    `group` and `axis` are None for the network input (never permuted), for values without
    channels and for non-tensors (a shape, say).
    """

    name: str
    group: Axis
    axis: int | None


@dataclass(frozen=True)
class Cut:
    """The values live across the boundary after the first `n_preserved` weight layers.

    The boundary is the output of weight layer `boundary` before its norm and activation (the
    paper's pre-activation output of layer l, Sec. 5.4); None for n_preserved = 0, where only
    the input crosses. `boundary_value` is the index in `live` of that layer's output.
    """

    n_preserved: int
    boundary: str | None
    live: tuple[Live, ...]
    boundary_value: int | None
