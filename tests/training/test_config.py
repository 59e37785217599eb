"""Training config: every problem at once (typos, types, values), relative paths, overrides, --set, shipped configs."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from geounet.models.card import CLASS_KINDS, read_card
from geounet.schema import ConfigError
from geounet.training.config import ClassKind, load_config
from tests.helpers import REPO, error_lines, invoke


def test_config_typos_are_listed(tmp_path: Path, train_raw, write_config) -> None:
    raw = train_raw
    raw["train"]["lerning_rate"] = 0.1
    raw["train"]["batchsize"] = 4
    raw["data"]["train"][0]["imag"] = "x.tif"
    raw["colour"] = "red"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(raw))
    msg = str(err.value)
    assert "\n" not in msg and len(err.value.problems) == 4
    assert "train: unknown key 'batchsize' (did you mean 'batch_size'?)" in msg
    assert "data.train[0]: unknown key 'imag' (did you mean 'image'?)" in msg
    assert "train: unknown key 'lerning_rate' (known: batch_size, " in msg  # nothing close: the section's keys
    assert "unknown key 'colour' (" in msg


def test_config_values_are_checked(tmp_path: Path, train_raw, write_config) -> None:
    raw = train_raw
    raw["train"]["epochs"] = "ten"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(raw))
    assert err.value.problems == ["train.epochs: expected an integer, got str 'ten'"]
    raw["train"]["epochs"] = 1
    raw["train"]["loss"] = "hinge"  # a type problem (a choice) ...
    raw["labels"]["value_map"] = {"roof": "house"}  # ... and a value problem: reported together
    raw["model"]["overlap"] = 15
    with pytest.raises(ConfigError) as err:
        load_config(write_config(raw))
    problems = err.value.problems
    assert "train.loss: expected one of dice_ce, ce, bce, dice, focal, tversky, got str 'hinge'" in problems
    assert any(p.startswith("labels.value_map.roof: class 'house' is not in classes") for p in problems)
    assert "model.overlap: must be even, at least 0 and smaller than tile_size" in problems
    assert len(problems) == 3


def test_config_value_checks_cover_every_section(tmp_path: Path, train_raw, write_config) -> None:
    raw = train_raw
    raw["classes"][1]["color"] = [0, 0, 300]
    raw["data"]["val"] = []
    raw["data"]["std"] = [0.2]
    raw["labels"] = {"unlabelled": "background"}
    raw["train"]["chip_size"] = 30
    raw["train"]["class_weights"] = [1.0, 1.0]
    raw["train"]["loss"] = "dice"
    raw["output"] = "m.pt"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(raw))
    assert err.value.path == str(tmp_path / "train.yaml")
    assert err.value.problems == [
        "classes[1].color: must be three values 0..255",
        "data.val: no scenes (hold out a scene, or a region with window:)",
        "data.std: needs one entry per band",
        "labels: set class_field or default_class",
        "train.chip_size: must be a positive multiple of 32",
        "train.class_weights: works with loss ce, bce, dice_ce only",
        "output: must be a .safetensors file",
    ]


def test_class_kinds_are_the_cards() -> None:
    assert typing.get_args(ClassKind) == CLASS_KINDS


def test_config_relative_paths_and_overrides(tmp_path: Path, train_raw, write_config) -> None:
    raw = train_raw
    raw["output"] = "models/m.safetensors"
    cfg = load_config(write_config(raw), {"train.epochs": 7, "output": None})
    assert cfg.output == tmp_path / "models" / "m.safetensors"
    assert cfg.train.epochs == 7
    assert cfg.checkpoint_path == tmp_path / "models" / "m.ckpt.pt"
    cfg = load_config(write_config(raw), {"output": "elsewhere/m.safetensors", "train.resume": "m.ckpt.pt"})
    assert cfg.output == Path("elsewhere/m.safetensors")  # paths given as overrides are taken as they are
    assert cfg.train.resume == Path("m.ckpt.pt")
    with pytest.raises(ConfigError) as err:  # overrides get the same checks as keys in the file
        load_config(write_config(raw), {"train.precision": "bf17", "output": "m.onnx"})
    assert err.value.problems == [
        "train.precision: expected one of auto, fp32, bf16, got str 'bf17'",
        "output: must be a .safetensors file",
    ]


def test_config_settings_from_the_command_line(tmp_path: Path, train_raw, write_config) -> None:
    path = write_config(train_raw)
    cfg = load_config(
        path,
        settings=[
            "train.lr=0.005",
            "augment.flips=false",
            "model.decoder_channels=[32, 8, 8]",
            "train.class_weights=[0.5, 2]",
            "card.licence=CC0",
        ],
    )
    assert cfg.train.lr == 0.005 and cfg.augment.flips is False and cfg.model.decoder_channels == [32, 8, 8]
    assert cfg.train.class_weights == [0.5, 2.0] and cfg.card.licence == "CC0"
    with pytest.raises(ConfigError, match=r"train: unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(path, settings=["train.epoch=3"])
    with pytest.raises(ConfigError, match="train.lr: expected a number, got str 'fast'"):
        load_config(path, settings=["train.lr=fast"])
    with pytest.raises(ConfigError, match="expects KEY=VALUE") as err:
        load_config(path, settings=["train.lr", "train.epochs=zero"])
    assert len(err.value.problems) == 2  # the bad --set and the bad value, together


def test_cli_reports_errors_in_one_line(tmp_path: Path, train_raw, write_config) -> None:
    import typer
    from typer.testing import CliRunner

    from geounet.cli.train import train

    app = typer.Typer()
    app.command()(train)
    raw = train_raw
    raw["trian"] = {}
    res = CliRunner().invoke(app, [str(write_config(raw))])
    assert res.exit_code == 2
    assert "error:" in res.output and "unknown key 'trian' (did you mean 'train'?)" in res.output
    assert "Traceback" not in res.output
    del raw["trian"]
    res = CliRunner().invoke(app, [str(write_config(raw)), "--set", "train.batchsize=4", "--precision", "fp16"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0
    assert "train: unknown key 'batchsize' (did you mean 'batch_size'?)" in res.output
    assert "train.precision: expected one of auto, fp32, bf16, got str 'fp16'" in res.output


@pytest.mark.parametrize(
    "config, model",
    [
        ("roads_lasvegas_pretrained.yaml", "roads"),
        ("landcover_brandenburg_s2_10bands.yaml", "landcover"),
        ("buildings_satellite.yaml", "buildings_satellite"),
        ("buildings_contact.yaml", "buildings"),
    ],
)
def test_shipped_configs_match_their_default_models(config: str, model: str) -> None:
    from geounet.training.card import _scene_text

    """The config in configs/ is the one the default model's card was trained with; the file stays small."""
    cfg = load_config(REPO / "configs" / config)
    path = REPO / "data" / "models" / f"{model}.safetensors"
    assert cfg.output == path
    card = read_card(path)
    assert card.class_names == cfg.class_names and [c.kind for c in card.classes] == [c.kind for c in cfg.classes]
    assert card.bands == cfg.data.bands and card.resolution_m == cfg.data.resolution_m
    assert card.scale == cfg.data.scale and card.tile_size == cfg.model.tile_size
    assert card.decision_weights == cfg.card.decision_weights
    # a config adopted from configs/tried/ keeps the command it was trained with (run in that folder)
    trained_as = {"buildings_contact.yaml": "geounet train buildings_drone_places.yaml"}
    assert card.training["command"] in (f"geounet train configs/{config}", trained_as.get(config))
    assert card.training["train_scenes"] == [_scene_text(s) for s in cfg.data.train]  # the same scenes
    assert card.training["val"]["mean_iou"] > 0.2
    assert path.stat().st_size < 30e6
    assert (REPO / "data" / "models" / f"{model}.md").is_file()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("task", "damage_heads", "task: expected one of segment, damage_head, got str 'damage_heads'"),
        ("classes.1.kind", "house", "classes[1].kind: expected one of background, building, road, landcover, "),
        ("data.resampling", "lanczos", "data.resampling: expected one of auto, nearest, bilinear, cubic, average, "),
        ("labels.unlabelled", "nodata", "labels.unlabelled: expected one of background, ignore, "),
        ("model.architecture", "UNet", "model.architecture: expected one of Unet, UnetPlusPlus, FPN, PSPNet, "),
        ("model.encoder", "resnet-18", "model.encoder: expected one of resnet18, resnet34, "),
        (
            "model.encoder_weights",
            "imagenet",
            "model.encoder_weights: unknown weights 'imagenet' (known: efficientnet-",
        ),
        ("train.loss", "hinge", "train.loss: expected one of dice_ce, ce, bce, dice, focal, tversky, "),
        ("train.precision", "int8", "train.precision: expected one of auto, fp32, bf16, "),
        ("train.device", "gpu", "train.device: expected one of auto, cpu, cuda, "),
        ("train.save_dtype", "int8", "train.save_dtype: expected one of float16, float32, "),
    ],
)
def test_an_unknown_choice_is_refused_listing_the_valid_ones(key, value, expected, train_raw, write_config) -> None:
    node = train_raw
    *parents, last = key.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    result = invoke("train", write_config(train_raw), "--no-progress")
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert expected in line and repr(value) in line


def test_an_unknown_precision_flag_is_refused(train_raw, write_config) -> None:
    result = invoke("train", write_config(train_raw), "--precision", "int8", "--no-progress")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: {write_config(train_raw)}: train.precision: expected one of auto, fp32, bf16, got str 'int8'"
    ]


def _ground(path: Path, window: list[float] | None = None):
    """The ground a scene's valid pixels cover (within ``window``: fractions x0, y0, x1, y1), lon/lat."""
    import rasterio
    import shapely
    from rasterio.features import shapes
    from rasterio.warp import transform_geom
    from shapely.geometry import shape

    with rasterio.open(path) as src:
        x0, y0, x1, y1 = window or [0.0, 0.0, 1.0, 1.0]
        mask = src.dataset_mask()
        r0, r1, c0, c1 = round(y0 * src.height), round(y1 * src.height), round(x0 * src.width), round(x1 * src.width)
        mask[:r0], mask[r1:], mask[:, :c0], mask[:, c1:] = 0, 0, 0, 0
        parts = [shape(g) for g, v in shapes(mask, mask=mask > 0, transform=src.transform) if v]
        ground = shapely.union_all(parts).segmentize(max(abs(src.transform.a), abs(src.transform.e)) * 16)
        return shape(transform_geom(src.crs, "EPSG:4326", ground.__geo_interface__))


@pytest.mark.parametrize(
    "config, other_places",
    [
        ("buildings_satellite.yaml", False),
        ("tried/buildings_satellite_contact.yaml", False),
        ("tried/buildings_satellite_places_contact_multival_lite2_e50.yaml", True),
        ("tried/buildings_satellite_erase.yaml", True),
        ("tried/buildings_satellite_other_places.yaml", True),
    ],
)
def test_the_satellite_configs_never_train_on_held_out_ground(config: str, other_places: bool) -> None:
    """No training or validation scene of a satellite building config lies on a held-out scene's ground.

    Held out: the eastern Joplin pre tiles, the eastern part of post-event tile_33548-5137 and kampala_b
    (../shared/data, checked when present) and the held-out scenes of data/training/satellite (always checked).
    """
    cfg = load_config(REPO / "configs" / config)
    satellite = REPO / "data/training/satellite"
    held_out: list[tuple[Path, list[float] | None]] = [
        (satellite / "oam_area4.tif", None),
        (satellite / "spacenet_rio_heldout.tif", None),
        (satellite / "banepa.tif", None),
    ]
    shared = REPO.parent / "shared" / "data"
    held_out += [(shared / "joplin/pre/tile_1361-9136.tif", None), (shared / "joplin/pre/tile_1361-10160.tif", None)]
    held_out += [
        (shared / "joplin/post/tile_33548-5137.tif", [0.17, 0.0, 1.0, 1.0]),
        (shared / "kampala/kampala_b.tif", None),
    ]
    held_out_ground = {p.name: _ground(p, w) for p, w in held_out if p.exists()}
    scenes = [s for s in [*cfg.data.train, *cfg.data.val] if Path(s.image).exists()]
    if other_places:  # the repo's own scenes are always checked
        assert sum(Path(s.image).resolve().is_relative_to(REPO) for s in scenes) >= 4
    for scene in scenes:
        ground = _ground(scene.image, scene.window)
        for name, other in held_out_ground.items():
            overlap = ground.intersection(other).area / ground.area
            assert overlap < 1e-6, f"{scene.image} {scene.window} lies on held-out {name} ({overlap:.1%})"


def test_building_removal_needs_buildings_to_remove_and_ground_to_leave(train_raw, write_config) -> None:
    train_raw["augment"] = {"erase": 0.25}
    train_raw["classes"][1]["kind"] = "landcover"
    result = invoke("train", write_config(train_raw), "--no-progress")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: {write_config(train_raw)}: augment.erase: needs a class of kind building and one of kind "
        "background to leave behind"
    ]
    train_raw["augment"] = {"erase": 1.5}
    assert "augment.erase: must be in 0..1" in error_lines(invoke("train", write_config(train_raw), "--no-progress"))[0]


def test_card_decision_weights_are_checked_against_the_classes(train_raw, write_config) -> None:
    train_raw["card"] = {"decision_weights": {"building": 2.5}}
    assert load_config(write_config(train_raw)).card.decision_weights == {"building": 2.5}
    train_raw["card"] = {"decision_weights": {"roof": 2.5}}
    [line] = error_lines(invoke("train", write_config(train_raw), "--no-progress"))
    assert line.endswith("card.decision_weights: unknown class 'roof' (classes: background, building)")
