"""The training loop: SGD or Adam with a per-iteration learning rate, cross-entropy, tensor-op
batches from `vfcore.data.batches`. Data order and augmentation of epoch `e` are drawn from a
generator seeded by (seed, e), so a run interrupted at an epoch boundary resumes bit for bit from
its per-epoch checkpoint."""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import ImageSet
from .device import limit_threads, resolve_device
from .evaluation import input_batches, memory_format
from .io import atomic_write_bytes
from .recipes import Recipe, epoch_seed, lr_factor, schedule

Progress = bool | None
"""Progress bar: True/False forces it on/off; None shows it on a terminal, never under CI."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


def _name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "name", type(model).__name__)


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser, with the fused step (one kernel for all parameters, measured
    faster on the CPU: `benchmarks/bench_train.py`)."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr,
                                weight_decay=recipe.weight_decay, fused=True)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, fused=True)


def _quiet(progress: Progress) -> bool | None:
    """tqdm's `disable`: None (shown only on a terminal) unless forced; always quiet under CI."""
    if progress is None:
        return True if os.environ.get("CI") else None
    return not progress


@contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    """Deterministic cuDNN kernels for the duration of training (a no-op on the CPU)."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors (a canonical, portable layout)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run: dict[str, Any],
            device: torch.device) -> tuple[int, int]:
    """(epoch, step) to continue from, restoring model and optimizer from a valid checkpoint."""
    if not path.exists():
        return 0, 0
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("run") != run:
            raise CheckpointError("it belongs to a different run (recipe, seed or data)")
        fit_state(model, saved["model"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for state in optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.to(device)
        return int(saved["epoch"]), int(saved["step"])
    except Exception as err:  # any unreadable or mismatching checkpoint means: start over
        warnings.warn(f"ignoring training checkpoint {path}: {err}; training from the start",
                      stacklevel=3)
        return 0, 0


def train(model: nn.Module, data: ImageSet, recipe: Recipe, *, seed: int,
          device: str | torch.device | None = None, progress: Progress = None,
          checkpoint: str | os.PathLike | None = None,
          on_epoch: Callable[[int, float], None] | None = None,
          label: str | None = None) -> nn.Module:
    """Train `model` in place on `data` with `recipe`; return it in eval mode.

    `seed` fixes the data order and augmentation of every epoch (the initialisation is the
    caller's). With `checkpoint`, model and optimizer are saved atomically at the end of every
    epoch and a valid checkpoint of the same run is resumed from. `on_epoch(epoch, mean_loss)` is
    called after each epoch's checkpoint. `progress`: True/False forces the progress bar on/off;
    None shows it on a terminal and hides it under CI; `label` names the run on the bar.
    `device` None means CUDA when available.
    """
    limit_threads()
    target = resolve_device(device)
    model.to(target, memory_format=memory_format(model))
    optimizer = _optimizer(model, recipe)
    steps_per_epoch, total_steps = schedule(recipe, len(data))
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    run = {"recipe": recipe.as_dict(), "seed": seed, "data": [data.name, len(data)]}
    path = None if checkpoint is None else Path(checkpoint)
    first_epoch, step = (0, 0) if path is None else _resume(path, model, optimizer, run, target)
    bar = tqdm(total=total_steps, initial=step, disable=_quiet(progress), unit="it",
               desc=label or _name(model), leave=False)
    model.train()
    with _deterministic_cudnn(), bar:
        for epoch in range(first_epoch, num_epochs):
            loss_sum = torch.zeros((), device=target)
            batches_done = 0
            for x, y in input_batches(model, data, recipe.batch_size, augment=recipe.augment,
                                      shuffle=True, seed=epoch_seed(seed, epoch),
                                      device=target):
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * lr_factor(step, total_steps, recipe)
                loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                loss_sum += loss.detach()
                step += 1
                batches_done += 1
                bar.update()
            mean_loss = loss_sum.item() / max(1, batches_done)
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"training diverged in epoch {epoch} (loss {mean_loss}); "
                                   f"lower the learning rate (now {recipe.lr})")
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.3f}")
            if path is not None:
                payload = _to_bytes({"run": run, "epoch": epoch + 1, "step": step,
                                     "model": _cpu_state(model),
                                     "optimizer": optimizer.state_dict()})
                atomic_write_bytes(path, payload)
            if on_epoch is not None:
                on_epoch(epoch, mean_loss)
    return model.eval()


def fit_state(model: nn.Module, state: Any) -> None:
    """Raise `CheckpointError` naming every missing, extra or mis-shaped key of `state`."""
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("the checkpoint does not hold a state dict of tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs the model's {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} {items[:10]}{' ...' if len(items) > 10 else ''}"
                for label, items in (("missing keys", missing), ("unexpected keys", extra),
                                     ("shape mismatches", shapes)) if items]
    if problems:
        raise CheckpointError(f"the checkpoint does not fit this {_name(model)} model: "
                              + "; ".join(problems)
                              + ". Build the model with the checkpoint's architecture and width.")


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights saved by vfcore (or a bare state dict) into `model`, safely.

    `torch.load(weights_only=True)` cannot run code from the file. A file that cannot be read, or
    whose state does not fit `model`, raises `CheckpointError` naming the keys at fault.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    state = saved["state"] if isinstance(saved, dict) and "state" in saved else saved
    fit_state(model, state)
    model.load_state_dict(state, strict=True)
    return model
