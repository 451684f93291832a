"""Tracing a model into a torch.fx graph, with vfcore's choice of leaf modules."""

from __future__ import annotations

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ..models import ChannelLayerNorm, ResidualLinear
from .types import TraceError

TAPS = "_taps"  # prefix of the read names of values that are not the output of a module call
_KNOWN_LAYERS = (nn.Linear, _ConvNd, _BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


class _Tracer(fx.Tracer):
    """Leaves: torch's own modules, vfcore's channel LayerNorm and residual linear, and user
    subclasses of the layers the channel rules understand that keep torch's forward."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if isinstance(m, ChannelLayerNorm | ResidualLinear):
            return True
        if isinstance(m, _KNOWN_LAYERS):
            owner = next(c for c in type(m).__mro__ if "forward" in vars(c))
            return owner.__module__.startswith("torch.nn")
        return super().is_leaf_module(m, qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """`model` as an fx graph module with exactly one input; TraceError if it cannot be traced."""
    if hasattr(model, TAPS):
        raise TraceError(f"{type(model).__name__} has an attribute {TAPS!r}, the prefix vfcore "
                         "uses for read points that are not module outputs; rename it")
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}. "
            "Make forward free of data-dependent Python control flow (or move such code into a "
            "leaf module) so that it can be traced symbolically"
        ) from err
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceError(f"{type(model).__name__}.forward takes {len(placeholders)} inputs; "
                         "vfcore needs a model with exactly one input tensor")
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
