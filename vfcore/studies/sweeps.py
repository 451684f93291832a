"""Training hyper-parameters and merging (App. A.4): Figs 6, 7 and 8.

Each sweep value trains its own endpoints (the learning rate or weight decay of the recipe
changed, everything else as the profile's). BatchNorm models are merged with RESET, the others
without normalisation, as in the paper's Fig. 6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..models import has_batchnorm
from .merging import Measure, Merge, endpoint_cells, merge_cells
from .setup import Setup, frame

FIG8_MODEL = "vgg16"


def _line(setup: Setup, norm: str, matchers: tuple[str, ...]) -> list[Merge]:
    return [Merge(m, alpha=float(t), norm=norm) for m in matchers
            for t in np.linspace(0, 1, setup.profile.alphas)]


def sweeps(setup: Setup) -> pd.DataFrame:
    """Accuracy along alpha after WM and direct merging, per learning rate (Fig. 6A/B, 7A/B) and
    per weight decay (Fig. 6C/D, 7C/D), for the profile's sweep models; and Fig. 8: the VGG16
    midpoint's train and test accuracy after WM/AM with REPAIR/RESCALE, per weight decay. The
    `setting` column names the swept value; the barrier is computed from the line."""
    records = []
    for study, values, models, name in (
            ("lr_sweep", setup.profile.lr_sweep, setup.profile.lr_sweep_models, "lr"),
            ("wd_sweep", setup.profile.wd_sweep, setup.profile.wd_sweep_models, "weight_decay")):
        for model, width in models:
            for value in values:
                train = {name: value} | ({"width": width} if width is not None else {})
                a, _ = setup.endpoints(model, 0, **train)
                norm = "reset" if has_batchnorm(a) else "none"
                records += endpoint_cells(setup, model, study=f"{study}_endpoints", **train)
                records += merge_cells(setup, model, _line(setup, norm, ("wm", "direct")),
                                       study=study, **train)
    fig8 = [Merge(m, norm=n) for m in ("wm", "am") for n in ("repair", "rescale")]
    for wd in setup.profile.wd_sweep:
        records += merge_cells(setup, FIG8_MODEL, fig8, Measure(("accuracy", "train_accuracy")),
                               study="fig08", weight_decay=wd)
    return frame(records)
