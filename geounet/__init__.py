"""geounet: GeoTIFF scenes -> overlapping tiles on Dask -> U-Net -> seamless georeferenced rasters."""

__version__ = "0.1.0"

import os as _os

# GDAL's block cache defaults to 5% of RAM; outputs are written block by block, so a
# large cache only holds dirty blocks and makes memory grow with the scene. 64 MB is
# plenty for windowed reads and writes. Set GDAL_CACHEMAX yourself to override.
_os.environ.setdefault("GDAL_CACHEMAX", "64")
