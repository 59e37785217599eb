"""Whether a scene's outputs are up to date: its ``run.json`` compared with the work asked for.

A scene is skipped when ``OUTDIR/<stem>/run.json`` (read as a
:class:`~geounet.io.run_record.RunRecord`) says its outputs are complete and were made
from the same input bytes, model file and output-relevant settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geounet.engine.settings import PredictSettings
from geounet.io.remote import is_remote, remote_identity
from geounet.io.run_record import RUN_JSON, RunRecord, RunRecordError
from geounet.models.card import ModelCard, file_sha256

# settings that change the outputs: a change of any of them recomputes the scene
OUTPUT_SETTINGS = (
    "tile_size",
    "overlap",
    "precision",
    "device",
    "resample_tolerance",
    "vector",
    "vector_block",
    "vector_format",
    "web",
    "tta",
)
# settings that older run.json files lack, as those runs had them
RECORDED_BEFORE = {"tta": "none", "vector_format": "gpkg", "web": False}
ALWAYS_WRITTEN = (RUN_JSON, "item.json", "scores.tif", "classes.tif")  # outputs of every scene
VECTOR_OUTPUT = "features.gpkg"  # ... and of a scene run with ``vector`` (``vector_format`` gpkg)


def requested_settings(settings: PredictSettings, card: ModelCard) -> dict[str, Any]:
    """The output-relevant settings as asked for, tile size and overlap filled from the card (no torch import).

    ``device`` / ``precision`` stay ``"auto"`` when asked so: :func:`up_to_date` then accepts
    whatever the previous run resolved them to.
    """
    out = {k: getattr(settings, k) for k in OUTPUT_SETTINGS}
    out["tile_size"] = settings.tile_size or card.tile_size
    out["overlap"] = card.overlap if settings.overlap is None else settings.overlap
    return out


def up_to_date(
    final_dir: Path, scene: str | Path, model_sha256: str, settings: dict[str, Any], hash_inputs: bool = False
) -> tuple[bool, str]:
    """(True, "") if ``final_dir`` holds complete outputs of this scene, model and settings; else (False, why).

    ``settings`` come from :func:`requested_settings`. The input is the same if
    its size and mtime (ns) match run.json's, or, when they do not (or ``hash_inputs``),
    if its sha256 does.
    """
    if not (final_dir / RUN_JSON).exists():
        return False, "no previous outputs"
    try:
        record = RunRecord.read(final_dir)
    except RunRecordError as exc:
        return False, f"previous run.json unreadable ({exc.problem})"
    missing = _missing_outputs(record, final_dir)
    if missing:
        return False, f"previous outputs incomplete ({', '.join(missing)} missing)"
    if is_remote(scene):
        why = _remote_changed(record, scene)
        if why:
            return False, why
    else:
        scene = Path(scene)
        st = scene.stat()
        if record.input.bytes != st.st_size:
            return False, "input changed (size)"
        if (hash_inputs or record.input.mtime_ns != st.st_mtime_ns) and record.input.sha256 != file_sha256(scene):
            return False, "input changed (sha256)"
    if record.model.sha256 != model_sha256:
        return False, "model file changed"
    changed = _settings_changed(record.settings, settings)
    if changed:
        return False, "settings changed: " + ", ".join(changed)
    return True, ""


def _remote_changed(record: RunRecord, scene: str | Path) -> str:
    """Why a remote scene may have changed since ``record`` ("" if not).

    Its remote bytes are never hashed: the URL, size and ETag (or Last-Modified) the server
    gives now must match the recorded ones. A scene without an ETag or Last-Modified
    (``s3://`` without botocore installed, other ``/vsi...`` paths, a server that sends
    neither) is recomputed:
    nothing then proves it unchanged.
    """
    if record.input.path != str(scene):
        return "input changed (URL)"
    now = remote_identity(scene)
    if now["etag"] is None and now["last_modified"] is None:
        return "remote input, no ETag or Last-Modified to check it by"
    if now["bytes"] != record.input.bytes:
        return "input changed (size)"
    if now["etag"] != record.input.etag or now["last_modified"] != record.input.last_modified:
        return "input changed (ETag/Last-Modified)"
    return ""


def _missing_outputs(record: RunRecord, final_dir: Path) -> list[str]:
    """The outputs the record lists (and those every run writes) that are absent or empty, sorted."""
    outputs = set(record.outputs) | set(ALWAYS_WRITTEN)
    if record.settings.get("vector") and record.settings.get("vector_format", "gpkg") == "gpkg":
        outputs.add(VECTOR_OUTPUT)  # other formats: one file per layer, each listed in the record's outputs
    return sorted(o for o in outputs if not (final_dir / o).is_file() or (final_dir / o).stat().st_size == 0)


def _settings_changed(recorded: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``"<key> <recorded> -> <requested>"`` for each output setting that differs (``auto`` accepts any)."""
    changed = []
    for k in OUTPUT_SETTINGS:
        a, b = recorded.get(k, RECORDED_BEFORE.get(k)), requested.get(k)
        if k in ("device", "precision") and b == "auto":
            continue
        if (_device_kind(a) != _device_kind(b)) if k == "device" else (a != b):
            changed.append(f"{k} {a!r} -> {b!r}")
    return changed


def _device_kind(device: Any) -> str:
    return str(device or "").split(":")[0]  # cuda:0 and cuda:1 compute the same
