"""The geounet console script: installed, runs, exits with the command's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from geounet.cli.main import app
from tests.helpers import DEMO_SCENE

runner = CliRunner()


def test_console_script_runs(tiny_model, tmp_path):
    exe = Path(sys.executable).with_name("geounet")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "geounet.cli.main"]
    proc = subprocess.run(
        cmd + ["predict", str(DEMO_SCENE), "--out", str(tmp_path), "--model", str(tiny_model), "--quiet"],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and (tmp_path / "kampala_demo" / "classes.tif").exists()


def test_models_lists_the_bundled_models_with_resolution_and_classes():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    assert "buildings  (buildings.safetensors)" in res.output and "resolution: 0.15 m/px" in res.output
    assert "classes:    background, building" in res.output and "landcover" in res.output
    assert "int8:       buildings.int8.onnx, largest pixel IoU change" in res.output  # its record's measurement
    assert "int8:       none (geounet quantize makes one)" in res.output  # roads and landcover have none


def test_version_prints_the_version_and_exits_0():
    from geounet import __version__

    for flag in ("--version", "-V"):
        res = runner.invoke(app, [flag])
        assert res.exit_code == 0, res.output
        assert res.output == f"geounet {__version__}\n"
