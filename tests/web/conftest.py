"""Fixtures of the web map tests: a real predict folder with its map, ``geounet view`` on loopback, headless Chromium.

The browser is Debian's ``chromium`` (``.ci/run`` installs it), driven by playwright,
with every name but 127.0.0.1 unresolvable. Without it the browser tests fail, saying
so; ``GEOUNET_NO_BROWSER=1`` skips them instead, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from tests.damage.conftest import SyntheticPair
from tests.helpers import DEFAULT_MODEL, DEMO_SCENE, make_tiny_model

CHROMIUM = os.environ.get("GEOUNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",  # WebGL (MapLibre needs it) on the CPU
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # no name resolves but loopback
]


@pytest.fixture(scope="session")
def predicted(tmp_path_factory) -> Path:
    """The demo scene predicted by the default model with ``web=True``: the scene's output folder."""
    out = tmp_path_factory.mktemp("web_predict")
    settings = PredictSettings(web=True, device="cpu", backend="torch", quiet=True)
    [report] = predict_batch([DEMO_SCENE], out, DEFAULT_MODEL, settings)
    assert report.ok, report.error
    assert report.out_dir is not None
    return Path(report.out_dir)


@pytest.fixture(scope="session")
def damaged(tmp_path_factory) -> tuple[SyntheticPair, Path]:
    """The damage tests' synthetic pair (three of nine roofs erased), graded with its map (on by default)."""
    pair = SyntheticPair(tmp_path_factory.mktemp("web_pair"))
    _, pre, post = pair.arrays()
    pair.write(pair.folder / "pre.tif", pre)
    pair.write(pair.folder / "post.tif", post)
    pair.footprints().to_file(pair.folder / "footprints.gpkg", layer="buildings")
    make_tiny_model(pair.model)
    out = pair.folder / "out"
    pair.run(out)
    return pair, out


class ViewServer:
    """``geounet view FOLDER`` in a subprocess; ``url`` is the line it printed."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geounet.cli.main", "view", str(folder), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.close()
            raise AssertionError(f"geounet view printed {self.url!r}; stderr: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def served(predicted) -> Iterator[ViewServer]:
    """``geounet view`` of the predicted folder, for one test."""
    server = ViewServer(predicted)
    yield server
    server.close()


@pytest.fixture
def served_damage(damaged) -> Iterator[ViewServer]:
    """``geounet view`` of the damage run's folder, for one test."""
    server = ViewServer(damaged[1])
    yield server
    server.close()


def _browser_problem() -> str | None:
    """Why no browser test can run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"chromium not found ({CHROMIUM}): apt-get install chromium (.ci/run does), or set GEOUNET_CHROMIUM"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Chromium (playwright ``Browser``), outside names unresolvable."""
    if os.environ.get("GEOUNET_NO_BROWSER") == "1":
        pytest.skip("GEOUNET_NO_BROWSER=1: the web map is not checked in a real browser")
    problem = _browser_problem()
    if problem:
        pytest.fail(f"{problem} (or GEOUNET_NO_BROWSER=1 to skip the browser tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
