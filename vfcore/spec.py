"""Permutation specs: which state-dict axes share one permutation of hidden units.

A spec maps every state-dict key to one entry per axis, in the style of Git Re-Basin (Ainsworth
et al. 2023, Sec. 3): a group name (the axis is permuted by that group), None (not permuted) or a
`Block`. Norm weights, biases and running statistics follow their channels; every layer writing
into one residual stream shares the stream's group. `features` names, per group and in forward
order, every point whose output carries that group's units after the nonlinearity (activation
matching, ZipIt! and CCA read them, see `features.read_points`); `feature_axes` gives the channel
axis of a point's output where it is not 1 (channels-last values).

Block axes. A concatenation along channels, or a C x H x W map flattened into a linear layer,
gives an axis made of several parts in a row: each part is `size` channels of one group (or of
none), each channel repeated `repeat` times in a row. Every kernel handles them: `check` and
`transform` directly, weight matching through `plain`, which splits block axes into ordinary
pieces. A Block refuses to be hashed, so code that keys maps by group name and forgets blocks
fails loudly instead of silently skipping the axis.

Specs are derived by tracing the model (`spec_for`, `vfcore.trace`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Part:
    """`size` channels of one group (None: not permuted), each repeated `repeat` times."""

    group: str | None
    size: int
    repeat: int = 1


@dataclass(frozen=True)
class Block:
    """A spec axis made of several parts in a row (a channel concatenation or a flatten).

    Deliberately unhashable: code that keys permutations by group name would otherwise skip this
    axis without notice.
    """

    parts: tuple[Part, ...]

    def __hash__(self) -> int:
        raise TypeError(f"{self} is a block axis (concatenated or flattened channels), not a "
                        "group name; map it part by part (vfcore.transform) or split the spec "
                        "into plain pieces with PermutationSpec.plain")

    @property
    def size(self) -> int:
        return sum(p.size * p.repeat for p in self.parts)


Axis = str | Block | None
Axes = tuple[Axis, ...]


def _members(entry: Axis) -> list[tuple[str, int]]:
    """The (group, channels) an axis entry permutes."""
    if entry is None:
        return []
    if isinstance(entry, Block):
        return [(p.group, p.size) for p in entry.parts if p.group is not None]
    return [(entry, -1)]


@dataclass(frozen=True)
class PermutationSpec:
    axes: dict[str, Axes]
    features: dict[str, list[str]] = field(default_factory=dict)
    feature_axes: dict[str, int] = field(default_factory=dict)

    @cached_property
    def groups(self) -> dict[str, list[tuple[str, int]]]:
        """Group name -> every (state key, axis) it permutes (wholly or as a block part)."""
        out: dict[str, list[tuple[str, int]]] = {}
        for key, axes in self.axes.items():
            for axis, entry in enumerate(axes):
                for group, _ in _members(entry):
                    out.setdefault(group, []).append((key, axis))
        return out

    @cached_property
    def has_blocks(self) -> bool:
        return any(isinstance(a, Block) for axes in self.axes.values() for a in axes)

    @cached_property
    def plain(self) -> PlainView:
        """This spec with every block axis split into plain pieces (`PlainView`)."""
        return PlainView.of(self)

    def feature_axis(self, name: str) -> int:
        """The channel axis of feature point `name`'s output (1 unless recorded otherwise)."""
        return self.feature_axes.get(name, 1)

    def check(self, state: State) -> dict[str, int]:
        """Validate a state dict against the spec; return each group's size.

        Missing or extra keys, wrong ranks, block axes of the wrong length and groups whose axes
        disagree in size are errors: a spec that does not fit the model must never produce a
        silent bad merge.
        """
        missing = sorted(set(self.axes) - set(state))
        extra = sorted(set(state) - set(self.axes))
        if missing or extra:
            raise ValueError(
                f"state dict does not fit the permutation spec: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                f"{'...' if len(extra) > 5 else ''}. Load a checkpoint of the same architecture."
            )
        sizes: dict[str, int] = {}
        for key, axes in self.axes.items():
            if state[key].dim() != len(axes):
                raise ValueError(f"{key} has shape {tuple(state[key].shape)}, spec expects rank "
                                 f"{len(axes)}")
            for axis, entry in enumerate(axes):
                n = state[key].shape[axis]
                if isinstance(entry, Block) and entry.size != n:
                    raise ValueError(f"{key} axis {axis} has {n} entries but its block axis "
                                     f"holds {entry.size}: the spec does not fit this model")
                for group, size in _members(entry):
                    size = n if size < 0 else size
                    if sizes.setdefault(group, size) != size:
                        raise ValueError(f"group {group!r} has size {sizes[group]} but {key} "
                                         f"axis {axis} has {size}: the spec does not fit this "
                                         "model")
        return sizes

    def check_pair(self, state_a: State, state_b: State) -> dict[str, int]:
        """Validate two state dicts of one architecture against the spec; return group sizes."""
        sizes, sizes_b = self.check(state_a), self.check(state_b)
        if sizes != sizes_b:
            diff = {g: (sizes[g], sizes_b[g]) for g in sizes if sizes[g] != sizes_b[g]}
            raise ValueError(f"the two state dicts have different group sizes {diff}; "
                             "are the widths the same?")
        for key, t in state_a.items():
            if t.shape != state_b[key].shape:
                raise ValueError(f"{key}: shapes {tuple(t.shape)} and "
                                 f"{tuple(state_b[key].shape)} differ; both states must come "
                                 "from one architecture")
        return sizes


def _piece_key(key: str, i: int) -> str:
    owner, _, leaf = key.rpartition(".")
    return f"{owner}[{i}].{leaf}"


@dataclass(frozen=True)
class PlainView:
    """A spec without block axes over state dicts whose block axes are cut into pieces.

    Piece `i` of key `a.b.weight` is called `a.b[i].weight` (same leaf name, so running
    variances stay recognisable); a part with repeat r > 1 becomes a piece with one more axis,
    (size, r), of which only the first is permuted. Weight matching runs on this view.
    """

    spec: PermutationSpec
    pieces: dict[str, tuple[int, tuple[Part, ...]]]

    @staticmethod
    def of(spec: PermutationSpec) -> PlainView:
        axes: dict[str, Axes] = {}
        pieces: dict[str, tuple[int, tuple[Part, ...]]] = {}
        for key, entries in spec.axes.items():
            blocks = [i for i, a in enumerate(entries) if isinstance(a, Block)]
            if len(blocks) > 1:
                raise ValueError(f"{key} has block axes {blocks}; a tensor may have at most one")
            if not blocks:
                axes[key] = entries
                continue
            at = blocks[0]
            pieces[key] = (at, entries[at].parts)
            for i, part in enumerate(entries[at].parts):
                own = (part.group,) if part.repeat == 1 else (part.group, None)
                axes[_piece_key(key, i)] = entries[:at] + own + entries[at + 1:]
        return PlainView(PermutationSpec(axes, spec.features, spec.feature_axes), pieces)

    def split(self, state: State) -> State:
        """The state's tensors with block axes cut into pieces (views of the given tensors)."""
        if not self.pieces:
            return state
        out: State = {}
        for key, t in state.items():
            if key not in self.pieces:
                out[key] = t
                continue
            axis, parts = self.pieces[key]
            start = 0
            for i, part in enumerate(parts):
                piece = t.narrow(axis, start, part.size * part.repeat)
                if part.repeat > 1:
                    piece = piece.unflatten(axis, (part.size, part.repeat))
                out[_piece_key(key, i)] = piece
                start += part.size * part.repeat
        return out


def spec_for(model: nn.Module, example_input: torch.Tensor | None = None) -> PermutationSpec:
    """The permutation spec of any traceable model, derived by tracing it (`vfcore.trace`).

    `example_input` is one batch the model accepts; vfcore's own models (and models of a class
    traced before) have a default. The result is cached per architecture.
    """
    from .trace import structure  # the tracer builds on this module's types

    return structure(model, example_input).spec
