"""The web map of an output folder: ``web/index.html`` with its tiles, which needs no internet.

``mercator`` (tile maths in EPSG:3857), ``raster_tiles`` (an XYZ pyramid of a raster,
window by window), ``vector_tiles`` (PMTiles through GDAL's PMTiles driver), ``page``
(the HTML page and the vendored map library), ``folder`` (a predict or damage folder's
map, assembled from the above) and ``server`` (the loopback server of ``geounet view``).
"""
