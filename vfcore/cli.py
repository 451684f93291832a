"""The `vfcore` command: diagnose, merge and prune checkpoints of your own, or regenerate the
paper's notebooks. A thin argparse layer over `vfcore.diagnose` and the kernels.

Exit status: 0 on success; 2 for input the user must fix (the message on stderr names the
problem and the fix, and nothing is written); 1 for anything else.
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .align import align
from .data import DATASETS
from .device import cpu_threads
from .diagnose import (
    FIGURES,
    PFM_FORMAT,
    BadInput,
    Inputs,
    ModelChoice,
    check_output,
    diagnose,
    prepare,
    reading,
    write_report,
)
from .io import atomic_write_bytes
from .models import has_batchnorm
from .pipeline import aligned_models, merge_models
from .prune import normalize_pruned, prune, sparsity
from .vf import vf_layers

EXAMPLES = {
    "diagnose": """examples:
  vfcore diagnose a.pt b.pt --model vgg16_bn --width 0.125 --data fashion_mnist
  vfcore diagnose a.pt b.pt --model mynets:make_net --data cifar10 --images 2000 --out report/

It aligns the two (direct, WM, AM), merges at alpha = 0.5, measures the vanishing feature
layer by layer, tries the normalisations that apply (RESET with BatchNorm, REPAIR and RESCALE
without), sweeps Preserve-First Merging over l = 0..L, and writes report.md, report.json and
the figures summary.png, vf.png, remedies.png and pfm.png into --out.""",
    "merge": """examples:
  vfcore merge a.pt b.pt --model vgg16 --width 0.125 --align am --norm repair -o merged.pt
  vfcore merge a.pt b.pt --model vgg16_bn --align am --norm reset --preserve 8 -o pfm.pt

Without --preserve the output is the merged model's state dict:
  model.load_state_dict(torch.load("merged.pt", weights_only=True))
With --preserve l it is the whole PFM model (both endpoints' first l layers and the merged
rest), endpoint b already aligned: {"state": <the PFM wrapper's state dict>, "meta": ...}.
Rebuild it on any model m of the architecture (printed after writing, and in meta["load"]):
  pfm = vfcore.preserve_first_merge(m, m, l, alpha=alpha)
  pfm.load_state_dict(torch.load("pfm.pt", weights_only=True)["state"])""",
    "prune": """examples:
  vfcore prune a.pt --model vgg16_bn --width 0.125 --sparsity 0.8 --renorm -o pruned.pt
  vfcore prune a.pt --model vgg16 --sparsity 0.5 --scope layerwise --renorm rescale -o p.pt

--renorm normalises the pruned model towards the unpruned one (RESET for models with
BatchNorm, REPAIR otherwise; --renorm rescale for RESCALE). The output is a state dict.""",
}
MERGE_NORMS = ("auto", "none", "reset", "repair", "rescale", "reshift")
PERMUTATIONS = ("direct", "wm", "am")


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _unit(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _sparsity(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}; 0.8 zeroes 80% of "
                                         "the conv and linear weights")
    return value


def _model_options(parser: argparse.ArgumentParser, images: str) -> None:
    """--model and the options every subcommand shares; `images` says what --images is for."""
    group = parser.add_argument_group("model and data")
    group.add_argument("--model", required=True, metavar="NAME",
                       help="a built-in architecture (vgg16, vgg16_bn, resnet20, mlp, ...) or "
                            "package.module:callable returning an nn.Module (importable from "
                            "the current directory)")
    group.add_argument("--width", type=_positive, metavar="W",
                       help="width multiplier of a built-in model (default: the checkpoint's "
                            "vfcore metadata, else 1)")
    group.add_argument("--in-channels", type=_positive_int, metavar="C",
                       help="input channels of a built-in model (default: the dataset's)")
    group.add_argument("--classes", type=_positive_int, metavar="K",
                       help="classes of a built-in model (default: the dataset's)")
    group.add_argument("--image-size", type=_positive_int, metavar="S",
                       help="zero-pad images to this size (default: 32 for built-in CNNs, the "
                            "dataset's own otherwise)")
    group.add_argument("--data", default="fashion_mnist", choices=DATASETS,
                       help="the dataset the checkpoints were trained on (default: %(default)s)")
    group.add_argument("--images", type=_positive_int, default=500, metavar="N",
                       help=f"{images} (default: %(default)s)")
    group.add_argument("--device", default="auto", metavar="D",
                       help="cpu, cuda, cuda:1 or auto (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, metavar="SEED",
                       help="seed of the image draws and weight matching (default: 0)")
    group.add_argument("--threads", type=_positive_int, default=1, metavar="T",
                       help="CPU threads of torch, at most the usable cores (default: 1, as "
                            "vfcore trains: the numbers do not depend on the machine's core "
                            "count, and small models run fastest; more helps large models on "
                            "an idle machine)")


def _choice(args: argparse.Namespace) -> ModelChoice:
    return ModelChoice(args.model, args.width, args.in_channels, args.classes, args.image_size)


def _calibration(inputs: Inputs, args: argparse.Namespace) -> list[torch.Tensor]:
    inputs.load_data()
    return [x for x, _ in inputs.draw(args.images, train=True, seed=args.seed, augment=True)]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _save(path: Path, payload: object) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _warn_added(model: nn.Module, template: nn.Module, path: Path) -> None:
    """REPAIR gives bias-free layers a bias when it shifts them: say so, since such a state dict
    no longer loads into a freshly built model."""
    added = sorted(set(getattr(model, "merged", model).state_dict()) - set(template.state_dict()))
    if added:
        print(f"note: normalisation added {len(added)} bias term(s) the architecture lacks "
              f"({', '.join(added[:3])}{', ...' if len(added) > 3 else ''}); {path} holds them, "
              "so give those layers a bias before loading it, or use RESCALE, which adds none",
              file=sys.stderr)


def run_diagnose(args: argparse.Namespace) -> int:
    out = check_output(args.out, args.force, folder=True)
    inputs = prepare([args.a, args.b], _choice(args), args.data, args.device)
    inputs.load_data()
    start = time.perf_counter()
    report = diagnose(inputs, args.images, seed=args.seed)
    write_report(report, out)
    print("\n".join(f"- {line}" for line in reading(report)))
    print(f"\nwrote {out / 'report.md'}, report.json and "
          f"{', '.join(f'{name}.png' for name in FIGURES)} in {time.perf_counter() - start:.0f} s")
    return 0


def _pfm_loader(inputs: Inputs, choice: ModelChoice, n: int, alpha: float, path: Path) -> str:
    """Python that rebuilds the PFM model written to `path`."""
    model = inputs.models[0]
    if choice.builtin:
        c = model.config
        build = (f"m = vfcore.build_model({c.name!r}, width={c.width:g}, "
                 f"num_classes={c.num_classes}, in_channels={c.in_channels}, "
                 f"image_size={c.image_size})")
    else:
        module, _, factory = choice.name.partition(":")
        build = (f"import {module}; m = {module}.{factory}(); "
                 "vfcore.spec_for(m, example_batch)")
    return (f"import torch, vfcore; {build}; pfm = vfcore.preserve_first_merge(m, m, {n}, "
            f"alpha={alpha:g}); pfm.load_state_dict(torch.load({str(path)!r}, "
            "weights_only=True)['state'])")


def run_merge(args: argparse.Namespace) -> int:
    out = check_output(args.output, args.force)
    choice = _choice(args)
    inputs = prepare([args.a, args.b], choice, args.data, args.device)
    a, b = inputs.models
    n_layers = len(vf_layers(a))
    if not 0 <= args.preserve <= n_layers:
        raise BadInput(f"--preserve must lie in [0, {n_layers}] (the model's weight layers), "
                       f"got {args.preserve}")
    if args.preserve and args.align not in PERMUTATIONS:
        raise BadInput(f"--preserve writes PFM models for permutation alignments "
                       f"({', '.join(PERMUTATIONS)}) only; {args.align} changes what b's units "
                       "mean, so its endpoints cannot be stored aligned")
    norm = args.norm if args.norm != "auto" else "reset" if has_batchnorm(a) else "repair"
    if norm == "reset" and not has_batchnorm(a):
        raise BadInput("--norm reset re-estimates BatchNorm statistics, but the model has no "
                       "BatchNorm: use --norm repair or rescale")
    needs_data = args.align not in ("direct", "wm") or norm != "none"
    calibration = _calibration(inputs, args) if needs_data else None
    alignment = align(a, b, args.align, calibration, seed=args.seed)
    if args.preserve:  # store b aligned, so that the wrapper's state dict is the whole model
        b = aligned_models(a, alignment)[1]
        alignment = align(a, b, "direct")
    merged = merge_models(a, b, alignment, alpha=args.alpha, n_preserved=args.preserve,
                          norm=norm, calibration=calibration)
    aligned = "unaligned" if args.align == "direct" else f"aligned by {args.align.upper()}"
    what = (f"{inputs.description}, {aligned}, merged at alpha {args.alpha:g}"
            + ("" if norm == "none" else f", normalised with {norm.upper()}"))
    if args.preserve:
        loader = _pfm_loader(inputs, choice, args.preserve, args.alpha, out)
        meta = {"format": PFM_FORMAT, "n_preserved": args.preserve, "alpha": args.alpha,
                "model": what, "load": loader}
        _save(out, {"state": _cpu_state(merged), "meta": meta})
        print(f"wrote {out}: PFM {args.preserve}/{n_layers} of {what}\nload it with:\n  "
              + loader.replace("; ", "\n  "))
    else:
        _save(out, _cpu_state(merged))
        print(f"wrote {out}: {what}")
    _warn_added(merged, a, out)
    return 0


def run_prune(args: argparse.Namespace) -> int:
    out = check_output(args.output, args.force)
    inputs = prepare([args.a], _choice(args), args.data, args.device)
    (model,) = inputs.models
    mode = None if args.renorm in (None, "auto") else args.renorm
    if mode is not None and has_batchnorm(model):
        raise BadInput(f"--renorm {mode} is for models without BatchNorm; models with BatchNorm "
                       "are normalised with RESET: pass --renorm alone")
    calibration = _calibration(inputs, args) if args.renorm else None
    pruned = prune(model, args.sparsity, scope=args.scope)
    if calibration is not None:
        pruned = normalize_pruned(pruned, model, calibration, mode=mode)
    _save(out, _cpu_state(pruned))
    how = ("" if not args.renorm else ", renormalised with "
           + ("RESET" if has_batchnorm(model) else (mode or "repair").upper()))
    print(f"wrote {out}: {inputs.description} pruned to {100 * sparsity(pruned):.2f}% sparsity "
          f"({args.scope}){how}")
    _warn_added(pruned, model, out)
    return 0


def _subcommand(subparsers: argparse._SubParsersAction, name: str, summary: str,
                run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    description = textwrap.fill(f"{summary[0].upper()}{summary[1:]}.", 88)
    parser = subparsers.add_parser(name, help=summary, description=description,
                                   epilog=EXAMPLES[name],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                        help="file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --output")


def _add_diagnose(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(commands, "diagnose", "report on merging two checkpoints: where the "
                         "feature vanishes, which remedy recovers how much, the PFM curve",
                         run_diagnose)
    parser.add_argument("a", help="first checkpoint (.pt)")
    parser.add_argument("b", help="second checkpoint, same architecture")
    _model_options(parser, "N training images calibrate and measure; accuracy uses the first "
                           "N test images")
    parser.add_argument("--out", type=Path, default=Path("vfcore-report"), metavar="DIR",
                        help="folder for the report (default: %(default)s); must be new or "
                             "empty")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")


def _add_merge(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(commands, "merge", "merge two checkpoints (optionally with PFM) and "
                         "write the result", run_merge)
    parser.add_argument("a", help="first checkpoint (.pt)")
    parser.add_argument("b", help="second checkpoint, same architecture")
    _model_options(parser, "training images that calibrate AM, ZipIt!, CCA and the "
                           "normalisation")
    group = parser.add_argument_group("merging")
    group.add_argument("--align", default="am", choices=("direct", "wm", "am", "zipit", "cca"),
                       help="how b is aligned to a (default: %(default)s)")
    group.add_argument("--norm", default="auto", choices=MERGE_NORMS,
                       help="normalisation after merging; auto: RESET with BatchNorm, REPAIR "
                            "otherwise (default: %(default)s)")
    group.add_argument("--preserve", type=int, default=0, metavar="L",
                       help="Preserve-First Merging: keep the first L layers unmerged "
                            "(default: 0, a plain merge)")
    group.add_argument("--alpha", type=_unit, default=0.5,
                       help="merge coefficient: (1 - alpha) a + alpha b (default: 0.5)")
    _outputs(parser)


def _add_prune(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(commands, "prune", "prune one checkpoint by weight magnitude (and "
                         "renormalise it) and write the result", run_prune)
    parser.add_argument("a", help="checkpoint (.pt)")
    _model_options(parser, "training images that calibrate --renorm")
    group = parser.add_argument_group("pruning")
    group.add_argument("--sparsity", type=_sparsity, required=True, metavar="FRACTION",
                       help="fraction of conv and linear weights to zero, in [0, 1)")
    group.add_argument("--scope", default="global", choices=("global", "layerwise"),
                       help="smallest weights over all layers, or in each (default: "
                            "%(default)s)")
    group.add_argument("--renorm", nargs="?", const="auto", choices=("auto", "repair", "rescale"),
                       help="normalise towards the unpruned model: alone, RESET with BatchNorm "
                            "and REPAIR otherwise; or name repair / rescale")
    _outputs(parser)


def build_parser() -> argparse.ArgumentParser:
    """The `vfcore` parser; each subcommand sets `run`, the function that carries it out."""
    parser = argparse.ArgumentParser(
        prog="vfcore", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The vanishing feature (Qu & Horváth, CPAL 2025) applied to checkpoints "
                    "of\nyour own: diagnose a merge, merge, prune, or regenerate the paper's "
                    "notebooks.",
        epilog="examples:\n"
               "  vfcore diagnose a.pt b.pt --model vgg16_bn --width 0.125\n"
               "  vfcore merge a.pt b.pt --model vgg16 --align am --norm repair -o merged.pt\n"
               "  vfcore prune a.pt --model vgg16 --sparsity 0.8 --renorm -o pruned.pt\n"
               "  vfcore reproduce --profile smoke --only 05\n\n"
               "Checkpoints are state dicts (or vfcore cache entries), loaded with "
               "torch.load(weights_only=True).\n`vfcore COMMAND --help` shows each command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_diagnose(commands)
    _add_merge(commands)
    _add_prune(commands)
    commands.add_parser("reproduce", add_help=False,
                        help="regenerate the paper's notebooks, figures and tables (the "
                             "arguments of python -m vfcore.reproduce; see vfcore reproduce "
                             "--help)")
    return parser


def _reproduce(argv: list[str]) -> int:
    """`python -m vfcore.reproduce` with `argv`; its usage line reads `vfcore reproduce`."""
    from .reproduce import main as reproduce

    try:
        return reproduce(argv, prog="vfcore reproduce")
    except SystemExit as exit_:  # --help, a usage error, or a message to print
        if isinstance(exit_.code, int) or exit_.code is None:
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run the `vfcore` command with `argv` (default: the process's arguments); return the
    exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reproduce"]:
        return _reproduce(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        with cpu_threads(args.threads):
            return args.run(args)
    except BadInput as err:
        print(f"vfcore {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
