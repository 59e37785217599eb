"""benchmarks/gpu_train.py: scenes packed here, geounet's training loop run where the GDAL stack is stood in for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from geounet.models.card import read_card
from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_train.py"


def test_packed_scenes_train_without_the_gdal_stack(tmp_path: Path, train_raw, write_config) -> None:
    train_raw["data"]["band_names"] = ["red", "green", "blue"]
    packed = tmp_path / "scenes.pkl.gz"
    subprocess.run([sys.executable, str(SCRIPT), "pack", str(write_config(train_raw)), str(packed)], check=True)
    out = tmp_path / "gpu" / "m.safetensors"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "run", str(packed), "--out", str(out), "--stand-in"]
        + ["--set", "train.loader_workers=2", "--set", "train.epochs=2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "stood in (not installed here): rasterio, pyproj, shapely" in run.stdout
    card = read_card(out)
    assert card.training["epochs"] == 2 and card.band_names == ["red", "green", "blue"]
    assert "--set train.loader_workers=2" in card.training["command"]
    assert "packed by benchmarks/gpu_train.py" in card.training["command"]


def test_only_train_settings_change_after_packing(tmp_path: Path, train_raw, write_config) -> None:
    train_raw["data"]["band_names"] = ["red", "green", "blue"]
    packed = tmp_path / "scenes.pkl.gz"
    subprocess.run([sys.executable, str(SCRIPT), "pack", str(write_config(train_raw)), str(packed)], check=True)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "run", str(packed), "--out", str(tmp_path / "m.safetensors")]
        + ["--set", "data.resolution_m=2"],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "only train.* settings" in run.stderr
