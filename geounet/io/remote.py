"""Scenes that are not local files: ``http(s)://`` and ``s3://`` URLs and GDAL ``/vsi...`` paths.

A scene is ``str | Path``: a remote one stays the string the user gave (``Path`` would
turn ``http://`` into ``http:/``); :func:`gdal_path` is what GDAL opens
(``https://h/k`` -> ``/vsicurl/https://h/k``, ``s3://b/k`` -> ``/vsis3/b/k``) and
:func:`scene_name` its file name (the last path component) for messages and output
folders. :func:`cloud_defaults` sets GDAL's options for reading over HTTP once, each
only when the user has not set it; credentials come from GDAL's own ``AWS_*`` variables.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_SCHEMES = ("http://", "https://", "s3://")

# GDAL configuration options for range reads over HTTP (https://gdal.org/user/configoptions.html).
# CPL_VSIL_CURL_ALLOWED_EXTENSIONS is not set (it would refuse other extensions); GDAL_CACHEMAX is left alone.
CLOUD_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing to look for sidecar files
    # SERIAL: each range through /vsicurl/'s shared block cache. YES and PARALLEL bypass it, so the
    # blocks that neighbouring tiles share are fetched again by each (benchmarks/remote_read.py)
    "GDAL_HTTP_MULTIRANGE": "SERIAL",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "VSI_CACHE": "TRUE",
}


def is_remote(scene: str | Path) -> bool:
    """True for an ``http(s)://`` or ``s3://`` URL or a GDAL ``/vsi...`` path."""
    s = str(scene)
    return s.lower().startswith(_SCHEMES) or s.startswith("/vsi")


def as_scene(scene: str | Path) -> str | Path:
    """A remote scene as its string, anything else as a ``Path``."""
    return str(scene) if is_remote(scene) else Path(scene)


def gdal_path(scene: str | Path) -> str:
    """The name GDAL opens: ``/vsicurl/`` for ``http(s)://``, ``/vsis3/`` for ``s3://``, else unchanged."""
    s = str(scene)
    low = s.lower()
    if low.startswith(("http://", "https://")):
        return "/vsicurl/" + s
    if low.startswith("s3://"):
        return "/vsis3/" + s[len("s3://") :]
    return s


def url_of(scene: str | Path) -> str | None:
    """The ``http(s)://`` URL behind a scene (bare or ``/vsicurl/``), else None."""
    s = str(scene)
    if s.startswith("/vsicurl/"):
        s = s[len("/vsicurl/") :]
    return s if s.lower().startswith(("http://", "https://")) else None


def scene_name(scene: str | Path) -> str:
    """The scene's file name: the last path component (of a URL's path, without its query)."""
    s = str(scene)
    if not is_remote(s):
        return Path(s).name
    s = url_of(s) or s
    if "://" in s:
        s = urlsplit(s).path
    return s.rstrip("/").rsplit("/", 1)[-1]


def cloud_defaults() -> None:
    """Set :data:`CLOUD_OPTIONS` in the environment (GDAL reads them there), each only if unset."""
    for key, value in CLOUD_OPTIONS.items():
        os.environ.setdefault(key, value)


def remote_identity(scene: str | Path, timeout: float = 30.0) -> dict[str, Any]:
    """What can be known of a remote file without reading it: ``{"bytes", "etag", "last_modified"}``.

    An HTTP(S) scene gets one ``HEAD`` request (Content-Length, ETag, Last-Modified); an
    ``s3://`` or ``/vsis3/`` scene one HeadObject through botocore when it is installed (it
    comes with boto3 and the AWS CLI; not a dependency), with GDAL's ``AWS_*`` settings; any
    other, or a server that does not answer, gets None for each. Remote bytes are never hashed.
    """
    out: dict[str, Any] = {"bytes": None, "etag": None, "last_modified": None}
    url = url_of(scene)
    if url is None:
        return _s3_identity(scene, timeout) or out
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as resp:
            headers = resp.headers
    except (OSError, ValueError, urllib.error.URLError):
        return out
    length = headers.get("Content-Length")
    out["bytes"] = int(length) if length and length.isdigit() else None
    out["etag"] = headers.get("ETag")
    out["last_modified"] = headers.get("Last-Modified")
    return out


def _s3_identity(scene: str | Path, timeout: float) -> dict[str, Any] | None:
    """Size, ETag and Last-Modified of an S3 object from one HeadObject (botocore), or None.

    The endpoint, scheme, addressing style and region are GDAL's own settings
    (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``, ``AWS_REGION``), so the
    object asked about is the one GDAL reads; credentials come from botocore's usual chain.
    """
    s = str(scene)
    if s.lower().startswith("s3://"):
        rest = s[len("s3://") :]
    elif s.startswith("/vsis3/"):
        rest = s[len("/vsis3/") :]
    else:
        return None
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        return None
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        return None
    endpoint = os.environ.get("AWS_S3_ENDPOINT")
    scheme = "http" if os.environ.get("AWS_HTTPS", "YES").upper() in ("NO", "FALSE", "OFF") else "https"
    path_style = os.environ.get("AWS_VIRTUAL_HOSTING", "TRUE").upper() in ("NO", "FALSE", "OFF")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        client = botocore.session.get_session().create_client(
            "s3",
            region_name=region,
            endpoint_url=f"{scheme}://{endpoint}" if endpoint else None,
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 2},
                s3={"addressing_style": "path" if path_style else "auto"},
            ),
        )
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception:  # noqa: BLE001  no credentials, no answer, no object: nothing proves it unchanged
        return None
    modified = head.get("LastModified")
    return {
        "bytes": head.get("ContentLength"),
        "etag": head.get("ETag"),
        "last_modified": modified.strftime("%a, %d %b %Y %H:%M:%S GMT") if modified else None,
    }
