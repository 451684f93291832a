"""What each operation does to channels: the tables of known operations and shape helpers.

An operation is known by its kind (activation, elementwise, reshape, axis order, reduction,
pooling, concatenation, norm) whether it is written as a module, a function or a method.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU,
                      nn.CELU, nn.SELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                      nn.Hardtanh, nn.Softplus)
ACTIVATION_FUNCTIONS = {F.relu, F.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.mish, F.elu,
                        F.celu, F.selu, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus,
                        F.sigmoid, F.tanh, torch.relu, torch.relu_, torch.sigmoid, torch.tanh}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
ELEMENTWISE_MODULES = (nn.Identity, nn.modules.dropout._DropoutNd, nn.Softmax, nn.LogSoftmax)
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs, torch.exp, torch.sqrt,
    torch.square, torch.clamp, torch.clip, torch.pow, torch.maximum, torch.minimum,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.softmax, F.log_softmax,
    torch.softmax, torch.log_softmax,
}
ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "neg", "abs",
                       "exp", "sqrt", "pow", "clamp", "clamp_", "contiguous", "clone", "detach",
                       "float", "double", "half", "to", "softmax", "log_softmax"}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                     torch.unflatten}
RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze"}
AXIS_ORDER_FUNCTIONS = {torch.permute: "permute", torch.transpose: "transpose",
                        torch.movedim: "movedim", torch.swapaxes: "transpose"}
AXIS_ORDER_METHODS = {"permute", "transpose", "movedim", "swapaxes"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
POOL_FUNCTIONS = {getattr(F, f"{kind}_pool{k}d"): k for k in (1, 2, 3)
                  for kind in ("max", "avg", "adaptive_avg", "adaptive_max")}
POOL_MODULES = tuple(getattr(nn, f"{kind}Pool{k}d") for k in (1, 2, 3)
                     for kind in ("Max", "Avg", "AdaptiveAvg", "AdaptiveMax"))
RESIZE_FUNCTIONS = {F.interpolate}
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
SHAPE_METHODS = {"size", "dim", "numel", "nelement"}
SHAPE_FUNCTIONS = {getattr, len}
NORM_FUNCTIONS = {F.batch_norm: "channel", F.instance_norm: "channel", F.group_norm: "group",
                  F.layer_norm: "layer"}


def describe(node: fx.Node, module: nn.Module | None = None) -> str:
    if node.op == "call_module":
        return f"{type(module).__name__} module {node.target!r}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    return f"{node.op} {node.target!r}"


def axis_order(kind: str, ndim: int, args: tuple, kwargs: dict) -> list[int]:
    """Which input axis each output axis of a permute, transpose or movedim comes from."""
    if kind == "permute":
        dims = kwargs.get("dims", args[0] if len(args) == 1 and not isinstance(args[0], int)
                          else args)
        return [d % ndim for d in dims]
    order = list(range(ndim))
    if kind == "transpose":
        a, b = (args + (kwargs.get("dim0"), kwargs.get("dim1")))[:2]
        order[a % ndim], order[b % ndim] = order[b % ndim], order[a % ndim]
        return order
    src, dst = (args + (kwargs.get("source"), kwargs.get("destination")))[:2]
    src = [s % ndim for s in ([src] if isinstance(src, int) else src)]
    dst = [d % ndim for d in ([dst] if isinstance(dst, int) else dst)]
    rest = iter(i for i in order if i not in src)
    placed = dict(zip(dst, src, strict=True))
    return [placed[i] if i in placed else next(rest) for i in order]


def reshaped(src: tuple[int, ...], axis: int, dst: tuple[int, ...]) -> tuple[int, int] | None:
    """Where a reshape puts channel axis `axis`, and how often each channel then repeats.

    The channels stay whole only if some output axis starts at the same flat offset and holds
    every channel as its outermost factor: prod(dst[:o]) == prod(src[:axis]) and dst[o] a
    multiple of the channel count. None if the reshape splits or interleaves the channels.
    """
    outer, size = math.prod(src[:axis]), src[axis]
    for o, n in enumerate(dst):
        if math.prod(dst[:o]) == outer and n >= size and n % size == 0:
            return o, n // size
    return None


def param_dims(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[int | None, ...] | None:
    """For a parameter reshaped only by adding or removing size-1 axes (gamma[:, None, None],
    w.view(1, -1, 1, 1)): which parameter axis each output axis is (None for size 1)."""
    keep_src = [i for i, s in enumerate(src) if s != 1]
    keep_dst = [j for j, s in enumerate(dst) if s != 1]
    if [src[i] for i in keep_src] != [dst[j] for j in keep_dst]:
        return None
    where = dict(zip(keep_dst, keep_src, strict=True))
    return tuple(where.get(j) for j in range(len(dst)))
