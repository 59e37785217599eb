"""Training data: scenes resampled to the ground resolution and masked, labels in another CRS, chips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geounet.errors import GeounetError
from geounet.io.labels import IGNORE_INDEX
from geounet.training.config import load_config
from geounet.training.data import ChipSampler, Scene, load_scene

CRS = "EPSG:32636"


def test_load_scene_resamples_and_masks(train_raw, write_config) -> None:
    cfg = load_config(write_config(train_raw))
    scene = load_scene(cfg.data.train[0], cfg)  # 0.5 m -> 1 m, top 75 % of the rows
    assert scene.image.shape == (3, 48, 64) and scene.label.shape == (48, 64)
    assert (scene.label[:, :2] == IGNORE_INDEX).all()  # the masked columns
    assert scene.transform.a == pytest.approx(1.0)
    # Square 1 covers 16 x 16 m = 256 px at 1 m; square 2 12 m high; square 3 partly (rows 40..47).
    assert int((scene.label == 1).sum()) == 256 + 16 * 12 + 12 * 8 + 20 * 12


def test_labels_in_another_crs_are_reprojected(
    tmp_path: Path, roof_scene, train_raw, write_config, write_geojson
) -> None:
    import shapely
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(roof_scene.crs, "EPSG:4326", always_xy=True).transform
    geoms = [
        shapely.transform(roof_scene.box(*s), lambda xy: np.column_stack(to_wgs84(xy[:, 0], xy[:, 1])))
        for s in roof_scene.squares
    ]
    wgs84 = write_geojson(tmp_path / "wgs84.geojson", geoms, [{"kind": "roof"}] * len(geoms), crs_epsg=None)
    utm = load_config(write_config(train_raw))
    train_raw["data"]["train"][0]["labels"] = str(wgs84)
    cfg = load_config(write_config(train_raw))
    a, b = load_scene(utm.data.train[0], utm).label, load_scene(cfg.data.train[0], cfg).label
    assert int((b == 1).sum()) == pytest.approx(int((a == 1).sum()), abs=8)
    assert (a != b).mean() < 0.01


def test_chip_sampler_bias_and_padding() -> None:
    label = np.zeros((100, 300), np.uint8)
    label[90:95, 290:295] = 1
    scene = Scene("s", np.zeros((3, 100, 300), np.uint8), label, CRS, Affine.identity(), "uint8")
    biased = ChipSampler([scene], 32, [1], 1.0, 0.0, np.random.default_rng(0))
    assert all((biased.sample()[1] == 1).any() for _ in range(20))
    small = ChipSampler([scene], 128, [1], 0.0, 0.0, np.random.default_rng(0))
    img, lab = small.sample()
    assert img.shape == (3, 128, 128) and (lab[100:] == IGNORE_INDEX).all()


def test_chip_sampler_rare_class_bias_is_measurable() -> None:
    """A class covering 1 % of a scene: unbiased chips rarely contain it, bias 0.5 puts it in at least half."""
    label = np.zeros((400, 400), np.uint8)
    label[100:116, 300:310] = 1  # 160 px of 160,000
    scene = Scene("s", np.zeros((1, 400, 400), np.uint16), label, CRS, Affine.identity(), "uint16")

    def share_with_rare(bias: float) -> float:
        sampler = ChipSampler([scene], 32, [1], bias, 0.0, np.random.default_rng(3))
        return float(np.mean([(sampler.sample()[1] == 1).any() for _ in range(300)]))

    unbiased, biased = share_with_rare(0.0), share_with_rare(0.5)
    assert unbiased < 0.05  # about (32 + 10) * (32 + 16) / 369^2 = 1.5 %
    assert 0.45 < biased < 0.6  # the biased half, plus the few random chips that hit it
    assert share_with_rare(1.0) == 1.0


def test_contact_class_marks_where_two_roofs_meet(
    tmp_path: Path, roof_scene, train_raw, write_config, write_geojson
) -> None:
    """labels.contact_class: building pixels near another building become the contact class, free edges stay."""
    # square 1 (8..24 m) split into two roofs touching along x = 16 m; the other squares stand alone
    squares = [(8, 8, 16, 24), (16, 8, 24, 24), *roof_scene.squares[1:]]
    labels = write_geojson(
        tmp_path / "split.geojson", [roof_scene.box(*s) for s in squares], [{"kind": "roof"}] * len(squares)
    )
    train_raw["data"]["train"][0]["labels"] = str(labels)
    train_raw["classes"].append({"name": "contact", "kind": "background", "color": [0, 0, 255]})
    train_raw["labels"] |= {"contact_class": "contact", "contact_m": 1.0}
    cfg = load_config(write_config(train_raw))
    label = load_scene(cfg.data.train[0], cfg).label  # 1 m pixels, origin at the scene's corner
    contact = label == 2
    assert contact.sum() == 2 * 16  # one pixel column each side of x = 16 m, rows 8..24 m
    assert contact[8:24, 15].all() and contact[8:24, 16].all()
    assert int((label == 1).sum()) + int(contact.sum()) == 256 + 16 * 12 + 12 * 8 + 20 * 12  # the same roofs
    # the card says which class marks contacts, so that predict splits buildings at them
    from geounet.training.card import training_facts

    facts = training_facts(cfg, None, [], 0, {}, 0.0, "cpu", "fp32", 0)
    assert facts["contact_class"] == "contact" and facts["contact_m"] == 1.0
    train_raw["labels"]["contact_class"] = "background"
    with pytest.raises(GeounetError, match="labels.contact_class: 'background' must be a class of kind background"):
        load_config(write_config(train_raw))


def test_a_scene_url_loads_as_the_local_file(roof_scene, train_raw, write_config, tmp_path, monkeypatch) -> None:
    import rasterio
    from rasterio.shutil import copy as gdal_copy

    from tests.helpers import RangeServer

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    www = tmp_path / "www"
    www.mkdir()
    with rasterio.open(roof_scene.image) as src:  # a COG, as scenes on servers are
        gdal_copy(src, www / "roof.tif", driver="COG")
    train_raw["data"]["train"][0]["image"] = str(www / "roof.tif")
    local = load_config(write_config(train_raw))
    mine = load_scene(local.data.train[0], local)
    with RangeServer(www) as server:
        url = f"{server.url}/roof.tif"
        train_raw["data"]["train"][0]["image"] = url
        cfg = load_config(write_config(train_raw))
        assert cfg.data.train[0].image == url  # a URL stays the string given
        remote = load_scene(cfg.data.train[0], cfg)
        assert server.requests > 0
        train_raw["data"]["train"][0]["image"] = f"{server.url}/missing.tif"
        cfg = load_config(write_config(train_raw))
        with pytest.raises(GeounetError, match=r"missing\.tif: cannot read the scene"):
            load_scene(cfg.data.train[0], cfg)
    assert remote.name == mine.name == "roof.tif" and remote.transform == mine.transform
    assert np.array_equal(remote.image, mine.image) and np.array_equal(remote.label, mine.label)


def test_labels_offset_moves_labels_east_and_north_in_metres(
    tmp_path: Path, roof_scene, train_raw, write_config, write_geojson
) -> None:
    """labels_offset_m: [east, north] metres on the scene's grid, whatever the labels' own CRS."""
    import shapely
    from pyproj import Transformer

    plain = load_config(write_config(train_raw))
    base = load_scene(plain.data.train[0], plain)
    train_raw["data"]["train"][0]["labels_offset_m"] = [3.0, -2.0]  # 3 px east, 2 px south at 1 m
    cfg = load_config(write_config(train_raw))
    moved = load_scene(cfg.data.train[0], cfg).label
    roofs, moved_roofs = base.label == 1, moved == 1
    assert moved_roofs.sum() > 0
    assert (moved_roofs[2:, 3:] == roofs[:-2, :-3])[:, 4:].mean() > 0.99  # right of the masked columns
    assert not (moved_roofs == roofs).all()
    from geounet.training.card import training_facts

    facts = training_facts(cfg, None, [], 0, {}, 0.0, "cpu", "fp32", 0)
    assert "moved +3 m east, -2 m north" in facts["train_scenes"][0]  # the card says how labels were moved

    to_wgs84 = Transformer.from_crs(roof_scene.crs, "EPSG:4326", always_xy=True).transform
    geoms = [
        shapely.transform(roof_scene.box(*s), lambda xy: np.column_stack(to_wgs84(xy[:, 0], xy[:, 1])))
        for s in roof_scene.squares
    ]
    train_raw["data"]["train"][0]["labels"] = str(
        write_geojson(tmp_path / "wgs84.geojson", geoms, [{"kind": "roof"}] * len(geoms), crs_epsg=None)
    )
    cfg = load_config(write_config(train_raw))
    assert (load_scene(cfg.data.train[0], cfg).label != moved).mean() < 0.01

    train_raw["data"]["train"][0]["labels_offset_m"] = [3.0]
    with pytest.raises(GeounetError, match=r"labels_offset_m: must be \[east, north\]"):
        load_config(write_config(train_raw))


def test_a_scene_no_label_overlaps_is_a_negative_example(
    tmp_path: Path, roof_scene, train_raw, write_config, write_geojson
) -> None:
    """``negative: true``: labels that miss the scene leave it all background; without it they are an error."""
    far = write_geojson(tmp_path / "far.geojson", [roof_scene.box(1000, 1000, 1010, 1010)], [{"kind": "roof"}])
    train_raw["data"]["train"][0]["labels"] = str(far)
    cfg = load_config(write_config(train_raw))
    with pytest.raises(GeounetError, match="no labels overlap the scene"):
        load_scene(cfg.data.train[0], cfg)  # most often a wrong file or CRS
    train_raw["data"]["train"][0]["negative"] = True
    cfg = load_config(write_config(train_raw))
    label = load_scene(cfg.data.train[0], cfg).label
    assert (label[:, 4:] == 0).all() and (label[:, :2] == IGNORE_INDEX).all()
    from geounet.io.labels import read_vector_labels

    with pytest.raises(GeounetError, match="no labels overlap the scene"):
        read_vector_labels(far, roof_scene.crs, (450000.0, 40000.0, 450064.0, 40064.0), ["background", "building"])


def test_a_negative_scene_needs_no_labels_and_ignores_footprints_it_is_not_given(
    roof_scene, train_raw, write_config
) -> None:
    """A negative scene without ``labels`` (e.g. the rubble of destroyed houses) is all background; other scenes need labels."""
    scene = train_raw["data"]["train"][0]
    del scene["labels"]
    with pytest.raises(GeounetError, match=r"data.train\[0\].labels: missing \(only a scene with negative: true"):
        load_config(write_config(train_raw))
    scene["negative"] = True
    cfg = load_config(write_config(train_raw))
    label = load_scene(cfg.data.train[0], cfg).label
    assert (label[:, 4:] == 0).all() and (label[:, :2] == IGNORE_INDEX).all()  # nodata stays ignored
    from geounet.training.card import training_facts

    facts = training_facts(cfg, None, [], 0, {}, 0.0, "cpu", "fp32", 0)
    assert "no labels" in facts["train_scenes"][0] and "negative: all background" in facts["train_scenes"][0]


def test_unlabelled_pixels_in_the_stale_label_areas_are_ignored_and_labelled_ones_kept(
    tmp_path: Path, roof_scene, train_raw, write_config, write_geojson
) -> None:
    """``unlabelled_ignore_in``: labels newer than the image (houses since destroyed): no background there."""
    import shapely
    from pyproj import Transformer

    plain = load_config(write_config(train_raw))
    base = load_scene(plain.data.train[0], plain).label
    # the left half of the scene (32 m), given in lon/lat: the area is put on the scene's CRS
    to_wgs84 = Transformer.from_crs(roof_scene.crs, "EPSG:4326", always_xy=True).transform
    half = shapely.transform(roof_scene.box(-10, -10, 32, 80), lambda xy: np.column_stack(to_wgs84(xy[:, 0], xy[:, 1])))
    area = write_geojson(tmp_path / "zone.geojson", [half], [{}], crs_epsg=None)
    train_raw["data"]["train"][0]["unlabelled_ignore_in"] = str(area)
    cfg = load_config(write_config(train_raw))
    label = load_scene(cfg.data.train[0], cfg).label  # 1 m pixels: columns 0..31 are in the area
    left, right = label[:, :31], label[:, 33:]
    assert not (left == 0).any()  # no background left in the area
    assert np.array_equal(left == 1, base[:, :31] == 1) and (left == 1).any()  # the labelled roofs kept
    assert np.array_equal(right, base[:, 33:]) and (right == 0).any()  # outside it nothing changes

    train_raw["data"]["train"][0]["unlabelled_ignore_in"] = str(tmp_path / "missing.geojson")
    cfg = load_config(write_config(train_raw))
    with pytest.raises(GeounetError, match="missing.geojson"):
        load_scene(cfg.data.train[0], cfg)
