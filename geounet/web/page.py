"""The page itself: ``web/index.html`` with the map's settings in it, and the vendored map library beside it.

Everything the page loads is in the folder (``static/``: MapLibre GL JS, the PMTiles
protocol, their licences, the page's own script and style); the settings are written
into the HTML so that nothing else needs fetching to describe the run.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

STATIC = Path(__file__).with_name("static")
STATIC_FILES = (
    "maplibre-gl.js",
    "maplibre-gl.css",
    "pmtiles.js",
    "app.js",
    "app.css",
    "LICENSE.maplibre-gl.txt",
    "LICENSE.pmtiles.txt",
    "LICENSE.fflate.txt",
    "VERSIONS.md",
)
INDEX = "index.html"

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="geounet {version}">
<title>{title}</title>
<link rel="stylesheet" href="static/maplibre-gl.css">
<link rel="stylesheet" href="static/app.css">
</head>
<body>
<div id="panel"></div>
<div id="map"></div>
<noscript>This map needs JavaScript and WebGL.</noscript>
<script>window.GEOUNET_MAP = {config};</script>
<script src="static/maplibre-gl.js"></script>
<script src="static/pmtiles.js"></script>
<script src="static/app.js"></script>
</body>
</html>
"""


def write_page(web: Path, config: dict[str, Any], version: str) -> Path:
    """Write ``web/index.html`` (``config``: the map's settings, see ``geounet.web.folder``) and ``web/static/``."""
    static = web / "static"
    static.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        shutil.copyfile(STATIC / name, static / name)
    # JSON inside <script>: "</" would end the script, so it is written as "<\\/"
    text = json.dumps(config, indent=1, allow_nan=False).replace("</", "<\\/")
    page = web / INDEX
    page.write_text(_TEMPLATE.format(version=html.escape(version), title=html.escape(config["title"]), config=text))
    return page
