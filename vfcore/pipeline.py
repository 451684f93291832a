"""Merging two endpoints end to end: align, merge (optionally PFM), normalise.

The notebooks compose the kernels through `merge_models`, so that every table cell is one call
with named choices: the alignment method, the merge coefficient, the number of preserved
layers and the normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .align import Alignment
from .merge import check_alpha
from .models import rebuild
from .normalize import bias_calibrated_state, remove_biases, repair, reset_bn
from .pfm import preserve_first_merge

NORMALIZATIONS = ("none", "reset", "repair", "rescale", "reshift", "bias_cal", "bias_removal")


def aligned_models(template: nn.Module, alignment: Alignment) -> tuple[nn.Module, nn.Module]:
    """The two endpoints in merged coordinates, as models (the references of REPAIR)."""
    device = next(template.parameters()).device
    models = []
    for state in alignment.states:
        m = rebuild(template).to(device)
        m.load_state_dict(state)
        models.append(m.eval())
    return models[0], models[1]


def merge_models(model_a: nn.Module, model_b: nn.Module, alignment: Alignment, *,
                 alpha: float = 0.5, n_preserved: int = 0, norm: str = "none",
                 calibration: Sequence[torch.Tensor] | None = None,
                 removed_biases: int = 0) -> nn.Module:
    """Merge two endpoints and normalise the result.

    `norm` is one of NORMALIZATIONS: "reset" (BN models), "repair" / "rescale" / "reshift"
    towards the aligned endpoints' statistics weighted by alpha (CCA: model a's only, since
    CCA changes what model b's units mean, as the paper does), "bias_cal" (Bias Calibration)
    or "bias_removal" (zero the biases of the last `removed_biases` layers). With
    `n_preserved` > 0 the result is a PFM model whose first layers stay unmerged.
    """
    check_alpha(alpha)
    if norm not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {norm!r}; choose one of {NORMALIZATIONS}")
    if norm in ("reset", "repair", "rescale", "reshift") and calibration is None:
        raise ValueError(f"{norm} needs calibration batches")
    state = (bias_calibrated_state(model_a, *alignment.states, alpha) if norm == "bias_cal"
             else None)
    model = preserve_first_merge(model_a, model_b, n_preserved, alignment=alignment,
                                 alpha=alpha, merged_state=state)
    if n_preserved == 0:
        model = model.merged
    if norm == "bias_removal":
        if n_preserved:
            model.merged = remove_biases(model.merged, removed_biases)
        else:
            model = remove_biases(model, removed_biases)
    elif norm == "reset":
        model = reset_bn(model, calibration)
    elif norm in ("repair", "rescale", "reshift"):
        refs = aligned_models(model_a, alignment)
        if alignment.method == "cca":
            model = repair(model, refs[:1], [1.0], calibration, mode=norm)
        else:
            model = repair(model, refs, [1 - alpha, alpha], calibration, mode=norm)
    return model.eval()
