"""Files in and out: scenes, labels, rasters, GeoPackages, quicklooks, STAC items, run records, output folders."""
