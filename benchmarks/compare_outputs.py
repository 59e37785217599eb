"""Compare two output folders of ``geounet predict`` (e.g. before and after a refactor) and print what differs.

    python benchmarks/compare_outputs.py OLD/<scene> NEW/<scene>

Rasters: pixels and profiles; GeoPackages: every layer's attributes and geometries (WKB), the
``layer_styles`` timestamps left out, rows in any order (outputs made before 2026-12-03 hold
them in the order their blocks finished); ``run.json`` and ``item.json``: their key sets (values hold
times and paths); ``quicklook.png``: bytes. Exit code 0 when everything is the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio


def _keys(doc: Any, prefix: str = "") -> set[str]:
    if not isinstance(doc, dict):
        return set()
    out = set()
    for key, value in doc.items():
        out.add(prefix + str(key))
        out |= _keys(value, f"{prefix}{key}.")
    return out


def _by_geometry(frame: Any) -> Any:
    """Rows sorted by their geometry's WKB (older outputs hold them in the order their blocks finished)."""
    order = np.argsort(frame.geometry.to_wkb().to_numpy(), kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def compare(a: Path, b: Path) -> bool:
    same = True
    for name in sorted(p.name for p in a.glob("*.tif")):
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            ok = np.array_equal(x.read(), y.read()) and x.profile == y.profile
        print(f"{name}: {'pixels and profile identical' if ok else 'DIFFERENT'}")
        same &= ok
    for name in sorted(p.name for p in a.glob("*.gpkg")):
        for layer, _ in pyogrio.list_layers(a / name):
            fa = pyogrio.read_dataframe(a / name, layer=layer)
            fb = pyogrio.read_dataframe(b / name, layer=layer)
            fa, fb = (f.drop(columns=[c for c in ("update_time",) if c in f]) for f in (fa, fb))
            if "geometry" in fa:
                fa, fb = (_by_geometry(f) for f in (fa, fb))
                ok = fa.drop(columns="geometry").equals(fb.drop(columns="geometry")) and fa.geometry.to_wkb().equals(
                    fb.geometry.to_wkb()
                )
            else:
                ok = fa.equals(fb)
            order = " (rows in any order)" if "geometry" in fa else ""
            print(f"{name} {layer} ({len(fa)} rows): {'identical' if ok else 'DIFFERENT'}{order}")
            same &= bool(ok)
    for name in ("run.json", "item.json"):
        if (a / name).exists():
            ka, kb = _keys(json.loads((a / name).read_text())), _keys(json.loads((b / name).read_text()))
            print(f"{name}: {'same keys' if ka == kb else f'only old {sorted(ka - kb)}, only new {sorted(kb - ka)}'}")
            same &= ka == kb
    if (a / "quicklook.png").exists():
        ok = (a / "quicklook.png").read_bytes() == (b / "quicklook.png").read_bytes()
        print(f"quicklook.png: {'bytes identical' if ok else 'DIFFERENT'}")
        same &= ok
    return same


if __name__ == "__main__":
    sys.exit(0 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
