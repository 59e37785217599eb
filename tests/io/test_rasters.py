"""Pure raster helpers: probabilities -> uint8 scores and classes."""

from __future__ import annotations

import numpy as np
import pytest

from geounet.io.rasters import NODATA, SCORE_SCALE, finalize_block


@pytest.mark.parametrize("n_classes", [1, 2, 3, 6])
def test_finalize_block_equals_argmax_and_rounded_scores(n_classes):
    rng = np.random.default_rng(n_classes)
    probs = rng.random((n_classes, 70, 90), dtype=np.float32)
    probs[:, :5, :5] = 0.25  # exact ties: the first class wins, as np.argmax
    probs[0, 10, 10], probs[-1, 11, 11] = -1e-6, 1.0 + 1e-6  # float overshoot is clipped
    valid = rng.random((70, 90)) > 0.2
    scores, classes = finalize_block(probs, valid)
    assert scores.dtype == classes.dtype == np.uint8 and scores.shape == probs.shape
    expected = np.argmax(probs, axis=0)
    np.testing.assert_array_equal(classes[valid], expected[valid])
    dn = np.rint(np.clip(probs, 0, 1) * SCORE_SCALE)
    np.testing.assert_array_equal(scores[:, valid], dn[:, valid])
    assert np.all(classes[~valid] == NODATA) and np.all(scores[:, ~valid] == NODATA)
    assert scores[:, valid].max() <= SCORE_SCALE


def test_finalize_block_all_valid_leaves_no_nodata():
    probs = np.stack([np.full((4, 4), 0.7, np.float32), np.full((4, 4), 0.3, np.float32)])
    scores, classes = finalize_block(probs, np.ones((4, 4), bool))
    assert np.all(classes == 0) and np.all(scores[0] == 178) and np.all(scores[1] == 76)


@pytest.mark.parametrize(
    "size, factors", [((512, 300), []), ((513, 10), [2]), ((4096, 4096), [2, 4, 8]), ((1000, 5000), [2, 4, 8, 16])]
)
def test_overview_factors_stop_when_a_level_fits_one_block(size, factors):
    from geounet.io.rasters import overview_factors

    assert overview_factors(*size, block=512) == factors


def _sparse_tiled(path, width: int, height: int, count: int, boxes) -> None:
    """A sparse tiled raster (nodata 255) with random data written in ``boxes`` (row0, col0, row1, col1) only."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from geounet.io.rasters import tiled_profile

    rng = np.random.default_rng(5)
    profile = tiled_profile(
        "EPSG:32633", Affine(0.5, 0, 500000, 0, -0.5, 5800000), width, height, count, "uint8", NODATA
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = tuple(f"band {i}" for i in range(count))
        dst.update_tags(WHAT="test")
        if count == 1:
            dst.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 100, 0, 255), NODATA: (0, 0, 0, 0)})
        for r0, c0, r1, c1 in boxes:
            data = rng.integers(0, 255, (count, r1 - r0, c1 - c0), dtype=np.uint8)
            data[:, ::7, ::5] = NODATA  # nodata inside the data too: the overviews leave it out
            dst.write(data, window=Window(c0, r0, c1 - c0, r1 - r0))


@pytest.fixture
def sparse_writer_always(monkeypatch):
    """geounet's sparse COG writer for any raster with an empty block (normally: large, mostly empty ones)."""
    from geounet.io import rasters

    monkeypatch.setattr(rasters, "SPARSE_MIN_BLOCKS", 1)
    monkeypatch.setattr(rasters, "SPARSE_MIN_EMPTY", 0.0)


@pytest.mark.parametrize("resampling, count", [("AVERAGE", 2), ("NEAREST", 1)])
def test_a_sparse_raster_gives_the_same_cog_written_sparse(tmp_path, resampling, count, sparse_writer_always):
    """Blocks with data only: the dense path's pixels at full resolution, overviews within a DN, empty blocks not stored.

    Sides are multiples of 16 here, so GDAL's overviews (the dense path) are exact 2:1 reductions too."""
    import rasterio

    from geounet.io.rasters import BLOCK, write_cog, written_blocks

    boxes = [(700, 1100, 1300, 1650), (3900, 3900, 4000, 4000), (0, 5000, 30, 5120)]
    for name in ("dense", "sparse"):
        _sparse_tiled(tmp_path / f"{name}.tiled.tif", 5120, 4096, count, boxes)
    present = written_blocks(tmp_path / "sparse.tiled.tif")
    assert present.shape == (8, 10) and 0 < present.sum() < 12
    write_cog(tmp_path / "dense.tiled.tif", tmp_path / "dense.tif", resampling)
    write_cog(tmp_path / "sparse.tiled.tif", tmp_path / "sparse.tif", resampling, blocks=present)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dense.tif",
        "dense.tiled.tif",
        "sparse.tif",
        "sparse.tiled.tif",
    ]
    with rasterio.open(tmp_path / "dense.tif") as d, rasterio.open(tmp_path / "sparse.tif") as s:
        assert s.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and s.block_shapes[0] == (BLOCK, BLOCK)
        assert s.overviews(1) == d.overviews(1) == [2, 4, 8, 16]
        assert s.nodata == NODATA and s.descriptions == d.descriptions and s.tags()["WHAT"] == "test"
        assert s.crs == d.crs and s.transform == d.transform and s.count == d.count == count
        if count == 1:
            assert s.colormap(1) == d.colormap(1) and s.colorinterp == d.colorinterp
        np.testing.assert_array_equal(s.read(), d.read())
    for level in range(4):
        with (
            rasterio.open(tmp_path / "dense.tif", overview_level=level) as d,
            rasterio.open(tmp_path / "sparse.tif", overview_level=level) as s,
        ):
            a, b = d.read().astype(int), s.read().astype(int)
            np.testing.assert_array_equal(a == NODATA, b == NODATA)
            assert np.abs(a - b).max() <= (1 if resampling == "AVERAGE" else 0), level
    stored = written_blocks(tmp_path / "sparse.tif")  # empty blocks are not stored
    np.testing.assert_array_equal(stored, present)
    assert written_blocks(tmp_path / "dense.tif").all()
    assert (tmp_path / "sparse.tif").stat().st_size < (tmp_path / "dense.tif").stat().st_size


def test_the_sparse_cog_layout_is_gdals(tmp_path, sparse_writer_always):
    """IFDs first, then tiles from the coarsest level to the full resolution, each with GDAL's size leader and trailer."""
    import struct

    import tifffile

    from geounet.io.rasters import write_cog, written_blocks

    _sparse_tiled(tmp_path / "s.tiled.tif", 3000, 2100, 2, [(100, 100, 900, 700), (2000, 2900, 2100, 3000)])
    write_cog(tmp_path / "s.tiled.tif", tmp_path / "s.tif", "AVERAGE", blocks=written_blocks(tmp_path / "s.tiled.tif"))
    data = (tmp_path / "s.tif").read_bytes()
    assert b"LAYOUT=IFDS_BEFORE_DATA" in data[:300] and b"KNOWN_INCOMPATIBLE_EDITION=NO" in data[:300]
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        pages = list(tif.pages)
        assert [p.shape[:2] for p in pages] == [(2100, 3000), (1050, 1500), (525, 750), (263, 375)]
        starts = []
        for page in pages:
            offsets, sizes = page.tags["TileOffsets"].value, page.tags["TileByteCounts"].value
            stored = [(o, n) for o, n in zip(offsets, sizes) if n]
            assert stored and len(stored) < len(offsets) or page is pages[-1]
            for o, n in stored:
                assert (
                    struct.unpack("<I", data[o - 4 : o])[0] == n and data[o + n : o + n + 4] == data[o + n - 4 : o + n]
                )
            starts.append(min(o for o, _ in stored))
        assert max(p.offset for p in pages) < min(starts)  # every IFD before any tile
        assert starts == sorted(starts, reverse=True)  # the coarsest level's tiles first
        np.testing.assert_array_equal(pages[0].asarray().transpose(2, 0, 1), read_all(tmp_path / "s.tiled.tif"))


def read_all(path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def test_own_class_scores_picks_each_pixels_class_band():
    from geounet.io.rasters import NODATA, own_class_scores

    scores = np.stack([np.full((2, 2), 10, np.uint8), np.full((2, 2), 200, np.uint8)])
    classes = np.array([[0, 1], [NODATA, 1]], np.uint8)
    assert own_class_scores(scores, classes).tolist() == [[10, 200], [10, 200]]
    assert own_class_scores(scores, np.array([[2, 0], [0, 0]], np.uint8)) is None  # a class with no band


@pytest.mark.parametrize("n_classes", [2, 3])
def test_decision_weights_change_the_classes_and_never_the_scores(n_classes):
    rng = np.random.default_rng(n_classes)
    probs = np.moveaxis(rng.dirichlet(np.ones(n_classes), (60, 80)), -1, 0).astype(np.float32)
    valid = rng.random((60, 80)) > 0.1
    weights = np.linspace(3.0, 0.5, n_classes)[::-1].copy()  # the last class favoured
    plain_scores, plain = finalize_block(probs, valid)
    scores, classes = finalize_block(probs, valid, weights)
    np.testing.assert_array_equal(scores, plain_scores)
    expected = np.argmax(probs * weights[:, None, None].astype(np.float32), axis=0)
    np.testing.assert_array_equal(classes[valid], expected[valid])
    assert np.all(classes[~valid] == NODATA)
    assert (classes[valid] == n_classes - 1).sum() > (plain[valid] == n_classes - 1).sum()


def test_a_weight_on_the_second_of_two_classes_is_a_probability_threshold():
    p = np.linspace(0.0, 1.0, 101, dtype=np.float32)[None, :]
    probs = np.stack([1.0 - p, p])
    _, classes = finalize_block(probs, np.ones(p.shape, bool), np.array([1.0, 3.0]))
    np.testing.assert_array_equal(classes[0], (p[0] > 0.25 + 1e-6).astype(np.uint8))  # 3p > 1 - p


@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("sparse", [False, True])
def test_measure_bands_are_never_called_colours_or_alpha(tmp_path, count, sparse, request):
    """3 or 4 uint8 bands (a 3-class scores.tif, change.tif) are measures: grey/undefined, no alpha band, nodata masks.

    GDAL's default for such files is RGB (and alpha for a fourth band, which QGIS and GDAL then use as transparency)."""
    import rasterio
    from rasterio.enums import ColorInterp, MaskFlags

    from geounet.io import rasters

    if sparse:
        request.getfixturevalue("sparse_writer_always")
    _sparse_tiled(tmp_path / "m.tiled.tif", 1536, 1024, count, [(0, 0, 300, 400)])
    rasters.write_cog(
        tmp_path / "m.tiled.tif", tmp_path / "m.tif", "AVERAGE", blocks=rasters.written_blocks(tmp_path / "m.tiled.tif")
    )
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.colorinterp == (ColorInterp.gray,) + (ColorInterp.undefined,) * (count - 1)
        assert all(flags == [MaskFlags.nodata] for flags in ds.mask_flag_enums)
        band = ds.read(count)
        np.testing.assert_array_equal(ds.read_masks(1) == 0, ds.read(1) == NODATA)
        assert (band != NODATA).any()  # the last band is data, not a mask
