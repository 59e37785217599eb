"""geounet: GeoTIFF scenes -> overlapping tiles on Dask -> U-Net -> seamless georeferenced rasters."""

__version__ = "0.1.0"
