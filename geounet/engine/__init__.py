"""One scene end to end: settings, chunk tasks, stitching, the vector stage, executors (threads or Dask)."""
