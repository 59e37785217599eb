"""run.json: one record type, written atomically, read back the same; old layouts read, newer refused."""

from __future__ import annotations

import hashlib
import json

import pytest

from geounet.io.run_record import RECORD_VERSION, InputRecord, ModelRecord, RunRecord, RunRecordError, fingerprint


def _record(path: str = "/data/a.tif") -> RunRecord:
    return RunRecord(
        geounet_version="0.1.0",
        created_utc="2026-01-01T00:00:00+00:00",
        input=InputRecord(path, 10, "ab", "EPSG:32633", [0.5, 0.0, 1.0, 0.0, -0.5, 2.0], 4, 3, 0.5, 123),
        model=ModelRecord("/m.safetensors", "m", "cd", ["background", "building"], 0.3),
        settings={"tile_size": 128},
        working_grid={"resampled": False},
        tiles={"run": 1},
        vector=None,
        timings={"total_s": 1.0},
        outputs={"scores.tif": {}},
    )


def test_written_record_reads_back_equal_and_versioned(tmp_path):
    record = _record()
    path = record.write(tmp_path)
    assert path == tmp_path / "run.json" and not list(tmp_path.glob(".run.json*"))
    raw = json.loads(path.read_text())
    assert raw["record_version"] == RECORD_VERSION and raw["input"]["mtime_ns"] == 123
    assert list(raw)[:2] == ["geounet_version", "created_utc"]
    assert RunRecord.read(tmp_path) == record


def test_records_before_the_version_field_read_as_version_1_and_newer_are_refused(tmp_path):
    raw = _record().to_dict()
    del raw["record_version"]
    raw["input"]["added_later"] = 1  # a key this geounet does not know: ignored
    (tmp_path / "run.json").write_text(json.dumps(raw))
    assert RunRecord.read(tmp_path).record_version == 1
    raw["record_version"] = RECORD_VERSION + 1
    (tmp_path / "run.json").write_text(json.dumps(raw))
    with pytest.raises(RunRecordError, match="newer"):
        RunRecord.read(tmp_path)


@pytest.mark.parametrize(
    "text,problem",
    [
        (None, "not found"),
        ("{", "unreadable"),
        ("[]", "not a JSON object"),
        ('{"created_utc": "x"}', "not a geounet run record"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path, text, problem):
    if text is not None:
        (tmp_path / "run.json").write_text(text)
    with pytest.raises(RunRecordError, match=problem) as err:
        RunRecord.read(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / "run.json") in str(err.value)


def test_fingerprint_names_size_and_hash(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    fp = fingerprint(f)
    assert fp == {"path": str(f.resolve()), "bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
    assert fingerprint(f, sha256=False) == {"path": str(f.resolve()), "bytes": 3}
