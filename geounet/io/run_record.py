"""``run.json``: the provenance record of one scene's output folder, written and read here only.

A :class:`RunRecord` says what made the folder's files: the input (path, size, sha256,
modification time in ns, CRS, geotransform and size of its grid, ground resolution in
metres per pixel), the model (file, sha256, classes, training resolution in m/px), the
resolved settings, the working grid, tile counts, the vector stage's layers and rules,
timings in seconds and the outputs. ``record_version`` numbers the layout; a record
written before the field existed reads as version 1. Batch reruns compare a folder's
record with the work asked for (``geounet.batch.state``); the STAC Item copies from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from geounet.errors import GeounetError
from geounet.io.remote import is_remote, remote_identity
from geounet.models.card import file_sha256

RUN_JSON = "run.json"
RECORD_VERSION = 1


class RunRecordError(GeounetError):
    """A ``run.json`` that is missing, unreadable, or of a newer layout than this geounet reads."""


def fingerprint(path: str | Path, sha256: bool = True) -> dict[str, Any]:
    """``{"path": absolute path, "bytes": size[, "sha256": hex digest]}`` of a file; a remote one as :func:`input_identity`."""
    if is_remote(path):
        return {"path": str(path)} | remote_identity(path)
    path = Path(path)
    out: dict[str, Any] = {"path": str(path.resolve()), "bytes": path.stat().st_size}
    if sha256:
        out["sha256"] = file_sha256(path)
    return out


def input_identity(scene: str | Path) -> dict[str, Any]:
    """The scene's identity fields of :class:`InputRecord`.

    A local file: absolute path, size, sha256 and mtime (ns). A remote scene
    (:mod:`geounet.io.remote`): its URL as given, and the size, ETag and Last-Modified
    the server tells (one HEAD request, for ``s3://`` through botocore if installed; None where unknown);
    remote bytes are never hashed (``sha256`` is empty).
    """
    if is_remote(scene):
        return {"path": str(scene), "sha256": ""} | remote_identity(scene)
    return fingerprint(scene) | {"mtime_ns": Path(scene).stat().st_mtime_ns}


@dataclass
class InputRecord:
    """The scene: file identity, and its grid (CRS as text, GDAL-order affine, pixels, metres per pixel)."""

    path: str
    bytes: int | None  # None: a remote scene whose server did not say
    sha256: str  # empty for a remote scene
    crs: str
    transform: list[float]
    width: int
    height: int
    ground_resolution_m: float
    mtime_ns: int | None = None  # with ``bytes``, the quick up-to-date check
    etag: str | None = None  # remote scenes: the server's ETag and Last-Modified, when it gives them
    last_modified: str | None = None


@dataclass
class ModelRecord:
    """The model file: path, sha256, card name, class names, training resolution (m/px)."""

    path: str
    name: str
    sha256: str
    classes: list[str]
    resolution_m: float
    requested: str | None = None  # the bundled model's name when the user named one (this file: its variant)


@dataclass
class RunRecord:
    """One scene's ``run.json``."""

    geounet_version: str
    created_utc: str  # ISO 8601, UTC, whole seconds
    input: InputRecord
    model: ModelRecord
    settings: dict[str, Any]  # resolved PredictSettings fields, plus chunk_tiles
    working_grid: dict[str, Any]
    tiles: dict[str, int]
    vector: dict[str, Any] | None
    timings: dict[str, float]  # seconds
    outputs: dict[str, Any] = field(default_factory=dict)  # file name -> what it holds
    record_version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/run.json`` (temporary name, then renamed); returns its path."""
        path = Path(folder) / RUN_JSON
        tmp = path.with_name(f".{RUN_JSON}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | Path | None = None) -> RunRecord:
        """A record from parsed JSON; unknown keys of a newer geounet are ignored, a newer layout is refused."""
        version = raw.get("record_version", 1)
        if not isinstance(version, int) or version > RECORD_VERSION:
            raise RunRecordError(
                source, f"record_version {version!r} is newer than this geounet reads ({RECORD_VERSION})"
            )
        try:
            kwargs = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
            kwargs["input"] = _known(InputRecord, raw["input"])
            kwargs["model"] = _known(ModelRecord, raw["model"])
            return cls(**kwargs)
        except (KeyError, TypeError) as exc:
            raise RunRecordError(source, f"not a geounet run record ({type(exc).__name__}: {exc})") from None

    @classmethod
    def read(cls, folder: str | Path) -> RunRecord:
        """``folder/run.json`` as a record; :class:`RunRecordError` when missing or unreadable."""
        path = Path(folder) / RUN_JSON
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise RunRecordError(path, "not found") from None
        except (OSError, ValueError) as exc:
            raise RunRecordError(path, f"unreadable ({exc})") from None
        if not isinstance(raw, dict):
            raise RunRecordError(path, "not a JSON object")
        return cls.from_dict(raw, path)


def _known(cls: type, raw: dict[str, Any]) -> Any:
    return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


DAMAGE_RECORD_VERSION = 1


@dataclass(kw_only=True)
class DamageRecord:
    """A damage run's ``run.json`` (``geounet damage``): what made ``damage.gpkg``, ``change.tif`` and the quicklook.

    ``inputs``: the pre and post tiles and the footprints file (:func:`fingerprint`, no
    hash); ``model``: path, card name, sha256, training resolution (m/px); ``settings``: the
    damage settings with device and precision resolved; ``method``: the analysis grid, the
    overlap, and how scores and grades are made; ``footprints``: where the buildings came
    from and what was repaired or skipped; ``buildings``: counts per grade.
    """

    geounet_version: str
    created_utc: str  # ISO 8601, UTC, whole seconds
    task: str = "damage"
    inputs: dict[str, Any]
    model: dict[str, Any]
    settings: dict[str, Any]
    method: dict[str, Any]
    footprints: dict[str, Any]
    buildings: dict[str, Any]
    timings: dict[str, float]  # seconds
    outputs: dict[str, Any]  # file name -> what it holds
    record_version: int = DAMAGE_RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/run.json`` (temporary name, then renamed); returns its path."""
        path = Path(folder) / RUN_JSON
        tmp = path.with_name(f".{RUN_JSON}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        os.replace(tmp, path)
        return path
