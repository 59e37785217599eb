"""The Joplin tornado track with the bundled satellite model (../shared/data): standing houses against the track.

No damage map exists here, so the check is geographic (``docs/damage.md``, ``benchmarks/damage.py``):
the buildings along the northern edge of the pre/post overlap, which the post image shows standing,
against the rest, across which the track runs. The building model must see no roofs in the
debris (the presence drop is the strongest damage signal), and the damage score must rank the
track above the edge.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
from scipy.stats import rankdata

from geounet.damage.run import run_damage
from geounet.damage.settings import DamageSettings
from geounet.models.registry import pick_variant
from tests.helpers import shared_file

SEVERE = ("major-damage", "destroyed")


def test_the_tornado_track_grades_above_the_standing_edge(tmp_path: Path) -> None:
    footprints = shared_file("joplin/footprints_2020.geojson")
    joplin = footprints.parent
    pre, post = sorted((joplin / "pre").glob("*.tif")), sorted((joplin / "post").glob("*.tif"))
    model = pick_variant("buildings", 0.6).path  # what `--model buildings` picks for these scenes
    run_damage(pre, post, tmp_path, footprints, model, DamageSettings(device="cpu", quiet=True))
    table = gpd.read_file(tmp_path / "damage.gpkg", layer="buildings")
    table = table[table["damage"] != "not_assessed"]
    assert len(table) > 300
    b = table.geometry.bounds
    northing = ((b.miny + b.maxy) / 2).to_numpy()
    edge = northing >= np.quantile(northing, 0.85)  # the overlap's northern edge: standing houses
    track = ~edge
    # no roofs seen in the debris: the post image's building probability collapses across the track
    assert float(np.median(table["building_prob_post"][track])) < 0.2
    assert float(np.median(table["building_prob_post"][edge])) > 0.3
    severe_track = table["damage"][track].isin(SEVERE).mean()
    severe_edge = table["damage"][edge].isin(SEVERE).mean()
    assert severe_track >= 3 * severe_edge and severe_track > 0.4
    ranks = rankdata(table["damage_score"].to_numpy())  # AUC = Mann-Whitney U / (n_track n_edge)
    n_t, n_e = int(track.sum()), int(edge.sum())
    auc = (ranks[track].sum() - n_t * (n_t + 1) / 2) / (n_t * n_e)
    assert auc >= 0.75
