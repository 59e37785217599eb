import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage

from geounet.compute.vectorize import (
    Pieces,
    apply_affine,
    contact_seed_counts,
    merge_across_blocks,
    polygonize_block,
)

T = Affine(0.0746455354, 0, 3627854.2364710346, 0, -0.0746455354, 38830.0103688)  # inexact, like real scenes


def blockwise(classes, block, class_ids, scores=None):
    h, w = classes.shape
    parts = []
    for r in range(0, h, block):
        for c in range(0, w, block):
            sl = np.s_[r : r + block, c : c + block]
            parts.append(
                polygonize_block(
                    classes[sl],
                    (r, c),
                    class_ids,
                    None if scores is None else scores[sl],
                    (r > 0, r + block < h, c > 0, c + block < w),
                )
            )
    return merge_across_blocks(Pieces.concat(parts))


def assert_same(a: Pieces, b: Pieces, class_ids):
    for cid in class_ids:
        ga, gb = a.geometry[a.class_id == cid], b.geometry[b.class_id == cid]
        assert len(ga) == len(gb)
        area_a, area_b = shapely.area(ga).sum(), shapely.area(gb).sum()
        assert abs(area_a - area_b) <= 1e-6 * area_a
        sym = shapely.union_all(ga).symmetric_difference(shapely.union_all(gb)).area
        assert sym <= 1e-6 * area_a
        assert a.pixels[a.class_id == cid].sum() == b.pixels[b.class_id == cid].sum()
        assert shapely.is_valid(gb).all()


def test_shapes_straddling_block_corners_merge_exactly():
    classes = np.zeros((40, 40), np.uint8)
    classes[5:35, 15:25] = 1  # crosses the horizontal and vertical edges at 20
    classes[15:25, 5:35] = 1  # a plus sign centred on the block corner
    classes[18:22, 18:22] = 2  # a different class right on the corner (a hole in class 1)
    classes[0:20, 0:3] = 1  # touches edge only at a corner with nothing
    classes[19, 36] = 1
    classes[20, 37] = 1  # two pixels touching diagonally across the edge: stay apart
    whole = polygonize_block(classes, (0, 0), [1, 2])
    merged = blockwise(classes, 20, [1, 2])
    assert_same(whole, merged, [1, 2])
    plus = [g for g in merged.geometry[merged.class_id == 1] if g.area > 100]  # pixel units
    assert len(plus) == 1 and len(plus[0].interiors) == 1  # one polygon with the class-2 hole


@pytest.mark.parametrize("block", [7, 16, 33, 64])
def test_block_size_does_not_change_the_polygons(block):
    rng = np.random.default_rng(block)
    classes = (ndimage.uniform_filter(rng.random((150, 170)), 5) > 0.5).astype(np.uint8)
    classes[rng.random(classes.shape) > 0.97] = 2
    scores = rng.integers(0, 255, classes.shape).astype(np.uint8)
    whole = polygonize_block(classes, (0, 0), [1, 2], scores)
    merged = blockwise(classes, block, [1, 2], scores)
    assert_same(whole, merged, [1, 2])
    assert merged.score_sum.sum() == pytest.approx(whole.score_sum.sum())
    assert not merged.on_edge.any()


def test_polygon_area_and_mean_score_are_per_component():
    classes = np.zeros((10, 10), np.uint8)
    classes[2:5, 2:6] = 1
    scores = np.full((10, 10), 100, np.uint8)
    scores[2:5, 2:6] = 200
    p = polygonize_block(classes, (100, 200), [1], scores)
    assert len(p) == 1 and p.pixels[0] == 12 and p.score_sum[0] == 2400
    assert p.geometry[0].bounds == (202, 102, 206, 105)  # pixel (col, row) corners in the whole raster
    [g] = apply_affine(p.geometry, T)
    assert g.area == pytest.approx(12 * 0.0746455354**2)
    assert g.bounds[0] == pytest.approx(3627854.2364710346 + 202 * 0.0746455354)


def test_split_touching_separates_two_roofs_joined_by_a_neck():
    from geounet.compute.vectorize import split_touching

    classes = np.zeros((40, 70), np.uint8)
    classes[5:35, 5:30] = 1
    classes[5:35, 40:65] = 1
    classes[18:22, 30:40] = 1  # a 4 px neck
    scores = np.full(classes.shape, 200, np.uint8)
    whole = polygonize_block(classes, (0, 0), [1], scores)
    assert len(whole) == 1
    split = split_touching(whole, (0.1, 0.1), min_distance_m=1.0)
    assert len(split) == 2
    assert split.pixels.sum() == whole.pixels.sum()
    assert shapely.union_all(split.geometry).symmetric_difference(whole.geometry[0]).area == 0
    assert np.allclose(split.score_sum / split.pixels, 200)
    # Seeds further apart than the roofs are wide: nothing to split.
    assert len(split_touching(whole, (0.1, 0.1), min_distance_m=4.0)) == 1


def test_seam_groups_merged_in_separate_runs_equal_one_merge():
    """The vector stage merges runs of seam groups in separate tasks: the pieces equal one merge, in order."""
    from geounet.compute.vectorize import merge_groups, seam_groups

    rng = np.random.default_rng(3)
    classes = (ndimage.uniform_filter(rng.random((96, 96)), 9) > 0.5).astype(np.uint8) + 1
    h, w = classes.shape
    parts = [
        polygonize_block(classes[r : r + 32, c : c + 32], (r, c), [1, 2], None, (r > 0, r + 32 < h, c > 0, c + 32 < w))
        for r in range(0, h, 32)
        for c in range(0, w, 32)
    ]
    cand = Pieces.concat(parts)
    cand = cand.take(cand.on_edge)
    whole = merge_across_blocks(cand)
    groups = seam_groups(cand)
    assert sum(len(g) for g in groups) == len(cand) and len(groups) == len(whole) < len(cand)
    assert all((np.diff(g) > 0).all() for g in groups) and [g[0] for g in groups] == sorted(g[0] for g in groups)
    runs = np.array_split(np.arange(len(groups)), 3)
    pieces = []
    for run in runs:
        taken = np.concatenate([groups[g] for g in run])
        ends = np.cumsum([len(groups[g]) for g in run])[:-1]
        pieces.append(merge_groups(cand.take(taken), np.split(np.arange(len(taken)), ends)))
    split = Pieces.concat(pieces)
    assert list(split.class_id) == list(whole.class_id) and list(split.pixels) == list(whole.pixels)
    assert all(shapely.equals_exact(split.geometry, whole.geometry, 0))


def _split_whole(classes, seed_m=0.0, pixel_m=0.1):
    """Buildings of a (rows, cols) raster of 0 background, 1 building, 2 contact, split at contacts (pixel units)."""
    from geounet.compute.vectorize import split_at_contacts

    whole = polygonize_block(np.where(classes == 2, 1, classes), (0, 0), [1], np.full(classes.shape, 100, np.uint8))
    windows = [classes[y0:y1, x0:x1] for x0, y0, x1, y1 in shapely.bounds(whole.geometry).astype(int)]
    split = split_at_contacts(whole, windows, [1], (pixel_m, pixel_m), seed_m)
    # the polygons' pixels found as components of their classes: the same result as rasterizing them
    labelled = split_at_contacts(whole, windows, [1], (pixel_m, pixel_m), seed_m, member_ids=[1, 2])
    assert list(labelled.pixels) == list(split.pixels) and all(
        shapely.equals_exact(labelled.geometry, split.geometry, 0)
    )
    # seeds counted in one pass over the raster: the same parts
    counts = contact_seed_counts(classes, (0, 0), whole.geometry, [1], [1, 2], (pixel_m, pixel_m), seed_m)
    counted = split_at_contacts(whole, windows, [1], (pixel_m, pixel_m), seed_m, [1, 2], counts)
    assert list(counted.pixels) == list(split.pixels) and all(shapely.equals_exact(counted.geometry, split.geometry, 0))
    return whole, split


@pytest.mark.parametrize("seed_m", [0.0, 0.3, 0.5])
def test_seeds_counted_over_a_whole_raster_equal_each_polygons_own(seed_m):
    """contact_seed_counts over a raster of many touching roofs: per polygon, the count its own window gives."""
    from geounet.compute.vectorize import _seeds, split_at_contacts

    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.random((160, 200)), 3)
    classes = np.where(field > 0.5, 1, 0).astype(np.uint8)
    edges = ndimage.morphological_gradient(ndimage.label(field > 0.52)[0], size=3) > 0
    classes[(classes == 1) & edges & (rng.random(classes.shape) > 0.3)] = 2  # contacts where roofs meet
    classes[:, 150:] = 0
    classes[10:40, 170:173] = 2  # contacts alone: no building
    pixel = (0.1, 0.13)  # anisotropic pixels (a scene in degrees)
    whole = polygonize_block(np.where(classes == 2, 1, classes), (0, 0), [1], np.full(classes.shape, 9, np.uint8))
    counts = contact_seed_counts(classes, (0, 0), whole.geometry, [1], [1, 2], pixel, seed_m)
    bounds = shapely.bounds(whole.geometry).astype(int)
    windows = [classes[y0:y1, x0:x1] for x0, y0, x1, y1 in bounds]
    own = []
    for (x0, y0, x1, y1), g in zip(bounds, whole.geometry):
        mask = rasterize([(g, 1)], out_shape=(y1 - y0, x1 - x0), transform=Affine.translation(x0, y0)) > 0
        building = mask & (classes[y0:y1, x0:x1] == 1)
        min_core = max(1, int(np.ceil(seed_m * seed_m / (pixel[0] * pixel[1]))))
        own.append(int(_seeds(building, pixel, seed_m, min_core)[0].max()) if building.any() else 0)
    assert list(counts) == own and {0, 1} < set(own) and max(own) >= 3  # drops, keeps and splits all occur
    plain = split_at_contacts(whole, windows, [1], pixel, seed_m, [1, 2])
    fast = split_at_contacts(whole, windows, [1], pixel, seed_m, [1, 2], counts)
    assert list(fast.pixels) == list(plain.pixels) and all(shapely.equals_exact(fast.geometry, plain.geometry, 0))


def _touching_roofs(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) uint8 raster of random roofs: 0 background, 1 building, 2 contact where roofs meet."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 3)
    classes = np.where(field > 0.5, 1, 0).astype(np.uint8)
    edges = ndimage.morphological_gradient(ndimage.label(field > 0.52)[0], size=3) > 0
    classes[(classes == 1) & edges & (rng.random(classes.shape) > 0.3)] = 2
    return classes


@pytest.mark.parametrize("seed_m", [0.0, 0.4])
def test_seam_pieces_split_at_contacts_without_their_union_equal_the_unioned_ones(seed_m):
    """Buildings across block seams are split from their pieces (never unioned): the same parts, and the
    ones kept whole equal the unioned polygons exactly."""
    from geounet.compute.vectorize import dissolve_pieces, merge_groups, seam_groups, split_at_contacts

    classes = _touching_roofs(11, (128, 160))
    joined = np.where(classes == 2, 1, classes)
    h, w = classes.shape
    parts = [
        polygonize_block(joined[r : r + 32, c : c + 32], (r, c), [1], None, (r > 0, r + 32 < h, c > 0, c + 32 < w))
        for r in range(0, h, 32)
        for c in range(0, w, 32)
    ]
    cand = Pieces.concat(parts)
    cand = cand.take(cand.on_edge)
    groups = seam_groups(cand)
    unioned, pieces = merge_groups(cand, groups), merge_groups(cand, groups, dissolve=False)
    assert (shapely.get_type_id(pieces.geometry) == shapely.GeometryType.MULTIPOLYGON).all()
    assert all(shapely.equals_exact(dissolve_pieces(pieces.geometry), unioned.geometry, 0))
    windows = [classes[y0:y1, x0:x1] for x0, y0, x1, y1 in shapely.bounds(unioned.geometry).astype(int)]
    args = ([1], (0.1, 0.1), seed_m, [1, 2])
    want, got = split_at_contacts(unioned, windows, *args), split_at_contacts(pieces, windows, *args)
    assert len(got) > len(unioned) > 1 and list(got.pixels) == list(want.pixels)
    assert all(shapely.equals_exact(got.geometry, want.geometry, 0))


def test_roofs_touching_through_contact_pixels_become_one_polygon_each():
    classes = np.zeros((30, 50), np.uint8)
    classes[5:25, 5:23] = 1
    classes[8:22, 27:45] = 1
    classes[5:25, 23:27] = 2  # the contact band between them, taller than the right roof
    whole, split = _split_whole(classes)
    assert len(whole) == 1 and len(split) == 2
    assert split.pixels.sum() == whole.pixels.sum() == np.isin(classes, [1, 2]).sum()
    assert shapely.union_all(split.geometry).symmetric_difference(whole.geometry[0]).area == 0
    assert shapely.area(shapely.intersection(split.geometry[0], split.geometry[1])) == 0
    assert all(g.geom_type == "Polygon" for g in split.geometry)  # each part is one 4-connected piece
    left, right = sorted(split.geometry, key=lambda g: g.bounds[0])
    assert left.contains(shapely.box(5, 5, 25, 25)) and right.contains(shapely.box(25, 8, 45, 22))  # nearest roof
    assert np.allclose(split.score_sum / split.pixels, 100)


def test_a_roof_with_one_seed_keeps_its_contacts_and_contacts_alone_are_no_building():
    classes = np.zeros((30, 60), np.uint8)
    classes[5:25, 5:25] = 1
    classes[5:25, 25:28] = 2  # contacts along one side, no roof beyond them
    classes[5:25, 40:43] = 2  # a band of contacts with no roof at all
    whole, split = _split_whole(classes)
    assert len(whole) == 2 and len(split) == 1
    assert split.geometry[0].equals(shapely.box(5, 5, 28, 25)) and split.pixels[0] == 20 * 23


def test_seed_cores_split_roofs_joined_without_contacts_and_never_join_components():
    classes = np.zeros((40, 90), np.uint8)
    classes[5:35, 5:30] = 1
    classes[5:35, 34:60] = 1
    classes[17:23, 30:34] = 1  # a 6 px (0.6 m) building neck, no contact pixel
    classes[5:35, 60:62] = 2
    classes[5:35, 62:66] = 1  # a 4 px (0.4 m) wide roof: no core, its own seed beyond the contacts
    whole, split = _split_whole(classes, seed_m=0.5)
    assert len(whole) == 1 and len(split) == 3
    assert shapely.union_all(split.geometry).symmetric_difference(whole.geometry[0]).area == 0
    narrow = [g for g in split.geometry if g.bounds[0] >= 60]
    assert len(narrow) == 1 and narrow[0].equals(shapely.box(61, 5, 66, 35))  # its roof and the nearer contacts
    # seeded by whole components: the neck holds the two big roofs together
    assert len(_split_whole(classes, seed_m=0.0)[1]) == 2


def test_split_at_contacts_refuses_a_window_that_does_not_cover_the_polygon():
    from geounet.compute.vectorize import split_at_contacts

    classes = np.zeros((10, 10), np.uint8)
    classes[2:6, 2:6] = 1
    whole = polygonize_block(classes, (0, 0), [1])
    with pytest.raises(ValueError, match="does not cover"):
        split_at_contacts(whole, [classes], [1], (0.1, 0.1))


def test_vector_stage_rings_have_no_collinear_vertex_so_cleaning_may_skip_that_pass():
    """Polygons traced by GDAL, joined across seams (dissolved) and split at contacts have no vertex on the
    line through its neighbours, in pixels and once reprojected: ``clean_geometries``
    without the collinear pass (the vector stage's call) gives exactly what it gives with it."""
    from pyproj import Transformer

    from geounet.compute.postprocess import DEFAULT_RULES, clean_geometries
    from geounet.compute.vectorize import dissolve_pieces, merge_groups, seam_groups, split_at_contacts

    classes = _touching_roofs(5, (192, 224))
    joined = np.where(classes == 2, 1, classes)
    whole = polygonize_block(joined, (0, 0), [1])
    merged = blockwise(joined, 48, [1])  # seams dissolved
    windows = [classes[y0:y1, x0:x1] for x0, y0, x1, y1 in shapely.bounds(whole.geometry).astype(int)]
    split = split_at_contacts(whole, windows, [1], (0.3, 0.3), 0.6, [1, 2])
    cand = Pieces.concat(
        [
            polygonize_block(joined[:, c : c + 48], (0, c), [1], None, (False, False, c > 0, c + 48 < 224))
            for c in (0, 48, 96, 144, 192)
        ]
    )
    cand = cand.take(cand.on_edge)
    pieces = merge_groups(cand, seam_groups(cand), dissolve=False)
    kept_whole = dissolve_pieces(pieces.geometry)
    geoms = np.concatenate([whole.geometry, merged.geometry, split.geometry, kept_whole])
    assert len(split) > len(whole) and len(kept_whole) > 3  # the splits and seam joins occurred
    vertices = shapely.get_num_coordinates(geoms)
    assert (shapely.get_num_coordinates(shapely.simplify(geoms, 0.0)) == vertices).all()
    # pixel corners -> UTM 36N (0.3 m pixels near Kampala) -> a local equal-area CRS, as pieces_to_layers maps them
    utm = apply_affine(geoms, Affine(0.3, 0, 452000.0, 0, -0.3, 38000.0))
    to_m = Transformer.from_crs(32636, "+proj=laea +lat_0=0.34 +lon_0=32.59 +ellps=WGS84 +units=m", always_xy=True)
    metric = shapely.transform(utm, lambda xy: np.column_stack(to_m.transform(xy[:, 0], xy[:, 1])))
    rules = DEFAULT_RULES["building"]
    full, keep_full = clean_geometries(shapely.simplify(metric, 0.0), rules)  # collinear vertices removed first
    fast, keep_fast = clean_geometries(metric, rules)
    assert list(keep_fast) == list(keep_full) and len(full) > 100
    assert shapely.equals_exact(fast, full, 0).all()


def test_flood_ties_go_to_the_seed_first_in_raster_order_in_any_window():
    from geounet.compute.vectorize import distance_m, flood_from_seeds

    row = np.array([[1, 0, 0, 0, 2]], np.int32)  # the middle pixel is 2 pixels from both seeds
    mask = np.ones(row.shape, bool)
    got = flood_from_seeds(distance_m(row == 0, (1.0, 1.0), edges=False), row, mask)
    assert got.tolist() == [[1, 1, 1, 2, 2]]
    swapped = np.where(row > 0, 3 - row, 0)  # the same pixels, the labels exchanged: still the left seed's
    assert flood_from_seeds(distance_m(swapped == 0, (1.0, 1.0), edges=False), swapped, mask).tolist() == [
        [2, 2, 2, 1, 1]
    ]


def test_flood_depends_on_the_mask_and_seeds_alone():
    """The same labels from the whole flood, from its frontier, in a larger window, and per component."""
    from skimage.segmentation import watershed

    from geounet.compute.vectorize import distance_m, flood_from_seeds

    def whole_flood(dist, seeds, mask):  # every seed pixel queued, ranked in raster order
        order = np.flatnonzero(seeds > 0)
        values = dist.astype(np.float64)
        values.ravel()[order] = np.arange(-len(order), 0) / (len(order) + 1)
        return watershed(values, seeds, mask=mask, connectivity=1)

    rng = np.random.default_rng(7)
    four = ndimage.generate_binary_structure(2, 1)
    cases = 0
    for _ in range(60):
        rows, cols = rng.integers(20, 60, 2)
        mask = ndimage.binary_closing(ndimage.binary_opening(rng.random((rows, cols)) < 0.75))
        components, n = ndimage.label(mask, four)
        seeds, _ = ndimage.label(distance_m(mask, (0.5, 0.7)) >= rng.uniform(0.8, 1.6), four)
        dist = distance_m(seeds == 0, (0.5, 0.7), edges=False)
        got = flood_from_seeds(dist, seeds, mask)
        assert np.array_equal(got, whole_flood(dist, seeds, mask))
        assert np.array_equal(got > 0, mask & np.isin(components, np.unique(components[seeds > 0])))
        pad = ((3, 5), (7, 2))
        padded = np.pad(seeds, pad)
        wider = flood_from_seeds(distance_m(padded == 0, (0.5, 0.7), edges=False), padded, np.pad(mask, pad))
        assert np.array_equal(wider[3:-5, 7:-2], got)
        for c in range(1, n + 1):
            alone = components == c
            if (seeds[alone] > 0).sum() > 1:
                cases += 1
                assert np.array_equal(flood_from_seeds(dist, np.where(alone, seeds, 0), alone)[alone], got[alone])
    assert cases > 20
