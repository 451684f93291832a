"""Channel groups: a union-find over the channel sets that one permutation must move together.

A conv or linear output starts a group; a residual add unites the groups it combines (so a
ResNet stage's stream becomes one group); a group that touches the network input, its output or
a constant along the channels is pinned (never permuted). A value's channels are a `Unit`: one or
more parts (group id, channels, repeat) in a row, more than one after a concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import Axis, Block, Part

UnitPart = tuple[int, int, int]  # (group id, channels, repeat)
Unit = tuple[UnitPart, ...]


def unit_size(unit: Unit) -> int:
    return sum(s * r for _, s, r in unit)


@dataclass(frozen=True)
class Carry:
    """Where a value holds its channels (`axis`) and which groups they belong to (`unit`)."""

    axis: int
    unit: Unit


class Groups:
    """Union-find over channel groups. A group is named after the layer that created its oldest
    member; a pinned group is never permuted."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pinned: list[bool] = []
        self.origin: list[str | None] = []

    def new(self, size: int, origin: str | None = None, pinned: bool = False) -> Unit:
        self.parent.append(len(self.parent))
        self.pinned.append(pinned)
        self.origin.append(origin)
        return ((len(self.parent) - 1, size, 1),)

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = sorted((self.find(a), self.find(b)))
        if ra != rb:
            self.parent[rb] = ra
            self.pinned[ra] = self.pinned[ra] or self.pinned[rb]

    def pin(self, unit: Unit) -> None:
        for g, _, _ in unit:
            self.pinned[self.find(g)] = True

    def name(self, g: int) -> str | None:
        root = self.find(g)
        return None if self.pinned[root] else self.origin[root]

    def resolve(self, unit: Unit | None) -> Axis:
        """The spec entry of a unit: a group name, None (not permuted) or a Block."""
        if unit is None:
            return None
        parts = tuple(Part(self.name(g), s, r) for g, s, r in unit)
        if all(p.group is None for p in parts):
            return None
        if len(parts) == 1 and parts[0].repeat == 1:
            return parts[0].group
        return Block(parts)
