"""A pretend second device on a CPU-only machine, to catch kernels that ignore the model's device.

Inside `FakeCuda()`, moving a tensor or a model to "cuda" gives a CPU tensor whose storage is
tagged as living on cuda:0: `.device` and `.is_cuda` report cuda, factory functions given
`device="cuda"` make tagged tensors, and every operation on a tagged tensor gives tagged results.
What real CUDA refuses is refused here too, with the operation's name: combining tagged with
untagged tensors (CPU scalars of zero dimensions excepted, as in torch), and `.numpy()` of a
tagged tensor. So a factory call inside a kernel that forgets `device=` (`torch.ones(n)`) makes an
untagged tensor, and the first operation that mixes it with the model's tensors fails, exactly
where it would fail on a GPU; one that is only stored shows as a buffer whose `.device` is the
CPU. Tags live on storages, so views, `.data`, deep copies and parameters rebuilt from a
tensor's data keep them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda", 0)
_TAG = "_vfcore_fake_cuda"
_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}
# queries about two tensors and swapping a parameter's data are legal across devices
_MIXING_ALLOWED = {torch._has_compatible_shallow_copy_type, torch.Tensor.data.__set__}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}  # CPU indices are legal


class DeviceMismatch(RuntimeError):
    """A kernel combined tensors of two devices, or read a device tensor into numpy."""


def _flat(value: Any) -> list[torch.Tensor]:
    """The tensors in a value, looking into tuples and lists (not dicts: deepcopy's memo)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _flat(v)]
    return []


def _tagged(t: torch.Tensor) -> bool:
    return getattr(t.untyped_storage(), _TAG, False)


def _tag(result: Any, on: bool) -> None:
    for t in _flat(result):
        if t.layout == torch.strided:
            setattr(t.untyped_storage(), _TAG, on)


def _target(args: tuple, kwargs: dict) -> torch.device | None:
    """The device a `.to(...)` call moves to (None: a dtype-only conversion)."""
    for a in (*args[1:], kwargs.get("device"), kwargs.get("other")):
        if isinstance(a, torch.Tensor):
            return CUDA if _tagged(a) else a.device
        if isinstance(a, str | torch.device):
            return torch.device(a)
    return None


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", getattr(func, "__name__", str(func)))


class FakeCuda(TorchFunctionMode):
    """The mode: `with FakeCuda(): model = model.to("cuda"); ...` on a machine without CUDA."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == torch.Tensor.device.__get__:
            return CUDA if _tagged(args[0]) else func(*args)
        if func == torch.Tensor.is_cuda.__get__:
            return _tagged(args[0])
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and _tagged(args[0]):
            raise DeviceMismatch(f"{_name(func)}() of a cuda tensor: call .cpu() first")
        if func in _MOVES:
            return self._move(func, args, kwargs)
        if func is torch.Tensor.copy_:  # the destination keeps its device
            return func(*args, **kwargs)
        self._check(func, args, kwargs)
        on_device = "device" in kwargs and kwargs["device"] is not None and torch.device(
            kwargs["device"]).type == "cuda"
        if on_device:
            kwargs["device"] = "cpu"
        inputs = _flat(args) + _flat(list(kwargs.values()))
        result = func(*args, **kwargs)
        if on_device or any(_tagged(t) for t in inputs):
            _tag(result, True)
        return result

    @staticmethod
    def _check(func: Any, args: tuple, kwargs: dict) -> None:
        if func in _MIXING_ALLOWED:
            return
        checked = (args[:1] + args[2:]) if func in _INDEXING else args
        tensors = _flat(checked) + _flat(list(kwargs.values()))
        tagged = [t for t in tensors if _tagged(t)]
        plain = [t for t in tensors if not _tagged(t) and t.dim() > 0]
        if tagged and plain:
            raise DeviceMismatch(f"{_name(func)} combines cuda tensors with cpu tensors of "
                                 f"shapes {[tuple(t.shape) for t in plain]}: a tensor was made "
                                 "without the model's device")

    @staticmethod
    def _move(func: Any, args: tuple, kwargs: dict) -> Any:
        source = args[0]
        if func is torch.Tensor.cuda:
            target = CUDA
        elif func is torch.Tensor.cpu:
            target = torch.device("cpu")
        else:
            target = _target(args, kwargs)
        if target is None:
            result = func(*args, **kwargs)
            _tag(result, _tagged(source))
            return result
        moving = _tagged(source) != (target.type == "cuda")
        if func is torch.Tensor.to:
            args = tuple("cpu" if isinstance(a, str | torch.device) else a for a in args)
            kwargs = {k: "cpu" if k == "device" else v for k, v in kwargs.items()}
            args = tuple(a.cpu() if isinstance(a, torch.Tensor) and i else a
                         for i, a in enumerate(args))
            result = func(*args, **kwargs)
        else:
            result = source
        if moving:
            result = result.clone()
        _tag(result, target.type == "cuda")
        return result
