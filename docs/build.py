"""Build the static HTML site of the committed, executed notebooks (`make site`).

    python docs/build.py [--out build/site]

The site is what a reader sees in JupyterLab without running anything: the README as the
landing page, one page per notebook found in notebooks/ and notebooks/<profile>/ with its stored
figures and claims tables, and a page gathering every figures/<profile>/claims_*.md. The sources
are copied into a temporary folder first, so the build never writes beside the notebooks or the
figures, and any Sphinx warning fails it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
DEFAULT_OUT = REPO / "build" / "site"
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


class SiteBuildError(RuntimeError):
    """The site could not be built; the message says why and what to do."""


def find_notebooks(repo: Path) -> dict[str, list[Path]]:
    """The notebooks to show, by folder: "" for notebooks/ itself, else the profile's folder."""
    root = repo / "notebooks"
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.glob("*.ipynb")) + sorted(root.glob("*/*.ipynb")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        groups.setdefault(path.parent.relative_to(root).as_posix().strip("."), []).append(path)
    return groups


def find_claims(repo: Path) -> dict[str, list[Path]]:
    """The claims tables the notebooks wrote, by profile (the folder under figures/)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted((repo / "figures").glob("*/claims_*.md")):
        groups.setdefault(path.parent.name, []).append(path)
    return groups


def _profile_of(notebooks: list[Path], folder: str) -> str:
    """The profile a group of notebooks ran at: the folder's name, else papermill's record."""
    if folder:
        return folder
    profiles = set()
    for path in notebooks:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        profiles.add(meta.get("papermill", {}).get("parameters", {}).get("profile"))
    return profiles.pop() if len(profiles) == 1 and None not in profiles else ""


def _toctree(caption: str, entries: list[str]) -> str:
    lines = ["```{toctree}", f":caption: {caption}", ":maxdepth: 1", "", *entries, "```", ""]
    return "\n".join(lines)


def _index(notebooks: dict[str, list[Path]], profiles: dict[str, str], repo: Path,
           has_claims: bool) -> str:
    """The landing page: the README, then the notebooks by profile and the claims page."""
    parts = ["```{include} README.md", "```", "", "## This site", "",
             "Every notebook as committed, with the outputs of its last run (building this "
             "site executes nothing), and the claims tables they wrote.", ""]
    for folder, paths in notebooks.items():
        caption = f"Notebooks ({profiles[folder]} profile)" if profiles[folder] else "Notebooks"
        entries = [p.relative_to(repo).with_suffix("").as_posix() for p in paths]
        parts.append(_toctree(caption, entries))
    if has_claims:
        parts.append(_toctree("Claims", ["claims"]))
    return "\n".join(parts)


def _claims_page(claims: dict[str, list[Path]], profiles: dict[str, str], repo: Path) -> str:
    """One section per profile, one table per notebook, each linked to its notebook's page."""
    folders = {profile: folder for folder, profile in profiles.items() if profile}
    parts = ["# Claims tables", "",
             "Each notebook ends with a claims table: the paper's number, ours, and whether the "
             "paper's claim holds at that profile. These are the tables as the notebooks wrote "
             "them to `figures/<profile>/`.", ""]
    for profile, paths in claims.items():
        parts += [f"## {profile} profile", ""]
        for path in paths:
            name = path.stem.removeprefix("claims_")
            parts += [f"### {name}", ""]
            notebook = repo / "notebooks" / folders.get(profile, "") / f"{name}.ipynb"
            if profile in folders and notebook.exists():
                parts += [f"From [the notebook]({notebook.relative_to(repo).as_posix()}).", ""]
            parts += [f"```{{include}} {path.relative_to(repo).as_posix()}", "```", ""]
    return "\n".join(parts)


def stage(repo: Path, source: Path) -> None:
    """Copy the README, notebooks and claims tables into `source` and write the site's pages."""
    notebooks = find_notebooks(repo)
    if not notebooks:
        raise SiteBuildError(f"no notebooks in {repo / 'notebooks'}: nothing to build a site of")
    claims = find_claims(repo)
    profiles = {folder: _profile_of(paths, folder) for folder, paths in notebooks.items()}
    source.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "README.md", source / "README.md")
    pages = [p for group in (notebooks, claims) for paths in group.values() for p in paths]
    for path in pages + readme_images(repo):
        target = source / path.relative_to(repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    index = _index(notebooks, profiles, repo, bool(claims))
    (source / "index.md").write_text(index, encoding="utf-8")
    if claims:
        (source / "claims.md").write_text(_claims_page(claims, profiles, repo), encoding="utf-8")


def readme_images(repo: Path) -> list[Path]:
    """The repository files the README shows as images (web addresses are left to the browser)."""
    text = (repo / "README.md").read_text(encoding="utf-8")
    links = [link for link in MARKDOWN_IMAGE.findall(text) if "://" not in link]
    missing = [link for link in links if not (repo / link).is_file()]
    if missing:
        raise SiteBuildError(f"the README shows images that are not in the repository: {missing}")
    return [repo / link for link in links]


def _clear(out: Path) -> None:
    """Empty `out` for a fresh site, refusing any folder that is not a previous site."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / ".buildinfo").exists()):
        raise SiteBuildError(
            f"{out} exists and is not a site built before (no .buildinfo in it); "
            "pass an empty or new folder as --out")
    shutil.rmtree(out)


def build_site(out: Path = DEFAULT_OUT, repo: Path = REPO) -> Path:
    """Build the site into `out` (replacing a previous build there); return its index.html."""
    try:
        from sphinx.cmd.build import build_main
    except ImportError as err:
        raise SiteBuildError(
            f"{err.name} is not installed; install the docs extra: "
            'pip install -e ".[docs]"') from err
    out = Path(out).resolve()
    _clear(out)
    with tempfile.TemporaryDirectory(prefix="vfcore-site-") as tmp:
        source, html = Path(tmp) / "source", Path(tmp) / "html"
        stage(Path(repo), source)
        # Sphinx writes into a temporary folder (myst-nb puts its output images beside the
        # output folder), and the finished site is copied to `out`.
        args = ["-b", "html", "-q", "-W", "--keep-going", "-E", "-c", str(DOCS),
                "-d", str(Path(tmp) / "doctrees"), str(source), str(html)]
        if build_main(args) != 0:
            raise SiteBuildError("Sphinx reported the problems above; the site was not built")
        shutil.copytree(html, out)
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    try:
        index = build_site(args.out)
    except SiteBuildError as err:
        print(f"site: {err}", file=sys.stderr)
        return 1
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
