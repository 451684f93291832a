"""vfcore: the reproducible companion to "Vanishing Feature: Diagnosing Model Merging and
Beyond" (Qu & Horváth, CPAL 2025).

    import vfcore
    a, b = vfcore.build_model("vgg16_bn"), vfcore.build_model("vgg16_bn")
    # or any traceable nn.Module of your own: vfcore.spec_for(a, example_batch) once
    alignment = vfcore.align(a, b, "am", batches)
    merged = vfcore.merge_models(a, b, alignment, norm="reset", calibration=batches)
    scale = vfcore.normalized_scale(merged, [a, b], batches, vfcore.vf_layers(a))

Kernels: models and data, alignment (weight and activation matching, ZipIt!, CCA), merging and
Preserve-First Merging, normalisation (RESET, REPAIR, RESCALE), one-shot pruning, and the
vanishing-feature measurement. `vfcore.studies` holds the paper's experiments, `vfcore.claims`
its claims.
"""

from .kernels import pin_reference_kernels

pin_reference_kernels()  # before any import below runs torch: one set of kernels on every CPU

from ._version import __version__
from .align import Alignment, align, check_equivalent
from .data import ImageSet, load_dataset
from .endpoints import train_endpoint
from .evaluation import calibration_batches, evaluate, predict
from .features import activation_matching
from .merge import barrier, interpolate
from .models import build_model
from .normalize import remove_biases, repair, reset_bn
from .pfm import partial_zip, pfm_cost, preserve_first_merge
from .pipeline import merge_models
from .profiles import get_profile
from .prune import normalize_pruned, prune
from .spec import spec_for
from .transform import permute, transform
from .vf import depth_curve, feature_norms, normalized_scale, smoothed_bound, vf_layers
from .weight_matching import weight_matching


def __getattr__(name: str):
    """`vfcore.Setup` on first use: the studies (pandas) stay out of a bare `import vfcore`."""
    if name == "Setup":
        from .studies import Setup

        return Setup
    raise AttributeError(f"module 'vfcore' has no attribute {name!r}")


__all__ = [
    "Alignment", "ImageSet", "Setup", "__version__", "activation_matching", "align", "barrier",
    "build_model", "calibration_batches", "check_equivalent", "depth_curve", "evaluate",
    "feature_norms", "get_profile", "interpolate", "load_dataset", "merge_models",
    "normalize_pruned", "normalized_scale", "partial_zip", "permute", "pfm_cost", "predict",
    "preserve_first_merge", "prune", "remove_biases", "repair", "reset_bn", "smoothed_bound",
    "spec_for", "train_endpoint", "transform", "vf_layers", "weight_matching",
]
