"""The up-to-date check: run.json against the input, the model and the output settings asked for."""

from __future__ import annotations

import json
import shutil

from geounet.batch.state import requested_settings, up_to_date
from geounet.engine.settings import PredictSettings
from geounet.models.card import file_sha256, read_card


def test_up_to_date_notices_input_model_settings_and_missing_outputs(scenes, tiny_model, clean, tmp_path):
    card = read_card(tiny_model)
    sha = file_sha256(tiny_model)
    folder = clean / scenes["a"].stem
    req = requested_settings(PredictSettings(), card)
    assert up_to_date(folder, scenes["a"], sha, req) == (True, "")
    copy = tmp_path / scenes["a"].name  # same bytes, new mtime: hashed, still up to date
    shutil.copy(scenes["a"], copy)
    assert up_to_date(folder, copy, sha, req, hash_inputs=True) == (True, "")
    with open(copy, "r+b") as f:  # one byte changed, same size
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert up_to_date(folder, copy, sha, req)[1] == "input changed (sha256)"
    assert up_to_date(folder, scenes["a"], "0" * 64, req)[1] == "model file changed"
    req2 = requested_settings(PredictSettings(overlap=16), card)
    assert up_to_date(folder, scenes["a"], sha, req2)[1] == "settings changed: overlap 32 -> 16"
    recorded = json.loads((folder / "run.json").read_text())["settings"]["precision"]  # auto settles per CPU
    other = "fp32" if recorded != "fp32" else "bf16"
    req3 = requested_settings(PredictSettings(precision=other), card)
    assert f"precision {recorded!r} -> {other!r}" in up_to_date(folder, scenes["a"], sha, req3)[1]
    req4 = requested_settings(PredictSettings(tta="flip"), card)
    assert up_to_date(folder, scenes["a"], sha, req4)[1] == "settings changed: tta 'none' -> 'flip'"
    older = tmp_path / "older"  # a run.json written before tta existed: those runs had none
    shutil.copytree(folder, older)
    raw = json.loads((older / "run.json").read_text())
    del raw["settings"]["tta"]
    (older / "run.json").write_text(json.dumps(raw))
    assert up_to_date(older, scenes["a"], sha, req) == (True, "")
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / "features.gpkg").unlink()
    assert up_to_date(partial, scenes["a"], sha, req)[1] == "previous outputs incomplete (features.gpkg missing)"


def test_missing_unreadable_or_newer_run_json_means_recompute(scenes, tiny_model, clean, tmp_path):
    card = read_card(tiny_model)
    sha = file_sha256(tiny_model)
    req = requested_settings(PredictSettings(), card)
    folder = tmp_path / "out"
    folder.mkdir()
    assert up_to_date(folder, scenes["a"], sha, req) == (False, "no previous outputs")
    (folder / "run.json").write_text("{not json")
    fresh, why = up_to_date(folder, scenes["a"], sha, req)
    assert not fresh and why.startswith("previous run.json unreadable (unreadable")
    record = json.loads((clean / scenes["a"].stem / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps(record | {"record_version": 99}))
    fresh, why = up_to_date(folder, scenes["a"], sha, req)
    assert not fresh and why.startswith("previous run.json unreadable (record_version 99 is newer")
