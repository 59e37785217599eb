"""Pure computation on arrays and geometries (pixel or metric coordinates): no file, cluster or model I/O."""
