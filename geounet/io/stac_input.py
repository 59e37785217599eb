"""STAC Items as scenes: each Item of a JSON file (Item, ItemCollection, static Catalog or
Collection) or of a STAC API search (``geounet.io.stac_search``) becomes a GDAL VRT of its assets.

``geounet predict item.json`` reads the Item with pystac (a local file or an ``http(s)://``
URL) and matches each of the model card's
``band_names`` to a band of the Item's raster assets (:func:`match_bands`): by the band's
``name`` (``eo:bands`` of STAC 1.0 or ``bands`` of STAC 1.1, e.g. ``B04``) against the
first word of the card's name (``B04 red``), else by ``common_name`` against the rest
(``red``, ``red edge 1`` -> ``rededge``, ``swir 1`` -> ``swir16`` ...), else by the asset
key. The scene is then a VRT stacking those bands (:func:`item_vrt`, no pixels copied):
on the finest matched band's grid, coarser bands resampled bilinearly into it. It is
written as ``OUTDIR/.<item id>.vrt``, so the output folder is named after the Item id;
its metadata keeps the source Item's href (``STAC_ITEM``: ``item.json``'s ``derived_from``
link) and the Item's datetime (the outputs' acquisition time).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pystac
import rasterio
from affine import Affine

from geounet.errors import GeounetError, InputError
from geounet.io.remote import cloud_defaults, gdal_path, is_remote, url_of
from geounet.models.card import ModelCard

STAC_SUFFIXES = (".json", ".geojson")
STAC_ITEM_TAG = "STAC_ITEM"  # VRT metadata: the source Item's href
RASTER_TYPES = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff", "application/x-hdf")
GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32"}
# the words of a card's band name after the first -> STAC common names (eo extension)
COMMON_NAMES = {
    "blue": ("blue",),
    "green": ("green",),
    "red": ("red",),
    "nir": ("nir",),
    "narrow nir": ("nir08",),
    "red edge": ("rededge",),
    "red edge 1": ("rededge071", "rededge"),
    "red edge 2": ("rededge075", "rededge"),
    "red edge 3": ("rededge078", "rededge"),
    "swir 1": ("swir16",),
    "swir 2": ("swir22",),
    "coastal": ("coastal",),
    "pan": ("pan",),
}


@dataclass(frozen=True)
class AssetBand:
    """One band of a raster asset: the asset's key and GDAL path, the band (1-based), its name and common name."""

    key: str
    href: str
    band: int
    name: str | None = None
    common_name: str | None = None
    data_role: bool = True


def is_stac_input(scene: str | Path) -> bool:
    """True for a ``.json`` / ``.geojson`` file or URL (its path without the query)."""
    s = url_of(scene) or str(scene)
    return s.split("?", 1)[0].lower().endswith(STAC_SUFFIXES)


def read_items(source: str | Path) -> list[pystac.Item]:
    """The Items of an Item, ItemCollection (FeatureCollection of Items), Catalog or Collection file.

    A static Catalog or Collection is walked with pystac (child links followed, relative
    hrefs resolved against each file). InputError, one line, for anything else.
    """
    href = str(source)
    try:
        if is_remote(href):
            data = pystac.StacIO.default().read_json(url_of(href) or href)
        else:
            data = json.loads(Path(href).read_text())
    except FileNotFoundError:
        raise InputError(source, "file not found") from None
    except Exception as exc:  # noqa: BLE001  unreadable or not JSON: one line
        raise InputError(source, f"cannot read it as JSON ({type(exc).__name__}: {exc})") from None
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature" and "stac_version" in data:
            item = pystac.Item.from_dict(data)
            if not is_remote(href):
                href = str(Path(href).resolve())
            item.set_self_href(url_of(href) or href)
            return [item]
        if kind in ("Catalog", "Collection"):  # a static catalog: every Item under it, its links followed
            catalog = pystac.read_file(url_of(href) or (href if is_remote(href) else str(Path(href).resolve())))
            assert isinstance(catalog, pystac.Catalog)
            items = list(catalog.get_items(recursive=True))
            if not items:
                raise InputError(source, f"a STAC {kind} with no Items under it")
            return items
        if kind == "FeatureCollection":
            features = data.get("features") or []
            if features and all(isinstance(f, dict) and "stac_version" in f for f in features):
                items = list(pystac.ItemCollection.from_dict(data))
                base = url_of(href) or (href if is_remote(href) else str(Path(href).resolve()))
                for item in items:
                    if item.get_self_href() is None:  # relative asset hrefs: against the collection file
                        item.set_self_href(base)
                return items
    except GeounetError:
        raise
    except Exception as exc:  # noqa: BLE001  pystac's own complaint, in one line
        raise InputError(source, f"not a valid STAC Item or ItemCollection ({type(exc).__name__}: {exc})") from None
    raise InputError(
        source, "not a STAC Item, ItemCollection, Catalog or Collection (a JSON file as a scene must be one)"
    )


def _is_raster(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    roles = asset.roles or []
    if media:
        return any(media.startswith(t) for t in RASTER_TYPES)
    return "data" in roles and asset.href.split("?", 1)[0].lower().endswith((".tif", ".tiff", ".jp2", ".vrt"))


def asset_bands(item: pystac.Item) -> list[AssetBand]:
    """The bands of the Item's raster assets (roles ``data`` or an image/tiff or jp2 media type), data assets first.

    An asset's bands come from ``bands`` (STAC 1.1) or ``eo:bands`` (STAC 1.0); an asset
    listing neither is one band known by its key only.
    """
    out: list[AssetBand] = []
    for key, asset in item.assets.items():
        if not _is_raster(asset):
            continue
        href = asset.get_absolute_href() or asset.href
        if href.startswith("file://"):
            href = href[len("file://") :]
        path = gdal_path(href)
        data_role = "data" in (asset.roles or []) or not asset.roles
        bands = asset.extra_fields.get("bands") or asset.extra_fields.get("eo:bands") or [{}]
        for i, b in enumerate(bands, 1):
            b = b if isinstance(b, dict) else {}
            common = b.get("eo:common_name") or b.get("common_name")
            out.append(AssetBand(key, path, i, b.get("name"), common, data_role))
    return sorted(out, key=lambda a: not a.data_role)  # stable: a data asset wins a tie


def _pick(candidates: list[AssetBand], hint: str) -> AssetBand | None:
    """The one candidate, or the one whose key or name contains ``hint``, or the first data asset's."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    hinted = [c for c in candidates if hint and hint in (c.key.lower(), (c.name or "").lower())]
    if len(hinted) == 1:
        return hinted[0]
    data = [c for c in candidates if c.data_role]
    return data[0] if len(data) == 1 else None


def match_bands(band_names: list[str], bands: list[AssetBand]) -> tuple[list[AssetBand | None], list[str]]:
    """The asset band for each card band name (None where none), and the names not matched.

    In order: the band ``name`` equal to the first word of the card's name (case-insensitive),
    then the ``common_name`` against the rest of it (:data:`COMMON_NAMES`; a one-word card
    name is its own rest), then the asset key against the first word or those common names.
    """
    matched: list[AssetBand | None] = []
    for card_name in band_names:
        words = card_name.lower().split()
        first = words[0] if words else ""
        rest = " ".join(words[1:]) or first
        commons = COMMON_NAMES.get(rest, (rest.replace(" ", ""),))
        found = _pick([b for b in bands if (b.name or "").lower() == first], first)
        for common in commons if found is None else ():
            found = _pick([b for b in bands if (b.common_name or "").lower() == common], first)
            if found is not None:
                break
        if found is None:
            keys = (first, *commons)
            found = _pick([b for b in bands if b.key.lower() in keys and b.band == 1], first)
        matched.append(found)
    missing = [n for n, m in zip(band_names, matched) if m is None]
    return matched, missing


def safe_id(item_id: str) -> str:
    """The Item id as a file name: path separators and odd characters as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._") or "item"


def item_vrt(item: pystac.Item, card: ModelCard, source: str) -> str:
    """VRT XML stacking the Item's assets in the card's band order, on the finest matched band's grid.

    ``source``: how errors name the Item. Raises GeounetError naming the card bands with
    no asset, or assets that cannot be read or are in different CRSs.
    """
    bands = asset_bands(item)
    matched, missing = match_bands(card.band_names, bands)
    if missing:
        keys = ", ".join(dict.fromkeys(b.key for b in bands)) or "none"
        raise InputError(source, f"no asset for band(s) {', '.join(missing)} (assets: {keys})")
    if any(b is not None and is_remote(b.href) for b in matched):
        cloud_defaults()  # GDAL's options for range reads, as for a remote scene
    headers: dict[str, Any] = {}
    for b in matched:
        assert b is not None
        if b.href in headers:
            continue
        try:
            with rasterio.open(b.href) as src:
                headers[b.href] = (src.crs, src.transform, src.width, src.height, src.dtypes, src.nodatavals)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(source, f"asset {b.key}: cannot read {b.href} ({exc})") from None
    crss = {h[0] for h in headers.values()}
    if len(crss) > 1 or None in crss:
        raise InputError(source, "the matched assets are not all in one CRS")
    finest = min(headers.values(), key=lambda h: abs(h[1].a) * abs(h[1].e))
    crs, grid, width, height = finest[0], finest[1], finest[2], finest[3]
    xres, yres = abs(grid.a), abs(grid.e)
    first = matched[0]
    assert first is not None
    dtype = GDAL_TYPES.get(headers[first.href][4][first.band - 1], "Float32")
    acquired = item.datetime or item.common_metadata.start_datetime
    self_href = item.get_self_href() or source
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{escape(crs.to_wkt())}</SRS>",
        "<GeoTransform>" + ", ".join(f"{v:.17g}" for v in grid.to_gdal()) + "</GeoTransform>",
        f'<Metadata><MDI key="{STAC_ITEM_TAG}">{escape(self_href)}</MDI>'
        + (f'<MDI key="ACQUISITIONDATETIME">{acquired:%Y-%m-%dT%H:%M:%S}</MDI>' if acquired else "")
        + "</Metadata>",
    ]
    positions = {pos: b for pos, b in zip(card.bands, matched)}
    for pos in range(1, max(card.bands) + 1):
        b = positions.get(pos, first)  # a band the model never reads: any source
        assert b is not None
        _, t, w, h, _, nodatas = headers[b.href]
        nodata = nodatas[b.band - 1]
        dx, dy = (t.c - grid.c) / xres, (grid.f - t.f) / yres
        dw, dh = w * abs(t.a) / xres, h * abs(t.e) / yres
        same = Affine(abs(t.a), 0, 0, 0, abs(t.e), 0) == Affine(xres, 0, 0, 0, yres, 0)
        kind, extra = ("SimpleSource", "") if same else ("ComplexSource", ' resampling="bilinear"')
        nodata_xml = f"<NODATA>{nodata:.17g}</NODATA>" if nodata is not None and not same else ""
        parts.append(f'<VRTRasterBand dataType="{dtype}" band="{pos}"><Description>{escape(b.key)}</Description>')
        if nodata is not None:
            parts.append(f"<NoDataValue>{nodata:.17g}</NoDataValue>")
        parts.append(
            f'<{kind}{extra}><SourceFilename relativeToVRT="0">{escape(b.href)}</SourceFilename>'
            f'<SourceBand>{b.band}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{dx:.10g}" yOff="{dy:.10g}" xSize="{dw:.10g}" ySize="{dh:.10g}"/>'
            f"{nodata_xml}</{kind}></VRTRasterBand>"
        )
    parts.append("</VRTDataset>")
    return "\n".join(parts)


def expand_stac(
    scenes: list[str | Path], out_root: Path, card: ModelCard
) -> tuple[list[str | Path], list[GeounetError]]:
    """``scenes`` with each STAC JSON file replaced by one VRT per Item (``out_root/.<item id>.vrt``).

    Returns the scenes and one error per Item (or file) that cannot be a scene; the others still run.
    """
    out: list[str | Path] = []
    errors: list[GeounetError] = []
    for scene in scenes:
        if not is_stac_input(scene):
            out.append(scene)
            continue
        try:
            items = read_items(scene)
        except GeounetError as exc:
            errors.append(exc)
            continue
        out += item_scenes(items, str(scene), out_root, card, errors)
    return out, errors


def item_scenes(
    items: list[pystac.Item], source: str, out_root: Path, card: ModelCard, errors: list[GeounetError]
) -> list[str | Path]:
    """One VRT scene per Item (``out_root/.<item id>.vrt``); an Item that cannot be one goes to ``errors``.

    ``source``: where the Items came from (a file, a search), for messages. A VRT whose
    text is unchanged is not rewritten, so its mtime (``geounet run``'s quick check) stays.
    """
    out: list[str | Path] = []
    for item in items:
        named = source if len(items) == 1 else f"{source} [{item.id}]"
        try:
            xml = item_vrt(item, card, named)
        except GeounetError as exc:
            errors.append(exc)
            continue
        vrt = out_root / f".{safe_id(item.id)}.vrt"
        if not vrt.exists() or vrt.read_text() != xml:
            vrt.write_text(xml)
        out.append(vrt)
    return out
