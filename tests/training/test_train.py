"""Training library: config checks, ground resolution, scene reading, chips, a tiny end-to-end run, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine
from shapely.geometry import box, mapping

from geounet.errors import GeounetError
from geounet.io.labels import IGNORE_INDEX
from geounet.models.card import load_model, read_card
from geounet.training.train import (
    AugmentConfig,
    ChipSampler,
    Scene,
    augment,
    confusion,
    iou_per_class,
    load_config,
    load_scene,
    train_model,
)

CRS = "EPSG:32636"
ORIGIN = (450000.0, 40064.0)  # top-left corner, UTM 36N metres
SQUARES = [(8, 8, 24, 24), (40, 8, 56, 20), (8, 40, 20, 60), (36, 36, 56, 56)]  # (x0, y0, x1, y1) metres from top-left


@pytest.fixture()
def scene_files(tmp_path: Path) -> tuple[Path, Path]:
    """A 128 x 128 px RGB scene at 0.5 m/px (64 m square) with bright "roofs" and a mask, and their outlines."""
    rng = np.random.default_rng(1)
    img = rng.integers(40, 90, size=(3, 128, 128), dtype=np.uint8)
    geoms = []
    for x0, y0, x1, y1 in SQUARES:
        img[0, int(y0 * 2) : int(y1 * 2), int(x0 * 2) : int(x1 * 2)] = 220
        geoms.append(box(ORIGIN[0] + x0, ORIGIN[1] - y1, ORIGIN[0] + x1, ORIGIN[1] - y0))
    mask = np.full((128, 128), 255, np.uint8)
    mask[:, :4] = 0  # outside the footprint: must be ignored
    image = tmp_path / "scene.tif"
    profile = dict(driver="GTiff", width=128, height=128, count=3, dtype="uint8", crs=CRS,
                   transform=Affine(0.5, 0, ORIGIN[0], 0, -0.5, ORIGIN[1]))
    with rasterio.open(image, "w", **profile) as ds:
        ds.write(img)
        ds.write_mask(mask)
    labels = tmp_path / "roofs.geojson"
    features = [{"type": "Feature", "properties": {"kind": "roof"}, "geometry": mapping(g)} for g in geoms]
    labels.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32636"}},
        "features": features,
    }))
    return image, labels


def config_dict(image: Path, labels: Path, out: Path) -> dict:
    return {
        "name": "tiny",
        "output": str(out),
        "classes": [
            {"name": "background", "kind": "background", "color": [0, 0, 0]},
            {"name": "building", "kind": "building", "color": [230, 60, 60]},
        ],
        "data": {
            "train": [{"image": str(image), "labels": str(labels), "window": [0, 0, 1, 0.75]}],
            "val": [{"image": str(image), "labels": str(labels), "window": [0, 0.75, 1, 1]}],
            "resolution_m": 1.0,
        },
        "labels": {"class_field": "kind", "value_map": {"roof": "building"}},
        "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8], "tile_size": 64,
                  "overlap": 16},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "chip_size": 32, "warmup_steps": 1,
                  "lr": 0.01, "threads": 2, "ema_decay": 0.5},
        "augment": {"saturation": 0.3, "hue": 0.05, "grayscale": 0.2},
        "card": {"licence": "test data", "data": "synthetic"},
    }


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_typos_are_listed(tmp_path: Path, scene_files) -> None:
    raw = config_dict(*scene_files, tmp_path / "m.safetensors")
    raw["train"]["lerning_rate"] = 0.1
    raw["train"]["batchsize"] = 4
    raw["data"]["train"][0]["imag"] = "x.tif"
    raw["colour"] = "red"
    with pytest.raises(GeounetError) as err:
        load_config(write_config(tmp_path, raw))
    msg = str(err.value)
    assert "unknown config keys" in msg and "\n" not in msg
    assert "train.batchsize (did you mean train.batch_size?)" in msg
    assert "data.train[0].imag (did you mean data.train[0].image?)" in msg
    assert "train.lerning_rate (known here: epochs, " in msg  # nothing close: the section's keys
    assert "colour (" in msg


def test_config_values_are_checked(tmp_path: Path, scene_files) -> None:
    raw = config_dict(*scene_files, tmp_path / "m.safetensors")
    raw["train"]["epochs"] = "many"
    with pytest.raises(GeounetError, match="train.epochs must be an integer"):
        load_config(write_config(tmp_path, raw))
    raw = config_dict(*scene_files, tmp_path / "m.safetensors")
    raw["train"]["loss"] = "hinge"
    raw["labels"]["value_map"] = {"roof": "house"}
    with pytest.raises(GeounetError) as err:
        load_config(write_config(tmp_path, raw))
    assert "train.loss" in str(err.value) and "'house'" in str(err.value)


def test_config_relative_paths_and_overrides(tmp_path: Path, scene_files) -> None:
    raw = config_dict(*scene_files, tmp_path / "m.safetensors")
    raw["output"] = "models/m.safetensors"
    cfg = load_config(write_config(tmp_path, raw), {"train.epochs": 7, "output": None})
    assert cfg.output == tmp_path / "models" / "m.safetensors"
    assert cfg.train.epochs == 7
    assert cfg.checkpoint_path == tmp_path / "models" / "m.ckpt.pt"


def test_config_settings_from_the_command_line(tmp_path: Path, scene_files) -> None:
    path = write_config(tmp_path, config_dict(*scene_files, tmp_path / "m.safetensors"))
    cfg = load_config(path, settings=["train.lr=0.005", "augment.flips=false", "model.decoder_channels=[32, 8, 8]",
                                      "train.class_weights=[0.5, 2]", "card.licence=CC0"])
    assert cfg.train.lr == 0.005 and cfg.augment.flips is False and cfg.model.decoder_channels == [32, 8, 8]
    assert cfg.train.class_weights == [0.5, 2.0] and cfg.card.licence == "CC0"
    with pytest.raises(GeounetError, match=r"train.epoch \(did you mean train.epochs\?\)"):
        load_config(path, settings=["train.epoch=3"])
    with pytest.raises(GeounetError, match="train.lr must be a number"):
        load_config(path, settings=["train.lr=fast"])
    with pytest.raises(GeounetError, match="expects KEY=VALUE"):
        load_config(path, settings=["train.lr"])


def test_load_scene_resamples_and_masks(tmp_path: Path, scene_files) -> None:
    cfg = load_config(write_config(tmp_path, config_dict(*scene_files, tmp_path / "m.safetensors")))
    scene = load_scene(cfg.data.train[0], cfg)  # 0.5 m -> 1 m, top 75 % of the rows
    assert scene.image.shape == (3, 48, 64) and scene.label.shape == (48, 64)
    assert (scene.label[:, :2] == IGNORE_INDEX).all()  # the masked columns
    assert scene.transform.a == pytest.approx(1.0)
    # Square 1 covers 16 x 16 m = 256 px at 1 m; square 2 12 m high; square 3 partly (rows 40..47).
    assert int((scene.label == 1).sum()) == 256 + 16 * 12 + 12 * 8 + 20 * 12


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


def test_augment_keeps_image_and_labels_aligned() -> None:
    y = torch.randint(0, 2, (4, 32, 32))
    x = y[:, None].float().repeat(1, 3, 1, 1)
    aug = AugmentConfig(brightness=0.0, contrast=0.0, noise=0.0)
    xa, ya = augment(x, y, aug, torch.Generator().manual_seed(0))
    assert torch.equal(xa[:, 0].long(), ya)
    assert not torch.equal(ya, y)  # something was flipped or rotated


def test_colour_augmentations() -> None:
    from geounet.training.train import _hue_rotation

    red = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(_hue_rotation(2 * np.pi / 3) @ red, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    grey = torch.tensor([0.4, 0.4, 0.4])
    assert torch.allclose(_hue_rotation(1.0) @ grey, grey, atol=1e-6)
    x = torch.rand(2, 3, 8, 8)
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    only_grey = AugmentConfig(flips=False, rot90=False, brightness=0, contrast=0, noise=0, grayscale=1.0, p_color=1.0)
    xa, _ = augment(x, y, only_grey, torch.Generator().manual_seed(0))
    assert torch.allclose(xa, x.mean(dim=1, keepdim=True).expand_as(x))


def test_iou_from_confusion() -> None:
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 1, 0, 1]])
    cm = confusion(pred, label, 2)
    assert cm.tolist() == [[2, 1], [1, 3]]
    assert iou_per_class(cm)[1] == pytest.approx(3 / 5)


def test_train_end_to_end_and_resume(tmp_path: Path, scene_files) -> None:
    out = tmp_path / "models" / "tiny.safetensors"
    cfg_path = write_config(tmp_path, config_dict(*scene_files, out))
    result = train_model(load_config(cfg_path), command="geounet train train.yaml", progress=False)
    assert result.epochs == 1 and out.is_file() and result.checkpoint.is_file()

    net, card = load_model(out)
    assert card.class_names == ["background", "building"] and card.resolution_m == 1.0
    assert card.training["command"] == "geounet train train.yaml"
    assert card.training["licence"] == "test data" and card.training["epochs"] == 1
    assert 0.0 <= card.training["val"]["mean_iou"] <= 1.0
    assert next(net.parameters()).dtype == torch.float32
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:  # weights are stored as float16
        assert f.get_tensor("encoder.conv1.weight").dtype == torch.float16
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)

    cfg = load_config(cfg_path, {"train.epochs": 2, "train.resume": str(result.checkpoint)})
    resumed = train_model(cfg, progress=False)
    assert resumed.epochs == 2
    rows = list(csv.DictReader(open(result.csv)))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["step"] == "4"
    assert read_card(out).training["epochs"] == 2

    other = load_config(cfg_path, {"train.resume": str(result.checkpoint)})
    other.model.encoder = "resnet34"
    with pytest.raises(GeounetError, match="encoder"):
        train_model(other, progress=False)


def test_cli_reports_errors_in_one_line(tmp_path: Path, scene_files) -> None:
    import typer
    from typer.testing import CliRunner

    from geounet.cli.train import train

    app = typer.Typer()
    app.command()(train)
    raw = config_dict(*scene_files, tmp_path / "m.safetensors")
    raw["trian"] = {}
    res = CliRunner().invoke(app, [str(write_config(tmp_path, raw))])
    assert res.exit_code == 2
    assert "error:" in res.output and "trian" in res.output
    assert "Traceback" not in res.output
    del raw["trian"]
    res = CliRunner().invoke(app, [str(write_config(tmp_path, raw)), "--set", "train.batchsize=4"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "did you mean train.batch_size?" in res.output


# --------------------------------------------------------------------------- bad input, before any training


def _forbid_training(monkeypatch) -> None:
    """Make building the network fail: errors must come before training starts."""

    def no_network(*args, **kwargs):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr("geounet.training.train.build_network", no_network)


def _geojson(path: Path, geoms, props=None, crs_epsg: int | None = 32636) -> Path:
    features = [{"type": "Feature", "properties": (props or [{}] * len(geoms))[i], "geometry": mapping(g)}
                for i, g in enumerate(geoms)]
    doc = {"type": "FeatureCollection", "features": features}
    if crs_epsg:
        doc["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{crs_epsg}"}}
    path.write_text(json.dumps(doc))
    return path


def test_labels_in_another_crs_are_reprojected(tmp_path: Path, scene_files) -> None:
    from pyproj import Transformer
    import shapely

    image, labels = scene_files
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform
    geoms = [shapely.transform(box(ORIGIN[0] + x0, ORIGIN[1] - y1, ORIGIN[0] + x1, ORIGIN[1] - y0),
                               lambda xy: np.column_stack(to_wgs84(xy[:, 0], xy[:, 1])))
             for x0, y0, x1, y1 in SQUARES]
    wgs84 = _geojson(tmp_path / "wgs84.geojson", geoms, [{"kind": "roof"}] * len(geoms), crs_epsg=None)
    utm = load_config(write_config(tmp_path, config_dict(image, labels, tmp_path / "m.safetensors")))
    cfg = load_config(write_config(tmp_path, config_dict(image, wgs84, tmp_path / "m.safetensors")))
    a, b = load_scene(utm.data.train[0], utm).label, load_scene(cfg.data.train[0], cfg).label
    assert int((b == 1).sum()) == pytest.approx(int((a == 1).sum()), abs=8)
    assert (a != b).mean() < 0.01


@pytest.mark.parametrize(
    "case, message",
    [
        ("far", "no labels overlap the scene"),
        ("empty", "label file has no features"),
        ("unknown_class", "'church'"),
        ("raster_far", "does not overlap the scene"),
    ],
)
def test_bad_labels_fail_before_training(tmp_path: Path, scene_files, monkeypatch, case: str, message: str) -> None:
    image, _ = scene_files
    if case == "far":  # 10 km east of the scene
        labels = _geojson(tmp_path / "far.geojson", [box(ORIGIN[0] + 10000, ORIGIN[1] - 20, ORIGIN[0] + 10020, ORIGIN[1])],
                          [{"kind": "roof"}])
    elif case == "empty":
        labels = _geojson(tmp_path / "empty.geojson", [])
    elif case == "unknown_class":
        labels = _geojson(tmp_path / "church.geojson", [box(ORIGIN[0] + 8, ORIGIN[1] - 24, ORIGIN[0] + 24, ORIGIN[1] - 8)],
                          [{"kind": "church"}])
    else:
        labels = tmp_path / "far.tif"
        with rasterio.open(labels, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=CRS,
                           transform=Affine(1, 0, ORIGIN[0] + 10000, 0, -1, ORIGIN[1])) as ds:
            ds.write(np.ones((1, 8, 8), np.uint8))
    out = tmp_path / "m.safetensors"
    raw = config_dict(image, labels, out)
    raw["data"]["val"][0]["labels"] = str(scene_files[1])  # only the training labels are bad
    cfg = load_config(write_config(tmp_path, raw))
    _forbid_training(monkeypatch)
    with pytest.raises(GeounetError, match=message) as err:
        train_model(cfg, progress=False)
    assert err.value.path == str(labels)
    assert "\n" not in str(err.value)
    assert not out.exists() and not cfg.checkpoint_path.exists()


# --------------------------------------------------------------------------- shipped configs and default models

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config, model", [("roads_lasvegas.yaml", "roads"), ("landcover_brandenburg.yaml", "landcover")])
def test_shipped_configs_match_their_default_models(config: str, model: str) -> None:
    """The config in configs/ is the one the default model's card was trained with; the file stays small."""
    cfg = load_config(REPO / "configs" / config)
    path = REPO / "data" / "models" / f"{model}.safetensors"
    assert cfg.output == path
    card = read_card(path)
    assert card.class_names == cfg.class_names and [c.kind for c in card.classes] == [c.kind for c in cfg.classes]
    assert card.bands == cfg.data.bands and card.resolution_m == cfg.data.resolution_m
    assert card.scale == cfg.data.scale and card.tile_size == cfg.model.tile_size
    assert card.training["command"] == f"geounet train configs/{config}"
    assert card.training["val"]["mean_iou"] > 0.2
    assert path.stat().st_size < 30e6
    assert (REPO / "data" / "models" / f"{model}.md").is_file()


def test_losses_ignore_unlabelled_pixels_and_weight_classes() -> None:
    from geounet.training.train import make_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    noisy = target.clone()
    noisy[:, :4] = IGNORE_INDEX
    changed = logits.clone()
    changed[:, :, :4] = 10 * torch.randn(2, 3, 4, 8)  # logits under ignored pixels do not matter
    for name in ("dice_ce", "ce", "bce", "dice", "focal", "tversky"):
        loss = make_loss(name)
        assert torch.isfinite(loss(logits, target))
        assert loss(logits, noisy).item() == pytest.approx(loss(changed, noisy).item(), rel=1e-5), name
    for name in ("ce", "bce", "dice_ce"):
        plain, ones = make_loss(name), make_loss(name, class_weights=[1.0, 1.0, 1.0])
        assert ones(logits, noisy).item() == pytest.approx(plain(logits, noisy).item(), rel=1e-5)
        # All weight on class 2: a prediction error on class-0 pixels no longer counts in the CE / BCE term.
        only_2 = make_loss(name, class_weights=[0.0, 0.0, 1.0])
        target_2 = torch.where(target == 2, target, torch.zeros_like(target))
        worse_on_0 = logits.clone()
        worse_on_0[:, 1] += 5.0 * (target_2 == 0)  # push class-0 pixels towards class 1
        if name != "dice_ce":  # (the dice term has no weights)
            assert only_2(worse_on_0, target_2).item() == pytest.approx(only_2(logits, target_2).item(), rel=1e-4)
        assert plain(worse_on_0, target_2).item() > plain(logits, target_2).item()


@pytest.mark.parametrize(
    "model, scene, layers",
    [
        ("roads", "lasvegas_pan_east.tif", {"roads", "road_centerlines"}),  # 1 band uint16, EPSG:4326
        ("landcover", "brandenburg_s2_east.tif", {"landcover"}),  # 4 bands uint16, UTM
    ],
)
def test_default_models_map_their_demo_crops(tmp_path: Path, model: str, scene: str, layers: set[str]) -> None:
    """Each default model runs through `geounet predict` on its held-out demo crop and finds its features."""
    import geopandas as gpd
    import pyogrio
    from typer.testing import CliRunner

    from geounet.cli.main import app

    src = REPO / "data" / "demo" / scene
    res = CliRunner().invoke(app, ["predict", str(src), "--out", str(tmp_path), "--quiet",
                                   "--model", str(REPO / "data" / "models" / f"{model}.safetensors")])
    assert res.exit_code == 0, res.output
    out = tmp_path / src.stem
    with rasterio.open(out / "classes.tif") as ds, rasterio.open(src) as s:
        assert ds.crs == s.crs and ds.transform == s.transform
        classes = ds.read(1)
    gpkg = out / "features.gpkg"
    assert layers <= {name for name, _ in pyogrio.list_layers(gpkg)}
    for layer in layers:
        assert len(gpd.read_file(gpkg, layer=layer)) > 0
    if model == "landcover":  # no background class: every pixel is one of the seven, and several occur
        assert classes.max() < 7 and len(np.unique(classes)) >= 5
    else:
        assert 0.01 < (classes == 1).mean() < 0.2
