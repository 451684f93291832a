"""Regenerate every notebook at one profile: check the data, train every endpoint (in parallel),
then execute the notebooks through papermill from the cache, with progress and timings.

    python -m vfcore.reproduce --profile smoke               # all notebooks, in place
    python -m vfcore.reproduce --profile paper_tiny          # copies in notebooks/paper_tiny/
    python -m vfcore.reproduce --profile paper --device cuda --engine slurm --workers 16
    python -m vfcore.reproduce --only 05 07                  # a selection

At the smoke profile the committed notebooks are re-executed in place (their outputs are what
nbval checks); other profiles write executed copies to notebooks/<profile>/. Figures and tables
go to figures/<profile>/. Progress (endpoints trained, notebook cells) shows on a terminal only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data import load_dataset
from .device import cpu_cores
from .io import atomic_path
from .jobs import ENGINES, quiet_output, train_all
from .profiles import PROFILES, get_profile
from .studies import Setup
from .studies.manifest import endpoints

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks, in order; `only` keeps those whose name starts with a prefix."""
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return every
    paths = [p for p in every if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise SystemExit(f"no notebook matches {only}; have {[p.name for p in every]}")
    return paths


def output_path(notebook: Path, profile: str) -> Path:
    return notebook if profile == "smoke" else NOTEBOOKS / profile / notebook.name


def _portable_metadata(executed: Path, source: Path, out: Path) -> None:
    """Record repository-relative notebook paths in papermill's metadata, not this machine's."""
    root = NOTEBOOKS.parent
    nb = json.loads(executed.read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("papermill", {})
    meta["input_path"] = str(source.relative_to(root))
    meta["output_path"] = str(out.relative_to(root))
    executed.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def check_data(profile: str) -> None:
    """Load every dataset the profile needs before anything trains: a missing one stops the
    run at once with the error that says where to put its files."""
    p = get_profile(profile)
    for name in dict.fromkeys((p.dataset, *p.extra_datasets, p.linear_dataset)):
        for train in (True, False):
            load_dataset(name, train=train)


def execute(profile: str, device: str, paths: list[Path]) -> list[tuple[str, float]]:
    """Execute the notebooks; return (name, seconds) for each."""
    import papermill

    timings = []
    for i, nb in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {nb.name} ...", flush=True)
        start = time.perf_counter()
        out = output_path(nb, profile)
        with atomic_path(out) as tmp:
            papermill.execute_notebook(
                str(nb), str(tmp), parameters={"profile": profile, "device": device},
                kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=not quiet_output(),
                request_save_on_cell_execute=False)
            _portable_metadata(tmp, nb, out)
        seconds = time.perf_counter() - start
        timings.append((nb.name, seconds))
        print(f"[{i}/{len(paths)}] {nb.name} done in {seconds:.0f} s", flush=True)
    return timings


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 05")
    parser.add_argument("--workers", type=int, default=cpu_cores(),
                        help="endpoints trained at once (default: the usable CPU cores)")
    parser.add_argument("--engine", default="local", choices=ENGINES,
                        help="where endpoints train: this process, local worker processes, "
                             "or a SLURM job array (see the README)")
    parser.add_argument("--train-only", action="store_true",
                        help="train every endpoint, execute no notebook")
    args = parser.parse_args(argv)
    paths = notebook_paths(args.only)
    check_data(args.profile)
    setup = Setup(args.profile, args.device)
    jobs = endpoints(setup)
    print(f"{len(jobs)} endpoints at the {args.profile} profile; training those not cached "
          f"with {args.workers} worker(s)", flush=True)
    timings = [("training", train_all(jobs, workers=args.workers, engine=args.engine))]
    if not args.train_only:
        timings += execute(args.profile, args.device, paths)
    print("\n".join(f"{s:8.0f} s  {name}" for name, s in timings))
    print(f"{sum(s for _, s in timings):8.0f} s  total ({args.profile} profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
