"""The paper's experiments: one function per group of results, each taking a `Setup` and
returning a tidy table (one row per measured number), every cell cached and resumable.

    setup = Setup("smoke")
    table = preserve_first_merging(setup)      # Tables 1, 3, 4, 6-14 and Fig. 17
"""

from .beyond import beyond
from .linear import linear_networks
from .merging import Measure, Merge, build, endpoint_cells, merge_cells
from .normalization import normalization
from .partial import partial_alignment
from .pfm import preserve_first_merging
from .pruning import pruning
from .setup import COLUMNS, Protocol, Setup, frame, summary
from .sweeps import sweeps
from .vanishing import vanishing_feature
from .walkthrough import walkthrough
from .zipping import pfm_vs_partial_zip

__all__ = ["COLUMNS", "beyond", "Measure", "Merge", "Protocol", "Setup", "build", "endpoint_cells",
           "frame", "linear_networks", "merge_cells", "normalization", "partial_alignment",
           "pfm_vs_partial_zip", "preserve_first_merging", "pruning", "summary", "sweeps",
           "vanishing_feature", "walkthrough"]
