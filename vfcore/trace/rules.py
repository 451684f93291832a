"""The channel rules: one run of the traced graph that follows every value's channel axis.

Every operation either moves a value's channels in a known way (a conv or linear layer starts a
group and ties its weight's input axis to its input's channels; norms, activations, pooling and
layout changes carry them; a residual add unites groups; a concatenation along channels gives a
block) or is refused with a TraceError that names the node and the operation.
"""

from __future__ import annotations

import inspect
import operator
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ..models import ChannelLayerNorm, ResidualLinear
from . import ops
from .groups import Carry, Groups, Unit, unit_size
from .ops import axis_order, describe, param_dims, reshaped
from .types import TraceError

State = dict[str, torch.Tensor]

class Analysis(fx.Interpreter):
    """Runs the traced graph once and follows every value's channel axis through it."""

    def __init__(self, gm: fx.GraphModule, state: State):
        super().__init__(gm)
        self.extra_traceback = False  # our errors name the node themselves
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}
        self.groups = Groups()
        self.carry: dict[fx.Node, Carry | None] = {}
        self.param: dict[fx.Node, tuple[str, tuple[int | None, ...]]] = {}
        self.axes: dict[str, list[Unit | None]] = {}
        self.layers: list[fx.Node] = []
        self.norms: dict[fx.Node, str | None] = {}
        self.acts: list[fx.Node] = []
        self.layout: set[fx.Node] = set()
        self.joins: set[fx.Node] = set()  # elementwise ops combining two activations (residuals)
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")

    # -- bookkeeping

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        """Modules run without their hooks: a structure may be derived in the middle of a pass
        that has hooks on the same modules (a measurement of a model REPAIR has just changed)."""
        return self.fetch_attr(target).forward(*args, **kwargs)

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.op == "placeholder":
            self.carry[n] = None
        elif n.op == "get_attr":
            if n.target in self.shapes:
                self.param[n] = (n.target, tuple(range(len(self.shapes[n.target]))))
            elif isinstance(value, torch.Tensor):
                self.carry[n] = None
        elif n.op == "output":
            for a in n.all_input_nodes:
                if self.carry.get(a) is not None:
                    self.groups.pin(self.carry[a].unit)
        else:
            self._operation(n, value)
        return value

    def fail(self, n: fx.Node, problem: str, fix: str = "", module: nn.Module | None = None):
        raise TraceError(f"cannot derive a permutation spec: node {n.name!r} "
                         f"({describe(n, module)}) {problem}" + (f"; {fix}" if fix else ""))

    def carried(self, n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if self.carry.get(a) is not None or a in self.param]

    def unify(self, a: Unit, b: Unit, n: fx.Node) -> None:
        if [(s, r) for _, s, r in a] != [(s, r) for _, s, r in b]:
            self.fail(n, f"combines channel sets of different layouts ({unit_size(a)} channels as "
                         f"{[(s, r) for _, s, r in a]} vs {[(s, r) for _, s, r in b]}, as "
                         "(channels, repeat) parts)", "combine values of the same layout")
        for (ga, _, _), (gb, _, _) in zip(a, b, strict=True):
            self.groups.union(ga, gb)

    def assign(self, key: str, axis: int, unit: Unit, n: fx.Node) -> None:
        """Tie state tensor `key`'s axis to a channel set."""
        size = self.shapes[key][axis]
        if size != unit_size(unit):
            self.fail(n, f"uses {key} (axis {axis} of size {size}) on {unit_size(unit)} channels")
        axes = self.axes.setdefault(key, [None] * len(self.shapes[key]))
        if axes[axis] is None:
            axes[axis] = unit
        else:
            self.unify(axes[axis], unit, n)

    def assign_module(self, n: fx.Node, names: tuple[str, ...], axis: int, unit: Unit) -> None:
        for name in names:
            key = f"{n.target}.{name}"
            if key in self.shapes and self.shapes[key]:
                self.assign(key, axis, unit, n)

    @staticmethod
    def first(n: fx.Node) -> fx.Node:
        return n.args[0] if n.args else next(iter(n.kwargs.values()))

    def input_carry(self, n: fx.Node, module: nn.Module | None = None) -> Carry | None:
        x = self.first(n)
        if x in self.param:
            self.fail(n, "takes a parameter as its input", "only activations can flow into it",
                      module)
        return self.carry.get(x)

    # -- dispatch

    def _operation(self, n: fx.Node, value: Any) -> None:
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        rule = self._rule(n, module)
        if not isinstance(value, torch.Tensor):
            shape_query = (n.target in ops.SHAPE_METHODS if n.op == "call_method"
                           else n.op == "call_function" and n.target in ops.SHAPE_FUNCTIONS)
            if self.carried(n) and not shape_query:
                self.fail(n, "turns channels into a non-tensor value", module=module)
            return
        if rule is None:
            if self.carried(n):
                self.fail(n, "is not an operation whose effect on channels is known",
                          "use conv/linear/norm modules, elementwise ops, pooling, reshapes "
                          "and permutes, or make this part a leaf module of a known kind",
                          module)
            if module is not None and any(True for _ in module.state_dict()):
                self.fail(n, "holds parameters that vfcore cannot assign to channels",
                          module=module)
            self.carry[n] = None
            return
        self.carry[n] = rule(n, value, module)

    def _rule(self, n: fx.Node, m: nn.Module | None) -> Callable | None:
        t = n.target
        if n.op == "call_module":
            for types, rule in ((ResidualLinear, self._residual_linear),
                                (nn.Linear, self._linear), (_ConvNd, self._conv),
                                ((_BatchNorm, _InstanceNorm, ChannelLayerNorm),
                                 self._channel_norm),
                                (nn.GroupNorm, self._group_norm), (nn.LayerNorm, self._layer_norm),
                                (ops.ACTIVATION_MODULES, self._activation),
                                (ops.ELEMENTWISE_MODULES, self._elementwise),
                                (ops.POOL_MODULES, self._pool), (nn.Upsample, self._pool),
                                ((nn.Flatten, nn.Unflatten), self._reshape)):
                if isinstance(m, types):
                    return rule
            return None
        if n.op == "call_method":
            table = ((ops.ACTIVATION_METHODS, self._activation),
                     (ops.ELEMENTWISE_METHODS, self._elementwise),
                     (ops.RESHAPE_METHODS, self._reshape),
                     (ops.AXIS_ORDER_METHODS, self._axis_order),
                     (ops.REDUCE_METHODS, self._reduce))
            return next((rule for names, rule in table if t in names), None)
        if t is operator.getitem:
            return self._getitem
        table = ((ops.ACTIVATION_FUNCTIONS, self._activation),
                 (ops.ELEMENTWISE_FUNCTIONS, self._elementwise),
                 (ops.RESHAPE_FUNCTIONS, self._reshape),
                 (ops.AXIS_ORDER_FUNCTIONS, self._axis_order), (ops.REDUCE_FUNCTIONS, self._reduce),
                 (ops.POOL_FUNCTIONS, self._pool), (ops.RESIZE_FUNCTIONS, self._pool),
                 (ops.CAT_FUNCTIONS, self._cat), (ops.NORM_FUNCTIONS, self._norm_function))
        return next((rule for names, rule in table if t in names), None)

    # -- weight layers

    def _once(self, n: fx.Node, m: nn.Module) -> None:
        if self.calls[n.target] > 1:
            self.fail(n, "is called more than once (shared weights)",
                      "give each call its own module", m)
        self.layers.append(n)

    def _conv(self, n: fx.Node, value: torch.Tensor, m: _ConvNd) -> Carry:
        if m.transposed:
            self.fail(n, "is a transposed convolution, which is not supported", module=m)
        self._once(n, m)
        c = self.input_carry(n, m)
        if c is not None and c.axis != 1:
            self.fail(n, f"convolves a value whose channels are on axis {c.axis}, not 1",
                      "permute the channels to axis 1 first", m)
        if m.groups == 1:
            out = self.groups.new(m.out_channels, n.target)
            if c is not None:
                self.assign(f"{n.target}.weight", 1, c.unit, n)
        elif m.groups == m.in_channels == m.out_channels:
            out = c.unit if c is not None else self.groups.new(m.out_channels, pinned=True)
        else:
            self.fail(n, f"is a grouped convolution (groups={m.groups}, {m.in_channels} -> "
                         f"{m.out_channels} channels); only groups=1 and depthwise (groups = "
                         "in = out channels) keep permutations within groups", module=m)
        self.assign_module(n, ("weight", "bias"), 0, out)
        return Carry(1, out)

    def _linear(self, n: fx.Node, value: torch.Tensor, m: nn.Linear) -> Carry:
        self._once(n, m)
        c = self.input_carry(n, m)
        if c is not None and c.axis != value.dim() - 1:
            self.fail(n, f"acts on the last axis but the channels are on axis {c.axis}",
                      "move the channels to the last axis first", m)
        out = self.groups.new(m.out_features, n.target)
        if c is not None:
            self.assign(f"{n.target}.weight", 1, c.unit, n)
        self.assign_module(n, ("weight", "bias"), 0, out)
        return Carry(value.dim() - 1, out)

    def _residual_linear(self, n: fx.Node, value: torch.Tensor, m: ResidualLinear) -> Carry:
        self._once(n, m)
        c = self.input_carry(n, m)
        if c is not None and c.axis != value.dim() - 1:
            self.fail(n, f"acts on the last axis but the channels are on axis {c.axis}",
                      module=m)
        unit = c.unit if c is not None else self.groups.new(m.out_features, pinned=True)
        if len(unit) > 1 or unit[0][2] > 1:
            self.fail(n, "adds its input to concatenated or flattened channels, which would "
                         "put a block on both axes of its weight", module=m)
        self.assign_module(n, ("weight", "bias"), 0, unit)
        self.assign(f"{n.target}.weight", 1, unit, n)
        return Carry(value.dim() - 1, unit)

    # -- norms and activations

    def _channel_norm(self, n: fx.Node, value: torch.Tensor, m: nn.Module) -> Carry | None:
        c = self.input_carry(n, m)
        self.norms[n] = n.target
        if c is None:
            return None
        if c.axis != 1:
            self.fail(n, f"normalises axis 1 but the channels are on axis {c.axis}", module=m)
        self.assign_module(n, ("weight", "bias", "running_mean", "running_var"), 0, c.unit)
        return c

    def _group_norm(self, n: fx.Node, value: torch.Tensor, m: nn.GroupNorm) -> Carry | None:
        self._check_groups(n, m.num_groups, m.num_channels, m)
        return self._channel_norm(n, value, m)

    def _check_groups(self, n: fx.Node, groups: int, channels: int, m: nn.Module | None) -> None:
        if groups not in (1, channels):
            self.fail(n, f"normalises {groups} groups of {channels} channels; a permutation "
                         "would move channels between groups",
                      "use num_groups=1 or num_groups=num_channels", m)

    def _layer_norm(self, n: fx.Node, value: torch.Tensor, m: nn.LayerNorm) -> Carry | None:
        c = self.input_carry(n, m)
        self.norms[n] = n.target
        k = len(m.normalized_shape)
        if c is not None and c.axis >= value.dim() - k:
            self.assign_module(n, ("weight", "bias"), c.axis - (value.dim() - k), c.unit)
        return c

    def _norm_function(self, n: fx.Node, value: torch.Tensor, m: None) -> Carry | None:
        """F.batch_norm / instance_norm / group_norm / layer_norm on parameters of the model
        (a norm module whose forward calls the function, such as a channels-first LayerNorm)."""
        signature = inspect.signature(n.target)
        bound = signature.bind(*n.args, **n.kwargs).arguments
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        concrete = signature.bind(*args, **kwargs).arguments
        kind = ops.NORM_FUNCTIONS[n.target]
        c = self.input_carry(n)
        names = ("running_mean", "running_var", "weight", "bias")
        params = [bound[k] for k in names if isinstance(bound.get(k), fx.Node)]
        if any(p not in self.param for p in params):
            self.fail(n, "normalises with statistics or affine terms that are activations")
        owners = {self.param[p][0].rpartition(".")[0] for p in params}
        self.norms[n] = min(owners) if owners else None
        if kind == "group":
            self._check_groups(n, concrete["num_groups"], value.shape[1], None)
        if c is None:
            return None
        if kind == "layer":
            k = len(concrete["normalized_shape"])
            axis = c.axis - (value.dim() - k)
            if axis < 0:
                return c
        elif c.axis != 1:
            self.fail(n, f"normalises axis 1 but the channels are on axis {c.axis}")
        else:
            axis = 0
        for p in params:
            key, dims = self.param[p]
            if dims[axis] is not None:
                self.assign(key, dims[axis], c.unit, n)
        return c

    def _activation(self, n: fx.Node, value: torch.Tensor, m: nn.Module | None) -> Carry | None:
        self.acts.append(n)
        return self._elementwise(n, value, m)

    # -- channel-preserving operations

    def _elementwise(self, n: fx.Node, value: torch.Tensor, m: nn.Module | None) -> Carry | None:
        """Broadcasting elementwise ops: channel sets on one output axis are united; a parameter
        broadcast along the channels follows them; a constant along them pins them."""
        ndim = value.dim()
        axis, unit = None, None
        inputs = [a for a in n.all_input_nodes if a in self.carry or a in self.param]
        for a in inputs:
            c = self.carry.get(a)
            if c is None:
                continue
            moved = c.axis + ndim - self.env[a].dim()
            if axis is None:
                axis, unit = moved, c.unit
            elif moved != axis:
                self.fail(n, f"combines values with channels on axes {axis} and {moved}",
                          "permute them to the same layout first", m)
            else:
                self.unify(unit, c.unit, n)
                self.joins.add(n)
        params = [a for a in inputs if a in self.param]
        if unit is None:
            if len(params) == 1 and self.env[params[0]].shape == value.shape:
                self.param[n] = self.param[params[0]]
                return None
            for a in params:
                key, dims = self.param[a]
                for d in dims:
                    if d is not None:
                        self.assign(key, d, self.groups.new(self.shapes[key][d], pinned=True), n)
            return None
        if value.shape[axis] != unit_size(unit):
            self.fail(n, f"broadcasts {unit_size(unit)} channels to {value.shape[axis]}", module=m)
        for a in inputs:
            if a not in self.param and self.carry.get(a) is not None:
                continue
            shape = self.env[a].shape
            at = axis - (ndim - len(shape))
            along = at >= 0 and shape[at] > 1
            if a in self.param:
                key, dims = self.param[a]
                if along and dims[at] is not None:
                    self.assign(key, dims[at], unit, n)
            elif along:
                self.groups.pin(unit)
        return Carry(axis, unit)

    def _pool(self, n: fx.Node, value: torch.Tensor, m: nn.Module | None) -> Carry | None:
        c = self.input_carry(n, m)
        x = self.env[self.first(n)]
        k = (ops.POOL_FUNCTIONS.get(n.target) if n.op == "call_function" else
             int(type(m).__name__[-2]) if isinstance(m, ops.POOL_MODULES) else None)
        k = x.dim() - 2 if k is None else k
        if c is not None and (c.axis >= x.dim() - k or value.dim() != x.dim()):
            self.fail(n, f"pools or resizes over axis {c.axis}, which holds the channels",
                      module=m)
        return c

    def _reshape(self, n: fx.Node, value: torch.Tensor, m: nn.Module | None) -> Carry | None:
        x = self.first(n)
        src = tuple(self.env[x].shape)
        if x in self.param:
            key, dims = self.param[x]
            mapped = param_dims(src, tuple(value.shape))
            if mapped is None:
                self.fail(n, f"reshapes parameter {key} beyond adding or removing size-1 axes")
            self.param[n] = (key, tuple(None if d is None else dims[d] for d in mapped))
            return None
        c = self.carry.get(x)
        self.layout.add(n)
        if c is None:
            return None
        moved = reshaped(src, c.axis, tuple(value.shape))
        if moved is None:
            self.fail(n, f"reshapes {tuple(src)} to {tuple(value.shape)}, splitting or mixing "
                         f"the channel axis {c.axis} with others",
                      "only reshapes that keep the channels whole (flatten after pooling, "
                      "C x H x W -> C*H*W, adding size-1 axes) can be followed", m)
        axis, repeat = moved
        return Carry(axis, tuple((g, s, r * repeat) for g, s, r in c.unit))

    def _axis_order(self, n: fx.Node, value: torch.Tensor, m: None) -> Carry | None:
        c = self.input_carry(n)
        self.layout.add(n)
        if c is None:
            return None
        kind = (ops.AXIS_ORDER_FUNCTIONS[n.target] if n.op == "call_function"
                else "transpose" if n.target == "swapaxes" else n.target)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        order = axis_order(kind, value.dim(), args[1:], kwargs)
        return Carry(order.index(c.axis), c.unit)

    def _reduce(self, n: fx.Node, value: torch.Tensor, m: None) -> Carry | None:
        c = self.input_carry(n)
        if c is None:
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        ndim = args[0].dim()
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        dims = [d % ndim for d in ([dims] if isinstance(dims, int) else dims or range(ndim))]
        if c.axis in dims:
            self.fail(n, f"reduces over the channel axis {c.axis}",
                      "reduce over other axes only (norm layers are handled as such)")
        keep = value.dim() == ndim
        return Carry(c.axis if keep else c.axis - sum(d < c.axis for d in dims), c.unit)

    def _getitem(self, n: fx.Node, value: torch.Tensor, m: None) -> Carry | None:
        x = n.args[0]
        if x in self.param:
            return self._reshape(n, value, m)
        c = self.carry.get(x) if isinstance(self.env.get(x), torch.Tensor) else None
        if c is None:
            return None
        index = self.fetch_args_kwargs_from_env(n)[0][1]
        index = index if isinstance(index, tuple) else (index,)
        if any(not (i is None or i is Ellipsis or isinstance(i, int | slice)) for i in index):
            self.fail(n, "indexes a value with channels by tensors or lists")
        ndim = self.env[x].dim()
        fill = (slice(None),) * (ndim - sum(isinstance(i, int | slice) for i in index))
        at = index.index(Ellipsis) if Ellipsis in index else len(index)
        index = index[:at] + fill + index[at + 1:]
        src = out = 0
        for i in index:
            if i is None:
                out += 1
                continue
            if src == c.axis:
                size = self.env[x].shape[src]
                if not isinstance(i, slice) or range(*i.indices(size)) != range(size):
                    self.fail(n, "selects part of the channel axis",
                              "keep every channel (slice only other axes)")
                return Carry(out, c.unit)
            out += isinstance(i, slice)
            src += 1
        raise AssertionError("the channel axis lies beyond the index")

    def _cat(self, n: fx.Node, value: torch.Tensor, m: None) -> Carry | None:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        parts = n.args[0] if n.args else n.kwargs["tensors"]
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % value.dim()
        if any(p in self.param for p in parts):
            self.fail(n, "concatenates a parameter", "only activations can be concatenated")
        axes = {self.carry[p].axis for p in parts if self.carry.get(p) is not None}
        if not axes:
            return None
        if len(axes) > 1:
            self.fail(n, f"concatenates values with channels on different axes {sorted(axes)}")
        axis = axes.pop()
        if dim != axis:
            return self._elementwise(n, value, m)
        unit: Unit = ()
        for p in parts:
            c = self.carry.get(p)
            unit += c.unit if c is not None else self.groups.new(self.env[p].shape[dim],
                                                                 pinned=True)
        return Carry(axis, unit)
