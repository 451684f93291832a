"""What the kernels know about one architecture, and running its graph piece by piece.

A `Structure` is derived once per architecture (`vfcore.trace.structure`) and serves every model
of it: it holds no model, only the traced graph. `run` executes that graph on a given model's own
submodules from one cut to another, so forward hooks by module name see every call (those of
modules the tracer went through fire at their output); Preserve-First Merging (Sec. 5.4 of the
paper), partial zipping and REPAIR's cached passes are built on it.
`read` hands named intermediate values to a callback and stops as soon as it has them all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..spec import PermutationSpec
from .tracer import TAPS
from .types import Cut, Live

Segment = tuple[list[fx.Node], dict[fx.Node, list[fx.Node]], tuple[fx.Node, ...] | None]


def _fire_hooks(module: nn.Module, output: Any) -> Any:
    """Run the forward hooks of a module the tracer went through, at its output, as calling it
    would (without its inputs, which the graph no longer has as one tuple); a hook's return
    value replaces the output. Forward hooks by module name thus see every module."""
    for key, hook in list(module._forward_hooks.items()):
        if key in module._forward_hooks_with_kwargs:
            result = hook(module, (), {}, output)
        else:
            result = hook(module, (), output)
        if result is not None:
            output = result
    return output


class _AllRead(Exception):
    """Ends a `read` pass once every requested value has been handed over."""


@dataclass(frozen=True)
class Structure:
    """One architecture's permutation spec and the structural facts the kernels need.

    - `spec`: axes of every state-dict key (a group name, None or a Block per axis;
      `num_batches_tracked` has `()`), and per group every read point carrying its units after
      the nonlinearity, in forward order. A read point is the name of a module called once per
      forward pass, or `_taps.<node>` for any other value of the graph (a function such as
      `F.relu`, or a module called twice); `read` accepts both.
    - `layers`: every conv/linear module, in forward order.
    - `weight_layers`: the L conv/linear modules the paper counts, in forward order: the longest
      path from input to output, counted in weight layers (ties: the branch whose layer runs
      first); ResNet shortcut convolutions are not on it. `side_layers`: the other conv/linear
      modules. `head`: the last weight layer.
    - `layer_axes[layer]`: the channel axis of a conv/linear output (1, or the last axis of a
      linear layer on channels-last values). `norm_after[layer]`: the norm applied to its output
      (through layout changes such as a permute to channels-last), or None.
    - `repair_layers`: where REPAIR corrects (App. A.3): every weight layer but the head, or, in a
      network with residual joins, the weight layers inside a residual branch (a ResNet's block
      convolutions, not its stem).
    - `bias_depths[layer]`: the 1-based depth of a layer for Bias Calibration: a weight layer's
      index; a side layer takes the depth of the path it joins (a shortcut: its block's last
      convolution).
    """

    spec: PermutationSpec
    layers: list[str]
    weight_layers: list[str]
    side_layers: list[str]
    layer_axes: dict[str, int]
    norm_after: dict[str, str | None]
    head: str
    repair_layers: list[str]
    bias_depths: dict[str, int]
    _graph: fx.Graph = field(repr=False, compare=False)
    _values: dict[str, Live] = field(repr=False, compare=False)
    _layer_nodes: dict[str, str] = field(repr=False, compare=False)
    _modules_once: dict[str, str] = field(repr=False, compare=False)
    _exits: dict[str, list[str]] = field(repr=False, compare=False)
    _constants: dict[str, Any] = field(repr=False, compare=False)
    _nodes: dict[str, fx.Node] = field(init=False, repr=False, compare=False)
    _cuts: dict[int, Cut] = field(default_factory=dict, repr=False, compare=False)
    _segments: dict[tuple[int, int | None], Segment] = field(
        default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_nodes", {node.name: node for node in self._graph.nodes})

    # -- cuts

    def _check_n(self, n_preserved: int) -> None:
        n_layers = len(self.weight_layers)
        if isinstance(n_preserved, bool) or not isinstance(n_preserved, int) or not (
                0 <= n_preserved <= n_layers):
            raise ValueError(f"the number of preserved layers must be an integer in "
                             f"[0, {n_layers}], got {n_preserved!r}")

    def _boundary(self, n_preserved: int) -> int:
        """Index of the boundary node: weight layer n's call, or the input for n = 0."""
        nodes = list(self._graph.nodes)
        if n_preserved == 0:
            return next(i for i, node in enumerate(nodes) if node.op == "placeholder")
        return nodes.index(self._nodes[self._layer_nodes[self.weight_layers[n_preserved - 1]]])

    def cut(self, n_preserved: int) -> Cut:
        """The values live across the boundary after the first `n_preserved` weight layers:
        those computed from the input at or before the boundary node (in forward order) and
        used after it. Parameters and constants are not live: every piece reads its own."""
        self._check_n(n_preserved)
        if n_preserved not in self._cuts:
            nodes = list(self._graph.nodes)
            b = self._boundary(n_preserved)
            order = {node: i for i, node in enumerate(nodes)}
            live = tuple(self._values[node.name] for node in nodes[:b + 1]
                         if node.name in self._values and any(order[u] > b for u in node.users))
            boundary = self.weight_layers[n_preserved - 1] if n_preserved else None
            at = (None if boundary is None else
                  [v.name for v in live].index(self._layer_nodes[boundary]))
            self._cuts[n_preserved] = Cut(n_preserved, boundary, live, at)
        return self._cuts[n_preserved]

    # -- running the graph

    def _segment(self, start: int, stop: int | None) -> Segment:
        """The nodes from cut `start` to cut `stop` (None: the output), the values each node
        is the last user of, and the live nodes at `stop` (None: the output node's)."""
        key = (start, stop)
        if key not in self._segments:
            nodes = list(self._graph.nodes)
            b, e = self._boundary(start), (len(nodes) - 1 if stop is None
                                           else self._boundary(stop))
            if e < b:
                raise ValueError(f"cannot run from cut {start} back to cut {stop}")
            # parameters and constants computed before the start are computed again
            run = [node for node in nodes[:b + 1]
                   if node.name not in self._values and node.op != "output"]
            run += [node for node in nodes[b + 1:e + 1] if node.op != "output"]
            outputs = None if stop is None else tuple(
                self._nodes[v.name] for v in self.cut(stop).live)
            keep = set(outputs or ())
            last: dict[fx.Node, fx.Node] = {}
            for node in (run + [nodes[-1]]) if stop is None else run:
                for a in node.all_input_nodes:
                    last[a] = node
            frees: dict[fx.Node, list[fx.Node]] = {}
            for value, user in last.items():
                if value not in keep:
                    frees.setdefault(user, []).append(value)
            self._segments[key] = (run, frees, outputs)
        return self._segments[key]

    def run(self, model: nn.Module, values: Sequence[Any], *, start: int = 0,
            stop: int | None = None) -> Any:
        """Run `model`'s graph from cut `start` (whose live values are `values`; for 0, the
        input) to cut `stop`: its live values as a tuple, or for None the model's output.

        The model's own submodules are called (so hooks on them fire); the model must have the
        architecture this structure was derived from.
        """
        self._check_n(start)
        if stop is not None:
            self._check_n(stop)
        run, frees, outputs = self._segment(start, stop)
        starts = self.cut(start).live
        if len(values) != len(starts):
            raise ValueError(f"cut {start} has {len(starts)} live values, got {len(values)}")
        env = {self._nodes[v.name]: t for v, t in zip(starts, values, strict=True)}
        self._execute(model, run, frees, env)
        if outputs is None:
            return fx.node.map_arg(list(self._graph.nodes)[-1].args[0], env.__getitem__)
        return tuple(env[node] for node in outputs)

    def read(self, model: nn.Module, x: torch.Tensor, names: Collection[str],
             use: Callable[[str, Any], None]) -> None:
        """Run `model` on x, handing each named value to `use(name, value)` as soon as it is
        computed (before any later in-place operation), and stop once all have been handed over.

        A name is a read point of `spec.features`, a module called once per forward pass, or
        `_taps.<node>` for any value of the graph.
        """
        wanted = {self.read_node(name): name for name in names}
        left = set(wanted)

        def on(node: fx.Node, value: Any) -> None:
            if node in wanted:
                use(wanted[node], value)
                left.discard(node)
                if not left:
                    raise _AllRead

        run, frees, _ = self._segment(0, None)
        env = {self._nodes[self.cut(0).live[0].name]: x}
        try:
            self._execute(model, run, frees, env, on)
        except _AllRead:
            return
        raise ValueError(f"{sorted(wanted[n] for n in left)} are not computed from the input")

    def prefix_targets(self, n_preserved: int) -> tuple[list[str], list[str]]:
        """The modules called and the attributes read (parameters, buffers) by the piece before
        cut `n_preserved`, in forward order: what the preserved layers of PFM hold."""
        self._check_n(n_preserved)
        run, _, _ = self._segment(0, n_preserved)
        return ([node.target for node in run if node.op == "call_module"],
                [node.target for node in run if node.op == "get_attr"])

    def layers_before(self, n_preserved: int) -> set[str]:
        """The conv/linear layers computed at or before the boundary of cut `n_preserved`."""
        called = set(self.prefix_targets(n_preserved)[0])
        return {name for name in self._layer_nodes if name in called}

    def cut_before(self, layer: str) -> int | None:
        """The last cut whose boundary comes before `layer` runs: from there on, a pass reaches
        the layer without recomputing anything earlier (None for a module the graph never
        calls as a layer)."""
        if layer not in self._layer_nodes:
            return None
        nodes = list(self._graph.nodes)
        at = nodes.index(self._nodes[self._layer_nodes[layer]])
        return max(n for n in range(len(self.weight_layers) + 1) if self._boundary(n) < at)

    def read_node(self, name: str) -> fx.Node:
        """The graph node whose value the read point `name` is."""
        if name.startswith(f"{TAPS}.") and name[len(TAPS) + 1:] in self._nodes:
            return self._nodes[name[len(TAPS) + 1:]]
        if name in self._modules_once:
            return self._nodes[self._modules_once[name]]
        raise ValueError(f"{name!r} is not a read point of this model: name a module that runs "
                         f"once per forward pass or a value `{TAPS}.<node>` of its graph")

    def _execute(self, model: nn.Module, run: list[fx.Node], frees: dict[fx.Node, list[fx.Node]],
                 env: dict[fx.Node, Any], on: Callable[[fx.Node, Any], None] | None = None
                 ) -> None:
        device = next((t.device for t in env.values() if isinstance(t, torch.Tensor)), None)
        for node in run:
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "get_attr":
                value = self._attribute(model, node.target, device)
            elif node.op == "call_module":
                value = model.get_submodule(node.target)(*args, **kwargs)
            elif node.op == "call_function":
                value = node.target(*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                raise AssertionError(f"unexpected node {node.op} {node.name}")
            for path in self._exits.get(node.name, ()):
                value = _fire_hooks(model.get_submodule(path), value)
            env[node] = value
            if on is not None:
                on(node, value)
            for done in frees.get(node, ()):
                env.pop(done, None)

    def _attribute(self, model: nn.Module, target: str, device: torch.device | None) -> Any:
        if target in self._constants:  # a tensor that tracing stored on the traced module
            value = self._constants[target]
            return value.to(device) if isinstance(value, torch.Tensor) and device else value
        owner, _, name = target.rpartition(".")
        return getattr(model.get_submodule(owner) if owner else model, name)
