"""Maps of hidden units into a merged coordinate system, applied to weights and features.

An alignment gives, per permutation group of a spec, a map from one model's hidden units to the
merged model's units (`GroupMap`):

- a permutation `p` (1-D int64, length d): merged unit i is this model's unit p[i], so
  W'[i] = W[p[i]] on output axes and W'[:, j] = W[:, p[j]] on input axes;
- a dense pair (T, U) of (d, d) matrices: outputs map as T @ W (T's dim 1 contracts the output
  axis), inputs as W @ U (U's dim 0 contracts the input axis). Per-channel tensors
  (biases, norm parameters and running statistics) map like outputs, linearly: ZipIt!'s merge
  averages a merged unit's running variances as it averages its other statistics, and for a
  permutation every choice is the same.

A group missing from a map dict is left as it is (the identity). A block axis (concatenated or
flattened channels, `spec.Block`) is mapped part by part, each part by its own group's map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .spec import Axis, Block, PermutationSpec

State = dict[str, torch.Tensor]
GroupMap = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _checked_map(group: str, m: GroupMap, d: int) -> GroupMap:
    """Validate one group's map against the group size; return it in canonical form."""
    if isinstance(m, torch.Tensor):
        if m.dtype.is_floating_point or m.dtype.is_complex or m.dtype == torch.bool:
            raise ValueError(f"permutation for group {group!r} must hold integer indices, got "
                             f"{m.dtype}; pass a (T, U) pair for a dense map")
        if m.shape != (d,):
            raise ValueError(f"permutation for group {group!r} must be 1-D of length {d}, got "
                             f"shape {tuple(m.shape)}")
        p = m.long()
        if not torch.equal(p.sort().values.cpu(), torch.arange(d)):
            raise ValueError(f"the map for group {group!r} is not a permutation of 0..{d - 1} "
                             "(it repeats or misses an index)")
        return p
    if (isinstance(m, tuple) and len(m) == 2
            and all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in m)):
        if m[0].shape != (d, d) or m[1].shape != (d, d):
            raise ValueError(f"dense map (T, U) for group {group!r} must be two ({d}, {d}) "
                             f"matrices, got {tuple(m[0].shape)} and {tuple(m[1].shape)}")
        return m
    raise ValueError(f"map for group {group!r} must be an int64 permutation or a pair (T, U) of "
                     f"floating matrices, got {type(m).__name__}")


def _checked_maps(spec: PermutationSpec, maps: dict[str, GroupMap],
                  state: State) -> dict[str, GroupMap]:
    sizes = spec.check(state)
    unknown = sorted(set(maps) - set(sizes))
    if unknown:
        raise ValueError(f"maps name groups {unknown} that the spec lacks; its groups are "
                         f"{sorted(sizes)}")
    return {g: _checked_map(g, m, sizes[g]) for g, m in maps.items()}


def _map_axis(t: torch.Tensor, axis: int, m: GroupMap) -> torch.Tensor:
    """Apply one group's map to one axis of a tensor (axis 0: outputs, other axes: inputs)."""
    if isinstance(m, torch.Tensor):
        return t.index_select(axis, m.to(t.device))
    T, U = m
    mat = T if axis == 0 else U.T
    mat = mat.to(t.device, torch.float64)
    out = torch.tensordot(mat, t.to(torch.float64), dims=([1], [axis]))
    return out.movedim(0, axis).to(t.dtype)


def _map_entry(t: torch.Tensor, axis: int, entry: Axis, maps: dict[str, GroupMap],
               apply: Callable[[torch.Tensor, int, GroupMap], torch.Tensor] = _map_axis
               ) -> torch.Tensor:
    """Apply the maps to one axis whose spec entry is `entry` (a group, None or a Block)."""
    if entry is None:
        return t
    if not isinstance(entry, Block):
        return apply(t, axis, maps[entry]) if entry in maps else t
    if not any(p.group in maps for p in entry.parts):
        return t
    pieces, start = [], 0
    for part in entry.parts:
        piece = t.narrow(axis, start, part.size * part.repeat)
        start += part.size * part.repeat
        if part.group in maps:
            piece = apply(piece.unflatten(axis, (part.size, part.repeat)), axis,
                          maps[part.group]).flatten(axis, axis + 1)
        pieces.append(piece)
    return torch.cat(pieces, dim=axis)


def transform(spec: PermutationSpec, maps: dict[str, GroupMap], state: State) -> State:
    """A new state dict with every group's map applied to every axis it owns.

    Permutations index; dense maps multiply (in float64, cast back to each tensor's dtype).
    Groups absent from `maps` are untouched; block axes are mapped part by part. Tensors are
    always copied, never shared.
    """
    checked = _checked_maps(spec, maps, state)
    out: State = {}
    for key, t in state.items():
        new = t
        for axis, entry in enumerate(spec.axes[key]):
            new = _map_entry(new, axis, entry, checked)
        out[key] = t.clone() if new is t else new
    return out


def permute(spec: PermutationSpec, perms: dict[str, torch.Tensor], state: State) -> State:
    """A new state dict with each group's units permuted (`perms[g][i]`: the unit to put at i)."""
    for group, p in perms.items():
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"permute takes index tensors; group {group!r} has a "
                             f"{type(p).__name__} (use transform for dense maps)")
    return transform(spec, dict(perms), state)


def _features_axis(x: torch.Tensor, dim: int, m: GroupMap) -> torch.Tensor:
    return map_features(x, m, dim)


def _unfeatures_axis(z: torch.Tensor, dim: int, m: GroupMap) -> torch.Tensor:
    return unmap_features(z, m, dim)


def map_value(x: torch.Tensor, entry: Axis, maps: dict[str, GroupMap], dim: int) -> torch.Tensor:
    """A value whose channels (on `dim`) have the spec entry `entry`, in merged coordinates
    (`map_features` per group; a block part by part). Used for the tensors crossing a cut."""
    return _map_entry(x, dim, entry, maps, _features_axis)


def unmap_value(z: torch.Tensor, entry: Axis, maps: dict[str, GroupMap], dim: int
                ) -> torch.Tensor:
    """The inverse direction of `map_value`: merged coordinates to one model's own units."""
    return _map_entry(z, dim, entry, maps, _unfeatures_axis)


def map_features(x: torch.Tensor, m: GroupMap | None, dim: int = 1) -> torch.Tensor:
    """One model's features (units on `dim`) in merged coordinates: what `transform` does to the
    outputs of a layer, applied to the outputs themselves. Computed in x's dtype."""
    if m is None:
        return x
    if isinstance(m, torch.Tensor):
        return x.index_select(dim, m.to(x.device))
    T = m[0].to(x.device, x.dtype)
    return torch.tensordot(T, x, dims=([1], [dim])).movedim(0, dim)


def unmap_features(z: torch.Tensor, m: GroupMap | None, dim: int = 1) -> torch.Tensor:
    """Merged-coordinate features (units on `dim`) in one model's own units: what a layer of that
    model sees when `transform` has mapped its input axis, since (W U) z = W (U z).

    Permutation: the inverse permutation; dense: U applied along dim; None: z. Computed in z's
    dtype. For permutations and CCA this inverts `map_features`; for ZipIt! it copies each merged
    unit back to all of its members.
    """
    if m is None:
        return z
    if isinstance(m, torch.Tensor):
        return z.index_select(dim, m.argsort().to(z.device))
    U = m[1].to(z.device, z.dtype)
    return torch.tensordot(U, z, dims=([1], [dim])).movedim(0, dim)
