"""Permutation specs and model structure, derived by tracing any CNN or MLP with torch.fx.

From one traced forward pass vfcore derives what the merging kernels need, with no code per model
class: which state-dict axes share one permutation of hidden units (the permutation spec of Git
Re-Basin, Ainsworth et al. 2023, Sec. 3), the L weight layers the paper counts, the norm after
each layer, where each group's post-activation features can be read (activation matching), the
layers REPAIR corrects, and the values that cross a Preserve-First-Merging cut (Sec. 5.4 and
App. A.3 of the paper).

How: the model is traced into an fx graph and run once on an example input, so every value's
shape is known. A union-find over channel groups follows each value's channel axis (`groups`,
`rules`, `ops`); the results are assembled into a `Structure` (`assemble`, `structure`), which is
cached per architecture (`cache`). Anything that cannot be followed exactly raises `TraceError`,
which names the node and the operation.

Modules: `tracer` (fx tracing), `groups` (channel groups), `ops` (what each operation does),
`rules` (following channels through the graph), `assemble` (building the structure),
`structure` (the structure and running its graph piece by piece), `cache` (once per
architecture), `types` (the error and the cut values).
"""

from .assemble import structure_of
from .cache import structure, zero_batch
from .structure import Structure
from .types import Cut, Live, TraceError

__all__ = ["Cut", "Live", "Structure", "TraceError", "structure", "structure_of", "zero_batch"]
