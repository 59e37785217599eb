"""The web map in a real browser: headless Chromium loads ``geounet view``'s page from loopback.

Checks that the buildings are drawn where ``features.gpkg`` says they are (pixel colours
at their places on the screen, and none where there is no building), that a click shows
the clicked building's attributes, that the page opened as a file says how to serve it,
and that no request ever left 127.0.0.1.
"""

from __future__ import annotations

import io
import time
from urllib.parse import urlparse

import geopandas as gpd
import numpy as np
import pytest
import shapely
from PIL import Image

from geounet.compute.change import GRADE_COLOURS
from geounet.models.card import read_card
from geounet.web.folder import BACKGROUND, FILL_OPACITY
from tests.helpers import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], float)


def _screen_point(page, lon: float, lat: float) -> tuple[float, float]:
    """Page pixel of a longitude and latitude on the map."""
    return tuple(
        page.evaluate(
            """([lon, lat]) => {
                const p = window.geounetMap.project([lon, lat]);
                const r = window.geounetMap.getCanvas().getBoundingClientRect();
                return [p.x + r.left, p.y + r.top];
            }""",
            [lon, lat],
        )
    )


def _loopback_only(context) -> tuple[list[str], list[str]]:
    """Route every request of ``context``: one to a host but 127.0.0.1 is aborted and listed.

    Returns (the URLs that tried to leave loopback, every URL requested), filled as the page runs.
    """
    outside: list[str] = []
    seen: list[str] = []

    def guard(route) -> None:
        url = route.request.url
        seen.append(url)
        if urlparse(url).hostname not in (None, "", "127.0.0.1"):  # data: and blob: URLs have no host
            outside.append(url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", guard)
    return outside, seen


def _ready(page, errors: list[str]) -> None:
    """Wait for the map's first complete drawing; a page that never gets there says why (WebGL, a script error)."""
    try:
        page.wait_for_function("window.geounetReady === true", timeout=45_000)
    except Exception as exc:  # playwright's TimeoutError: the page's own errors are the useful part
        raise AssertionError(f"the map never finished drawing: {errors or exc}") from None


def _idle(page) -> None:
    """Wait until the map has drawn everything it asked for."""
    page.evaluate("new Promise(r => { window.geounetMap.once('idle', r); window.geounetMap.triggerRepaint(); })")


def test_buildings_are_drawn_where_the_geopackage_says_and_clicks_show_their_attributes(
    predicted, served, browser, tmp_path
):
    t0 = time.perf_counter()
    server = served
    context = browser.new_context(viewport={"width": 1100, "height": 800}, device_scale_factor=1)
    outside, seen = _loopback_only(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "404" not in m.text else None)
    page.goto(server.url)
    _ready(page, errors)
    assert not errors, errors

    # the panel: the run's facts and the legend
    panel = page.inner_text("#panel")
    assert "kampala_demo.tif" in panel and "buildings" in panel
    buildings = gpd.read_file(predicted / "features.gpkg", layer="buildings")
    assert f"building {len(buildings)}" in panel

    # only the polygons: scene and class raster switched off
    page.click("#toggle-scene")
    page.click("#toggle-classes")
    _idle(page)
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), float)
    page.screenshot(path=str(tmp_path / "map.png"))  # kept for a look when this fails

    colour = _rgb("#{:02x}{:02x}{:02x}".format(*read_card(DEFAULT_MODEL).classes[1].color))
    background = _rgb(BACKGROUND)
    fill = FILL_OPACITY * colour + (1 - FILL_OPACITY) * background
    metric = buildings.to_crs(buildings.estimate_utm_crs())
    inside = metric.geometry.buffer(-0.4)  # 0.4 m inside the walls: clear of the outlines
    biggest = np.argsort(-metric.area.to_numpy())[:5]
    points = gpd.GeoSeries([inside.iloc[i].representative_point() for i in biggest], crs=metric.crs).to_crs(4326)
    for i, p in zip(biggest, points):
        x, y = _screen_point(page, p.x, p.y)
        got = shot[round(y), round(x)]
        assert np.abs(got - fill).max() <= 12, f"building {i} at ({x:.0f}, {y:.0f}): {got} instead of {fill}"

    # where there is no building within 1 m: the background
    union = metric.union_all().buffer(1.0)
    minx, miny, maxx, maxy = metric.total_bounds
    xs, ys = np.linspace(minx, maxx, 17)[2:-2], np.linspace(miny, maxy, 17)[2:-2]  # clear of the scale bar
    grid = [shapely.Point(x, y) for x in xs for y in ys]
    empty = [g for g in grid if not union.contains(g)][:5]
    assert empty, "the test needs places without buildings"
    for p in gpd.GeoSeries(empty, crs=metric.crs).to_crs(4326):
        x, y = _screen_point(page, p.x, p.y)
        got = shot[round(y), round(x)]
        assert np.abs(got - background).max() <= 6, f"no building at ({x:.0f}, {y:.0f}) but {got} is drawn"

    # a click on a building: its attributes in a popup
    k = int(biggest[1])
    x, y = _screen_point(page, points.iloc[1].x, points.iloc[1].y)
    page.mouse.click(x, y)
    page.wait_for_selector(".maplibregl-popup-content", timeout=10_000)
    rows = page.eval_on_selector_all(
        ".maplibregl-popup-content tr", "rows => rows.map(r => [r.cells[0].innerText, r.cells[1].innerText])"
    )
    shown = dict(rows)
    row = buildings.iloc[k]
    assert shown["class"] == row["class"]
    for field in ("score", "area_m2", "perimeter_m"):
        assert float(shown[field]) == pytest.approx(float(row[field]), rel=1e-6), field

    # the page opened as a file says how to serve it
    page.goto((predicted / "web" / "index.html").as_uri())
    page.wait_for_selector("#file-warning", timeout=10_000)
    assert "geounet view" in page.inner_text("#file-warning")

    context.close()
    assert not outside, f"requests left loopback: {outside}"
    assert any(u.endswith(".pmtiles") for u in seen) and any("/tiles/classes/" in u for u in seen)
    assert time.perf_counter() - t0 < 60


def test_damage_map_draws_each_building_in_its_grade_colour_and_says_what_drove_it(damaged, served_damage, browser):
    pair, out = damaged
    context = browser.new_context(viewport={"width": 1000, "height": 760}, device_scale_factor=1)
    outside, _ = _loopback_only(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served_damage.url)
    _ready(page, errors)
    page.click("#toggle-post")  # the polygons alone, over the background
    _idle(page)
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), float)
    graded = gpd.read_file(out / "damage.gpkg", layer="buildings")
    centres = graded.geometry.centroid.to_crs(4326)
    background = _rgb(BACKGROUND)
    for (_, row), c in zip(graded.iterrows(), centres):
        x, y = _screen_point(page, c.x, c.y)
        expected = FILL_OPACITY * np.array(GRADE_COLOURS[row["damage"]], float) + (1 - FILL_OPACITY) * background
        got = shot[round(y), round(x)]
        assert np.abs(got - expected).max() <= 12, (row["footprint_id"], row["damage"], got, expected)

    worst = graded.sort_values("damage_score").iloc[-1]
    c = centres[worst.name]
    page.mouse.click(*_screen_point(page, c.x, c.y))
    page.wait_for_selector(".maplibregl-popup-content", timeout=10_000)
    shown = dict(
        page.eval_on_selector_all(
            ".maplibregl-popup-content tr", "rows => rows.map(r => [r.cells[0].innerText, r.cells[1].innerText])"
        )
    )
    assert shown["damage"] == worst["damage"]
    assert float(shown["damage_score"]) == pytest.approx(worst["damage_score"], rel=1e-6)
    # the tests' settings grade on the image change alone (prob_weight 0): the change term drove it
    assert shown["driven by"].startswith("image change (F = ")
    context.close()
    assert not outside, outside
