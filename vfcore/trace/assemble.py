"""Assembling a `Structure` from one analysed run of the traced graph.

From the channel groups of every value (`rules.Analysis`) this derives the permutation spec with
its feature read points, the paper's L weight layers (the longest path in weight layers), the
side layers, the norm after each layer, the layers REPAIR corrects and the depth of each bias.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..device import model_device
from ..hooks import eval_mode
from ..spec import Axis, PermutationSpec
from .rules import Analysis
from .structure import Structure
from .tracer import TAPS, trace
from .types import Live, TraceError


def _longest_path(graph: fx.Graph, layers: list[fx.Node]
                  ) -> tuple[list[fx.Node], dict[fx.Node, int]]:
    """The weight layers on the input-to-output path with the most weight layers, and for every
    node reached from the input the number of weight layers on its longest path from it."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    weight = set(layers)
    best: dict[fx.Node, tuple[int, fx.Node | None]] = {}
    for node in graph.nodes:
        preds = [a for a in node.all_input_nodes if a in best]
        if node.op != "placeholder" and not preds:
            continue
        top = max((best[a][0] for a in preds), default=0)
        via = min((a for a in preds if best[a][0] == top), key=order.get, default=None)
        best[node] = (top + (node in weight), via)
    path, node = [], next(n for n in graph.nodes if n.op == "output")
    while node is not None:
        if node in weight:
            path.append(node)
        node = best[node][1]
    return path[::-1], {node: count for node, (count, _) in best.items()}


def _norm_after(layer: fx.Node, analysis: Analysis) -> str | None:
    """The norm consuming a layer's output, possibly after single-use layout changes."""
    node = layer
    while True:
        norm = next((u for u in node.users if u in analysis.norms), None)
        if norm is not None:
            return analysis.norms[norm]
        users = list(node.users)
        if len(users) != 1 or users[0] not in analysis.layout:
            return None
        node = users[0]


def _features(analysis: Analysis) -> dict[str, list[fx.Node]]:
    """Per group, every node whose output carries exactly its units, in forward order:
    activations, or (for groups with none, as in linear nets) weight-layer and norm outputs."""
    def single(node: fx.Node) -> str | None:
        c = analysis.carry.get(node)
        if c is None or len(c.unit) != 1 or c.unit[0][2] != 1:
            return None
        return analysis.groups.name(c.unit[0][0])

    acts, others = set(analysis.acts), set(analysis.layers) | set(analysis.norms)
    chosen: dict[str, list[fx.Node]] = {}
    fallback: dict[str, list[fx.Node]] = {}
    for node in analysis.module.graph.nodes:
        group = single(node)
        if group is not None and (node in acts or node in others):
            (chosen if node in acts else fallback).setdefault(group, []).append(node)
    rank = {node.target: i for i, node in enumerate(analysis.layers)}
    return {g: chosen.get(g) or fallback[g] for g in sorted({*chosen, *fallback}, key=rank.get)}


def _descendants(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), [node]
    while todo:
        for user in todo.pop().users:
            if user not in seen:
                seen.add(user)
                todo.append(user)
    return seen


def _repair_layers(path: list[fx.Node], analysis: Analysis, values: set[fx.Node]) -> list[str]:
    """Every weight layer but the head; with residual joins, those inside a residual branch.

    A layer is inside a branch when some join it reaches also has an activation input that does
    not come from it: the ResNet block convolutions, not the stem (which feeds both sides of every
    join), as the paper repairs ResNet20 (App. A.3).
    """
    body = path[:-1]
    if not analysis.joins:
        return [node.target for node in body]
    inside = []
    for node in body:
        below = _descendants(node)
        if any(a in values and a is not node and a not in below
               for join in analysis.joins & below for a in join.all_input_nodes):
            inside.append(node.target)
    return inside


def _bias_depths(path: list[fx.Node], analysis: Analysis, best: dict[fx.Node, int],
                 values: set[fx.Node]) -> dict[str, int]:
    """Depth of each layer for Bias Calibration: a weight layer's 1-based index; a side layer
    the weight-layer count of the longest path into the first node where its output meets
    another activation (a shortcut conv: its block's conv2)."""
    depths = {node.target: i for i, node in enumerate(path, start=1)}
    for layer in analysis.layers:
        if layer in path:
            continue
        below = _descendants(layer)
        meet = next((node for node in analysis.module.graph.nodes if node in below and any(
            a in values and a is not layer and a not in below for a in node.all_input_nodes)),
            layer)
        depths[layer.target] = best[meet]
    return depths


def _exits(graph: fx.Graph, calls: dict[str, int]) -> dict[str, list[str]]:
    """Node name -> the modules the tracer went through (not called as leaves) whose forward
    ends there: the last node traced inside each, so their forward hooks can fire there.
    Modules called more than once (marked `name@k` by the tracer) are left out."""
    last: dict[str, str] = {}
    for node in graph.nodes:
        for path in node.meta.get("nn_module_stack", {}):
            if path and path not in calls and "@" not in path:
                last[path] = node.name
    out: dict[str, list[str]] = {}
    for path, name in last.items():
        out.setdefault(name, []).append(path)
    return out


def structure_of(model: nn.Module, example_input: torch.Tensor) -> Structure:
    """Trace `model` on `example_input` (one batch it accepts) and derive its `Structure`.

    Raises TraceError, naming the node and the operation, for what cannot be traced or permuted
    exactly. The model's parameters, statistics and train/eval modes are left as they were.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ValueError("example_input must be a batched tensor (N, ...), e.g. one batch of "
                         "inputs of the model")
    gm = trace(model)
    state = model.state_dict()
    analysis = Analysis(gm, state)
    with eval_mode(model), torch.no_grad():  # eval: BN statistics must not move
        try:
            analysis.run(example_input.to(model_device(model)))
        except TraceError:
            raise
        except Exception as err:
            raise ValueError(f"{type(model).__name__} failed on example_input of shape "
                             f"{tuple(example_input.shape)}: {type(err).__name__}: {err}; pass "
                             "a batch the model accepts") from err
    groups = analysis.groups
    graph = gm.graph
    path, best = _longest_path(graph, analysis.layers)
    if not path:
        raise TraceError(f"{type(model).__name__} has no conv or linear layer between its input "
                         "and its output: there is nothing to permute")

    axes: dict[str, tuple[Axis, ...]] = {}
    for key, t in state.items():
        units = analysis.axes.get(key, [None] * t.dim())
        axes[key] = tuple(groups.resolve(u) for u in units)
    once = {node.target: node.name for node in graph.nodes
            if node.op == "call_module" and analysis.calls[node.target] == 1}
    chosen = _features(analysis)
    names = {node: node.target if node.target in once and node.op == "call_module"
             else f"{TAPS}.{node.name}" for nodes in chosen.values() for node in nodes}
    spec = PermutationSpec(
        axes, {g: [names[node] for node in nodes] for g, nodes in chosen.items()},
        {names[node]: analysis.carry[node].axis for node in names})

    values: dict[str, Live] = {}
    for node in graph.nodes:
        if node.op == "placeholder" or (node.op != "output" and any(
                a.name in values for a in node.all_input_nodes)):
            c = analysis.carry.get(node)
            values[node.name] = Live(node.name, groups.resolve(c.unit) if c else None,
                                     c.axis if c else None)
    inputs = {node for node in graph.nodes if node.name in values}
    copy = fx.Graph()  # the structure must not keep the traced model's modules alive
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        env[node] = copy.node_copy(node, env.__getitem__)
    return Structure(
        spec=spec,
        layers=[node.target for node in analysis.layers],
        weight_layers=[node.target for node in path],
        side_layers=[node.target for node in analysis.layers if node not in path],
        layer_axes={node.target: analysis.carry[node].axis for node in analysis.layers},
        norm_after={node.target: _norm_after(node, analysis) for node in analysis.layers},
        head=path[-1].target,
        repair_layers=_repair_layers(path, analysis, inputs),
        bias_depths=_bias_depths(path, analysis, best, inputs),
        _graph=copy,
        _values=values,
        _layer_nodes={node.target: node.name for node in analysis.layers},
        _modules_once=once,
        _exits=_exits(graph, analysis.calls),
        _constants={node.target: _attribute(gm, node.target) for node in graph.nodes
                    if node.op == "get_attr" and not _owns(model, node.target)},
    )


def _owns(model: nn.Module, target: str) -> bool:
    """Whether a dotted attribute path exists on the model (a parameter or buffer) rather than
    only on the traced module (a constant that tracing created)."""
    owner, _, name = target.rpartition(".")
    try:
        return hasattr(model.get_submodule(owner) if owner else model, name)
    except AttributeError:
        return False


def _attribute(root: nn.Module, target: str) -> object:
    owner, _, name = target.rpartition(".")
    value = getattr(root.get_submodule(owner) if owner else root, name)
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
