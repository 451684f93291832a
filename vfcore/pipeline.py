"""Merging two endpoints end to end: align (given), merge (optionally PFM), normalise.

Every table cell of the paper is one `merge_models` call with named choices: the alignment, the
merge coefficient, the number of preserved layers, how biases are merged (interpolated, Bias
Calibration, or Bias Removal of the last k layers) and the normalisation after merging.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .align import Alignment
from .merge import check_alpha, interpolate, with_state
from .normalize import bias_calibrated_state, remove_biases, repair, reset_bn
from .pfm import preserve_first_merge

NORMALIZATIONS = ("none", "reset", "repair", "rescale", "reshift")


def aligned_models(template: nn.Module, alignment: Alignment) -> tuple[nn.Module, nn.Module]:
    """The two endpoints in merged coordinates, as models (the references of REPAIR)."""
    a, b = (with_state(template, state) for state in alignment.states)
    return a, b


def merge_models(model_a: nn.Module, model_b: nn.Module, alignment: Alignment, *,
                 alpha: float = 0.5, n_preserved: int = 0, norm: str = "none",
                 calibration: Sequence[torch.Tensor] | None = None,
                 bias_calibration: bool = False, removed_biases: int | None = None) -> nn.Module:
    """Merge two aligned endpoints and normalise the result.

    Biases are interpolated like every weight, unless `bias_calibration` (Bias Calibration,
    Sec. 5.3) gives them the homogeneous weights, or `removed_biases` = k zeroes the biases of
    the last k merged layers (Bias Removal). `norm` is one of NORMALIZATIONS: "reset" (BN models)
    or "repair" / "rescale" / "reshift" towards the aligned endpoints' statistics weighted by
    alpha (CCA: model a's only, as the paper does). With `n_preserved` > 0 the result is a PFM
    model whose first layers stay unmerged; otherwise a plain model of the endpoints' kind.
    """
    check_alpha(alpha)
    if norm not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {norm!r}; choose one of {NORMALIZATIONS}")
    if norm != "none" and calibration is None:
        raise ValueError(f"{norm} needs calibration batches")
    if bias_calibration and removed_biases is not None:
        raise ValueError("choose one of bias calibration and bias removal, not both")
    if removed_biases is not None and removed_biases < 1:
        raise ValueError(f"bias removal needs at least one layer, got {removed_biases}; pass "
                         "removed_biases=None to keep the biases")
    alignment = alignment.at(alpha)
    state = (bias_calibrated_state(model_a, *alignment.states, alpha) if bias_calibration
             else interpolate(*alignment.states, alpha))
    if n_preserved:
        model = preserve_first_merge(model_a, model_b, n_preserved, alignment=alignment,
                                     alpha=alpha, merged_state=state)
        if removed_biases is not None:
            model.merged = remove_biases(model.merged, removed_biases)
    else:
        model = with_state(model_a, state)
        if removed_biases is not None:
            model = remove_biases(model, removed_biases)
    if norm == "reset":
        model = reset_bn(model, calibration)
    elif norm != "none":
        refs = aligned_models(model_a, alignment)
        if alignment.references_one_model:
            model = repair(model, refs[:1], [1.0], calibration, mode=norm)
        else:
            model = repair(model, refs, [1 - alpha, alpha], calibration, mode=norm)
    return model.eval()
