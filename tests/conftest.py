"""Session set-up and fixtures; plain helpers live in ``tests/helpers.py``."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# exported ONNX models (geounet.models.onnx) go to a cache of this test session, never to ~/.cache;
# subprocesses (CLI, dask workers) inherit it
_CACHE = tempfile.mkdtemp(prefix="geounet-test-cache-")
os.environ["GEOUNET_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

from tests.helpers import DEFAULT_MODEL, make_tiny_model  # noqa: E402  (after the cache is set)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_model_03(tmp_path_factory) -> Path:
    """The tiny model, trained at 0.3 m (for the 0.6 m Joplin scenes: a 2x working grid)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny03.safetensors", 0.3)


@pytest.fixture(scope="session")
def default_model() -> Path:
    if not DEFAULT_MODEL.exists():
        pytest.fail(f"default model missing: {DEFAULT_MODEL} (it ships with the repo)")
    return DEFAULT_MODEL
