"""stitch: regions are written once their chunks are in, in raster order, whatever the scheduler."""

from __future__ import annotations

from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from tests.helpers import DEMO_SCENE


def run(scenes, out, model, **kw):
    return predict_batch(scenes, out, model, PredictSettings(quiet=True, **kw))


def test_local_chunks_are_stitched_as_they_finish_in_raster_order(tiny_model, tmp_path, monkeypatch):
    """Memory follows the chunk, not the scene: dask runs each chunk's stitch task right after it,
    and the chunks row by row, so regions waiting for a neighbour stay within about one row of chunks."""
    from geounet.engine.stitch import Stitcher

    seen = {"pending": 0, "added": 0}
    add = Stitcher.add

    def watched(self, result):
        add(self, result)
        seen["added"] += 1
        seen["pending"] = max(seen["pending"], len(self.pending))

    monkeypatch.setattr(Stitcher, "add", watched)
    [r] = run(
        [DEMO_SCENE], tmp_path / "out", tiny_model, vector=False, workers=2, tile_size=64, overlap=16, chunk_pixels=48
    )  # one 64 px tile per chunk
    assert r.ok, r.error
    n_chunks = r.tiles["chunks"]
    per_row = int(round(n_chunks**0.5))
    assert n_chunks >= 49 and seen["added"] == r.tiles["chunks_run"] > n_chunks // 2  # chunks of nodata never run
    # a row of chunks leaves its lower seams and corners waiting for the next row: ~2 regions per chunk
    assert seen["pending"] <= 3 * per_row + 8, (seen["pending"], n_chunks)
