"""The notebooks' static site: built offline by `make site`'s function, served on localhost and
opened in headless Chromium, which must load every figure from the site itself."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]
WINDOW = (1280, 1800)
# A 2x1 PNG (one red, one blue pixel) for the notebooks of the made-up repositories.
TINY_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAABCAIAAAB7QOjdAAAAD0lEQVR42mP4z8DAwPAfAAcAAf/"
            "Hcw2XAAAAAElFTkSuQmCC")


def _load_builder():
    spec = importlib.util.spec_from_file_location("vfcore_site_build", REPO / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_builder()


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _png_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum("image/png" in out.get("data", {}) for c in cells for out in c.get("outputs", []))


def _notebook(cells: list[dict]) -> str:
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}}
    return json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5})


def _markdown(source: str, cell_id: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source}


def _figure_cell(cell_id: str) -> dict:
    output = {"output_type": "display_data", "metadata": {},
              "data": {"image/png": TINY_PNG, "text/plain": "<Figure>"}}
    return {"cell_type": "code", "id": cell_id, "metadata": {}, "execution_count": 1,
            "source": "plot()", "outputs": [output]}


def _made_up_repo(root: Path, first_cell: str) -> Path:
    """A repository with one smoke notebook, its copy at a `paper` profile, one claims table."""
    (root / "notebooks" / "paper").mkdir(parents=True)
    (root / "figures" / "smoke").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "docs" / "summary.png").write_bytes(base64.b64decode(TINY_PNG))
    (root / "README.md").write_text(
        "# Made up\n\nThe landing text.\n\n![a summary](docs/summary.png)\n", encoding="utf-8")
    for folder, profile in (root / "notebooks", "smoke"), (root / "notebooks" / "paper", "paper"):
        cells = [_markdown(first_cell, "a"), _figure_cell("b")]
        text = json.loads(_notebook(cells))
        text["metadata"]["papermill"] = {"parameters": {"profile": profile}}
        (folder / "01_demo.ipynb").write_text(json.dumps(text), encoding="utf-8")
    (root / "figures" / "smoke" / "claims_01_demo.md").write_text(
        "| claim | holds |\n|---|---|\n| the made-up claim | yes |\n", encoding="utf-8")
    return root


# ---- the build ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    before = {name: _digest(REPO / name) for name in ("notebooks", "figures")}
    out = tmp_path_factory.mktemp("site") / "html"
    index = build.build_site(out)
    assert index == out / "index.html"
    after = {name: _digest(REPO / name) for name in ("notebooks", "figures")}
    assert after == before, "building the site changed files under notebooks/ or figures/"
    return out


def test_site_has_a_page_per_notebook_and_the_claims_page(site):
    for paths in build.find_notebooks(REPO).values():
        for path in paths:
            page = site / path.relative_to(REPO).with_suffix(".html")
            assert page.is_file(), f"no page for {path.name}"
    claims = (site / "claims.html").read_text(encoding="utf-8")
    for paths in build.find_claims(REPO).values():
        for path in paths:
            assert path.stem.removeprefix("claims_") in claims


def test_build_picks_up_every_notebook_and_profile(tmp_path):
    repo = _made_up_repo(tmp_path / "repo", "# Demo notebook\n\nSome text.")
    build.build_site(tmp_path / "site", repo=repo)
    smoke = (tmp_path / "site" / "notebooks" / "01_demo.html").read_text(encoding="utf-8")
    paper = (tmp_path / "site" / "notebooks" / "paper" / "01_demo.html").read_text(encoding="utf-8")
    assert "Demo notebook" in smoke and "Demo notebook" in paper
    assert smoke.count("<img") == paper.count("<img") == 1
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "The landing text." in index
    assert "Notebooks (smoke profile)" in index and "Notebooks (paper profile)" in index
    assert index.count("<img") == 1 and (tmp_path / "site" / "_images" / "summary.png").is_file()
    claims = (tmp_path / "site" / "claims.html").read_text(encoding="utf-8")
    assert "the made-up claim" in claims and 'href="notebooks/01_demo.html"' in claims


def test_build_fails_on_a_broken_notebook(tmp_path):
    repo = _made_up_repo(tmp_path / "repo", "# Demo\n\nSee [the missing page](missing.md).")
    with pytest.raises(build.SiteBuildError, match="Sphinx reported"):
        build.build_site(tmp_path / "site", repo=repo)


def test_build_names_a_readme_image_that_is_missing(tmp_path):
    repo = _made_up_repo(tmp_path / "repo", "# Demo")
    (repo / "docs" / "summary.png").unlink()
    with pytest.raises(build.SiteBuildError, match="docs/summary.png"):
        build.build_site(tmp_path / "site", repo=repo)
    assert not (tmp_path / "site").exists()


def test_build_refuses_to_replace_a_folder_that_is_not_a_site(tmp_path):
    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(build.SiteBuildError, match="--out"):
        build.build_site(tmp_path)
    assert (tmp_path / "keep.txt").read_text(encoding="utf-8") == "mine"


# ---- the browser -------------------------------------------------------------------------------


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(site) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's browser with "
                    "`apt-get install chromium` (.ci/run does this)")


class DevTools:
    """A minimal Chrome DevTools Protocol client over the browser's WebSocket (flat sessions)."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {method} within {timeout} s")

    def open(self, url: str) -> str:
        """Open `url` in a new tab and wait for its load event; return the tab's session."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[DevTools]:
    _require_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = profile.parent / "chromium.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=sink, stderr=subprocess.STDOUT)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not (port_file.exists() and len(port_file.read_text().split()) == 2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Chromium did not start; its log:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    port, path = port_file.read_text().split()
    client = DevTools(f"ws://127.0.0.1:{port}{path}")
    yield client
    client.ws.close()
    process.terminate()
    process.wait(timeout=10)


IMAGES = """Array.from(document.images, img => ({
    src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth,
    output: img.closest("div.cell_output") !== null}))"""
# Every script, stylesheet and image the page asks for.
RESOURCES = """Array.from(document.querySelectorAll("script[src], link[rel=stylesheet], img"),
    e => e.src || e.href)"""
LINKS = "Array.from(document.querySelectorAll('a[href]'), a => a.href)"
FORMULAS = """(window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve())
    .then(() => document.querySelectorAll("mjx-container").length)"""


def _figure_notebook() -> Path:
    """The first notebook with a figure among its stored outputs."""
    paths = [p for group in build.find_notebooks(REPO).values() for p in group]
    with_figures = [p for p in paths if _png_outputs(p) > 0]
    assert with_figures, "no committed notebook has a PNG output to show"
    return with_figures[0]


def _assert_loaded(images: list[dict], page: str) -> None:
    broken = [img["src"] for img in images if not (img["complete"] and img["width"] > 0)]
    assert not broken, f"images that did not load on {page}: {broken}"


def _assert_local(resources: list[str], server: str, page: str) -> None:
    offsite = [url for url in resources if not url.startswith(server)]
    assert not offsite, f"{page} asks for resources from outside the site: {offsite}"


def test_index_loads_and_links_every_notebook(browser, server):
    session = browser.open(server + "index.html")
    _assert_loaded(browser.evaluate(session, IMAGES), "index.html")
    _assert_local(browser.evaluate(session, RESOURCES), server, "index.html")
    links = {url.split("#")[0] for url in browser.evaluate(session, LINKS)}
    for group in build.find_notebooks(REPO).values():
        for path in group:
            assert server + path.relative_to(REPO).with_suffix(".html").as_posix() in links


def test_notebook_page_shows_every_figure(browser, server):
    notebook = _figure_notebook()
    page = notebook.relative_to(REPO).with_suffix(".html").as_posix()
    session = browser.open(server + page)
    images = browser.evaluate(session, IMAGES)
    _assert_loaded(images, page)
    assert sum(img["output"] for img in images) == _png_outputs(notebook)
    _assert_local(browser.evaluate(session, RESOURCES), server, page)
    if "$" in notebook.read_text(encoding="utf-8"):
        assert browser.evaluate(session, FORMULAS) > 0, "MathJax typeset no formula"


def test_screenshot_of_a_notebook_page(server, tmp_path_factory):
    _require_chromium()
    profile = tmp_path_factory.mktemp("chromium-shot")
    shot = tmp_path_factory.mktemp("screenshot") / "notebook_page.png"
    page = _figure_notebook().relative_to(REPO).with_suffix(".html").as_posix()
    subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=5000", server + page],
        check=True, capture_output=True, timeout=60)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is nearly blank"
