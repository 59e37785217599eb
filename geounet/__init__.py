"""geounet: GeoTIFF scenes -> overlapping tiles on Dask -> U-Net -> seamless georeferenced rasters and polygons.

Layers, each a subpackage; a layer imports only the layers below it (checked in CI
by import-linter, ``pyproject.toml``):

- ``cli``: the ``geounet`` command, one subcommand per module.
- ``batch``: cron batches (``geounet run``): pipeline configs, per-scene locks, reruns.
- ``damage`` | ``training``: pre/post damage grading; training and evaluating models.
- ``engine``: one scene end to end: settings resolved once, chunk tasks, stitching,
  the vector stage, and the executors (dask's threaded scheduler or dask.distributed).
- ``io``: scenes, label files, COGs, GeoPackages, quicklooks, STAC items, ``run.json``,
  output folders that appear complete or not at all.
- ``models``: the model card and file, networks, the torch and ONNX Runtime backends,
  the machine (device, precision, cores), the per-process model cache.
- ``compute``: pure functions on arrays and geometries: tiling grids, blending,
  polygon merging, post-processing in metres, metrics, change scores.
- ``schema`` and ``errors``: the one config mechanism; one-line errors.

The path of one tile from read to polygon: ``engine/tiles.py`` -> ``engine/stitch.py``
-> ``engine/vector_stage.py`` (``engine/predict.py`` runs them for a scene).
"""

__version__ = "0.1.0"

import os as _os

# GDAL's block cache defaults to 5% of RAM; outputs are written block by block, so a
# large cache only holds dirty blocks and makes memory grow with the scene. 64 MB is
# plenty for windowed reads and writes. Set GDAL_CACHEMAX yourself to override.
_os.environ.setdefault("GDAL_CACHEMAX", "64")
