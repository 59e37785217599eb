"""STAC API searches as inputs: the Items a search finds become scenes, as Items in a file do.

A :class:`StacSearch` is an API's address plus what to look for: collections, a datetime
or range (RFC 3339, ``2021-05-01/2021-05-31``), property conditions (``eo:cloud_cover<20``)
and at most ``max_items`` Items. The area searched is the run's area of interest
(``--aoi``/``--bbox``, put on WGS 84 longitude/latitude as STAC asks), or anywhere.

Property conditions go to the API as the ``query`` extension where it says it has it, else
as a CQL2 ``filter`` where it has that; every Item found is checked against them here too,
so an API that has neither (or ignores them) still gives only matching Items.
"""

from __future__ import annotations

import logging
import operator
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import shapely
from pyproj import CRS

from geounet.errors import GeounetError, InputError
from geounet.io.stac_input import expand_stac, item_scenes

if TYPE_CHECKING:
    from pathlib import Path

    import pystac

    from geounet.io.aoi import AreaOfInterest
    from geounet.models.card import ModelCard

log = logging.getLogger("geounet")

CONDITION = re.compile(r"^\s*([A-Za-z_][\w:.\-]*)\s*(<=|>=|!=|<|>|=)\s*(.+?)\s*$")
QUERY_OPS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte", "=": "eq", "!=": "neq"}
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}
SCAN_LIMIT = 10_000  # Items looked at when the API cannot filter by properties


@dataclass(frozen=True)
class Condition:
    """``property op value``: ``value`` a number where it reads as one, else a string."""

    prop: str
    op: str
    value: float | str

    def holds(self, properties: dict[str, Any]) -> bool:
        """True if the Item's properties meet it (a missing or incomparable property does not)."""
        have = properties.get(self.prop)
        if have is None:
            return False
        try:
            if isinstance(self.value, float):
                return COMPARE[self.op](float(have), self.value)
            return COMPARE[self.op](str(have), self.value)
        except (TypeError, ValueError):
            return False


def parse_condition(text: str) -> Condition:
    """``"eo:cloud_cover<20"`` -> Condition; a one-line error for anything else."""
    m = CONDITION.match(text)
    if m is None:
        raise InputError(None, f"expected PROPERTY<VALUE (or <=, >, >=, =, !=), got {text!r}")
    prop, op, raw = m.groups()
    raw = raw.strip("'\"")
    try:
        value: float | str = float(raw)
    except ValueError:
        value = raw
    return Condition(prop, op, value)


@dataclass(frozen=True)
class StacSearch:
    """A STAC API item search: the API's root URL and what to look for."""

    url: str
    collections: tuple[str, ...] = ()
    datetime: str | None = None  # RFC 3339 instant or interval, open ends as ".." (STAC API)
    query: tuple[str, ...] = ()  # property conditions, "eo:cloud_cover<20", all must hold
    max_items: int = 100
    conditions: tuple[Condition, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(parse_condition(q) for q in self.query))

    def problems(self, where: str = "stac_search") -> list[str]:
        """What is wrong with the search as given, one line each (no request is made); ``where``: how to name it."""
        out = []
        if not re.match(r"^https?://", self.url):
            out.append(f"{where}: the API must be an http(s):// URL, got {self.url!r}")
        if self.max_items < 1:
            out.append(f"{where}: max_items must be >= 1, got {self.max_items}")
        return out


def _intersects(area: AreaOfInterest | None) -> dict[str, Any] | None:
    """The area as GeoJSON in WGS 84 longitude/latitude (what STAC searches take), or None."""
    if area is None:
        return None
    geom = area.in_crs(CRS.from_epsg(4326).to_wkt())
    return shapely.geometry.mapping(shapely.make_valid(geom))


def search_items(search: StacSearch, area: AreaOfInterest | None = None) -> list[pystac.Item]:
    """The Items the search finds (at most ``max_items``); InputError, one line, when the API fails."""
    from pystac_client import Client

    try:
        client = Client.open(search.url)
    except Exception as exc:  # noqa: BLE001  unreachable, refused, an HTTP error, not JSON: one line
        raise InputError(search.url, f"cannot open it as a STAC API ({_reason(exc)})") from None
    if not client.conforms_to("ITEM_SEARCH"):
        raise InputError(search.url, "is a STAC catalog without item search: give its catalog.json as a scene instead")
    kwargs: dict[str, Any] = {}
    if search.collections:
        kwargs["collections"] = list(search.collections)
    if search.datetime:
        kwargs["datetime"] = search.datetime
    intersects = _intersects(area)
    if intersects is not None:
        kwargs["intersects"] = intersects
    server_filters = bool(search.conditions)
    if search.conditions and client.conforms_to("QUERY"):
        kwargs["query"] = {c.prop: {QUERY_OPS[c.op]: c.value} for c in search.conditions}
    elif search.conditions and client.conforms_to("FILTER"):
        kwargs["filter"] = {"op": "and", "args": [_cql2(c) for c in search.conditions]}
        kwargs["filter_lang"] = "cql2-json"
    else:
        server_filters = False
    limit = search.max_items if server_filters or not search.conditions else SCAN_LIMIT
    found: list[pystac.Item] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pystac-client's conformance warnings: decided above
            for item in client.search(max_items=limit, **kwargs).items():
                if all(c.holds(item.properties) for c in search.conditions):
                    found.append(item)
                    if len(found) >= search.max_items:
                        break
    except Exception as exc:  # noqa: BLE001  the API failed part way: one line
        raise InputError(search.url, f"the search failed ({_reason(exc)})") from None
    return found


def _cql2(c: Condition) -> dict[str, Any]:
    return {"op": "<>" if c.op == "!=" else c.op, "args": [{"property": c.prop}, c.value]}


REASONS = (  # what urllib3/requests say, buried in long messages -> what to tell the user
    ("Connection refused", "connection refused"),
    ("Name or service not known", "host not found"),
    ("Failed to resolve", "host not found"),
    ("timed out", "timed out"),
    ("Max retries exceeded", "no answer after retries"),
)


def _reason(exc: BaseException) -> str:
    """A short reason for a failed request: the network failure if there is one, else the error's first line."""
    text = str(exc).strip()
    status = getattr(exc, "status_code", None)  # pystac-client's APIError
    if status:
        return f"HTTP {status}" + (f": {text.splitlines()[0][:200]}" if text else "")
    for needle, reason in REASONS:
        if needle in text:
            return reason
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def describe(search: StacSearch) -> str:
    """The search in one line, for messages and run records."""
    parts = [search.url]
    if search.collections:
        parts.append("collections " + ",".join(search.collections))
    if search.datetime:
        parts.append("datetime " + search.datetime)
    parts += list(search.query)
    return " ".join(parts)


def search_scenes(
    search: StacSearch,
    area: AreaOfInterest | None,
    out_root: Path,
    card: ModelCard,
    errors: list[GeounetError],
) -> list[str | Path]:
    """The scenes of a STAC API search (one VRT per Item found); a failed search goes to ``errors``."""
    try:
        items = search_items(search, area)
    except GeounetError as exc:
        errors.append(exc)
        return []
    if not items:
        log.warning("%s: the STAC search found no Items: nothing to predict", describe(search))
        return []
    log.info("%s: %d Item(s) found", describe(search), len(items))
    return item_scenes(items, search.url, out_root, card, errors)


def stac_scenes(
    scenes: list[str | Path],
    search: StacSearch | None,
    area: AreaOfInterest | None,
    out_root: Path,
    card: ModelCard,
) -> tuple[list[str | Path], list[GeounetError]]:
    """``scenes`` with each STAC JSON file replaced by its Items' VRTs, plus the Items ``search`` finds.

    Returns the scenes and one error per file, Item or search that cannot give a scene.
    """
    out, errors = expand_stac(scenes, out_root, card)
    if search is not None:
        out += search_scenes(search, area, out_root, card, errors)
    return out, errors
