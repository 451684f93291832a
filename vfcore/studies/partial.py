"""How much of the network must be aligned (Fig. 4 Left): permute only the first l layers."""

from __future__ import annotations

import pandas as pd

from .merging import Merge, endpoint_cells, merge_cells
from .setup import Setup, frame

MODEL = "vgg16"


def partial_alignment(setup: Setup) -> pd.DataFrame:
    """Midpoint accuracy of VGG16 when only the groups of the first l weight layers are aligned
    (WM or AM), with and without RESCALE, for l = 0, stride, 2 stride, ..., L."""
    records = endpoint_cells(setup, MODEL)
    a, _ = setup.endpoints(MODEL, 0)
    layers = len(a.weight_layers)
    grid = sorted(set(range(0, layers + 1, setup.profile.partial_stride)) | {layers})
    merges = [Merge(matcher, norm=norm, permuted=n) for matcher in ("wm", "am")
              for norm in ("none", "rescale") for n in grid]
    records += merge_cells(setup, MODEL, merges, study="fig04_left")
    return frame(records)
