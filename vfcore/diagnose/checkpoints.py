"""Checkpoint files: read safely, then fitted into the model they are meant for."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..training import CheckpointError, fit_state
from .errors import BadInput

State = dict[str, torch.Tensor]
PFM_FORMAT = "vfcore-pfm"
"""`meta["format"]` of a checkpoint holding a whole PFM model (`vfcore merge --preserve`)."""


def read_checkpoint(path: str | os.PathLike) -> tuple[State, dict[str, Any]]:
    """(state dict, vfcore metadata) of a checkpoint file, loaded with `weights_only=True`.

    Takes a bare state dict or a vfcore cache entry `{"state": ..., "meta": ...}`; a file that
    holds a whole PFM model, or anything but tensors, is a `BadInput`.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise BadInput(f"cannot load {path} as a checkpoint of tensors (vfcore loads with "
                       f"torch.load(weights_only=True), which runs no code): {err}") from err
    entry = isinstance(saved, dict) and "state" in saved
    meta = saved.get("meta", {}) if entry else {}
    state = saved["state"] if entry else saved
    if isinstance(meta, dict) and meta.get("format") == PFM_FORMAT:
        raise BadInput(f"{path} holds a whole PFM model (two endpoints and a merged network), "
                       f"not one model's weights; rebuild it as its meta says: "
                       f"{meta.get('load', '')}")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BadInput(f"{path} does not hold a state dict of tensors")
    return state, meta if isinstance(meta, dict) else {}


def saved_config(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """The model configuration a vfcore cache entry records, if it is of model `name`."""
    spec = meta.get("spec")
    config = spec.get("model") if isinstance(spec, dict) else None
    return config if isinstance(config, dict) and config.get("name") == name else {}


def _width_hint(model: nn.Module, state: State) -> str:
    """Which --width the checkpoint's first weight suggests, when it differs from the model's."""
    key, own = next((k, v) for k, v in model.state_dict().items() if v.dim() > 1)
    theirs = state.get(key)
    if theirs is None or theirs.dim() != own.dim() or theirs.shape[0] == own.shape[0]:
        return ""
    return (f" Its {key} suggests --width "
            f"{model.config.width * theirs.shape[0] / own.shape[0]:g}.")


def load_into(template: nn.Module, state: State, path: Path, description: str,
              builtin: bool) -> nn.Module:
    """A copy of `template` holding `state`, in eval mode.

    A state that does not fit is a `BadInput` naming the keys at fault and the model built, and
    for a built-in model the options that change it (with the width the weights suggest).
    """
    model = copy.deepcopy(template)
    try:
        fit_state(model, state)
    except CheckpointError as err:
        hint = (" Set --width, --in-channels, --classes or --image-size to match the checkpoint."
                + _width_hint(model, state) if builtin else "")
        raise BadInput(f"{path}: {err}\nThe model built: {description}.{hint}") from err
    model.load_state_dict(state)
    return model.eval()
