"""`vfcore diagnose`: what goes wrong when two checkpoints are merged, and what repairs it.

The two endpoints are aligned three ways (direct, weight matching, activation matching) and
merged at alpha = 0.5; the vanishing feature of each merge is measured layer by layer (the
normalised scale E||g|| of the merged model over the endpoints', and its smoothed bound); every
normalisation that applies is tried (RESET for models with BatchNorm, REPAIR and RESCALE
otherwise) and scored; and Preserve-First Merging is swept over l = 0..L with the best alignment
and normalisation. `diagnose` returns every number as one JSON-able dict; `write_report` turns it
into `report.md`, `report.json` and PNG figures.

Inputs are checked before anything runs (`prepare`): a problem the user must fix raises
`BadInput`, whose message names it and the fix; the command line prints it and exits with 2.

Modules, in the order data flows: `errors` (`BadInput`), `checkpoints` (reading checkpoint files
and fitting them into a model), `choice` (building and checking the model `--model` names),
`inputs` (`prepare` and the dataset fed to the models), `measure` (the merges, scores, feature
curves and the PFM sweep: `diagnose`), `labels`, `text` and `figures` (the report in words,
tables and plots), `output` (the report folder).
"""

from .checkpoints import PFM_FORMAT, read_checkpoint
from .choice import ModelChoice
from .errors import BadInput
from .figures import FIGURES, figures
from .inputs import Inputs, prepare
from .measure import ALIGNMENTS, VANISHED, diagnose, vf_curve
from .output import check_output, write_report
from .text import markdown, reading

__all__ = ["ALIGNMENTS", "FIGURES", "PFM_FORMAT", "VANISHED", "BadInput", "Inputs",
           "ModelChoice", "check_output", "diagnose", "figures", "markdown", "prepare",
           "read_checkpoint", "reading", "vf_curve", "write_report"]
