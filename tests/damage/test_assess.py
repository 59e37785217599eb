"""Block tasks: the overlap cut into blocks with their footprints, change measures per block, sums per building."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from geounet.compute.grid import Box
from geounet.damage.assess import (
    CHANGE_BANDS,
    IN_FLIGHT,
    NODATA,
    BuildingSums,
    assess_block,
    assess_blocks,
    plan_blocks,
)
from geounet.damage.mosaic import mosaic_vrt
from geounet.engine.executors import Executor
from geounet.models.card import read_card


@pytest.fixture(scope="module")
def mosaics(pair, tmp_path_factory):
    """The pair's VRT mosaics, the pre grid and the footprint geometries on it."""
    d = tmp_path_factory.mktemp("vrt")
    card = read_card(pair.model)
    pre_xml, grid = mosaic_vrt([pair.folder / "pre.tif"], card, "pre")
    post_xml, _ = mosaic_vrt([pair.folder / "post.tif"], card, "post")
    (d / "pre.vrt").write_text(pre_xml)
    (d / "post.vrt").write_text(post_xml)
    geoms = np.asarray(pair.footprints().geometry.values, dtype=object)
    return d, grid, geoms


def _args(pair, d, grid, **settings) -> tuple:
    return str(d / "pre.vrt"), str(d / "post.vrt"), grid, str(pair.model), pair.settings(**settings), "cpu", "fp32"


def test_blocks_in_raster_order_each_with_the_footprints_it_touches(mosaics):
    _, grid, geoms = mosaics
    jobs = plan_blocks(grid.extent, 128, geoms, grid)
    assert [j.box for j in jobs] == [
        Box(0, 0, 128, 128),
        Box(0, 128, 128, 256),
        Box(128, 0, 256, 128),
        Box(128, 128, 256, 256),
    ]
    assert [list(j.ids) for j in jobs] == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]  # 4: the centre
    assert all(len(j.footprints) == len(j.ids) for j in jobs)


def test_a_block_scores_the_erased_roof_and_counts_its_pixels(pair, mosaics):
    d, grid, geoms = mosaics
    (job,) = plan_blocks(Box(100, 100, 164, 164), 64, geoms, grid)  # the erased centre roof (4) only
    res = assess_block(job, *_args(pair, d, grid))
    assert list(res.ids) == [4] and res.change.shape == (len(CHANGE_BANDS), 64, 64)
    assert res.counts[0] == 22 * 18  # the footprint is 1 px inside the 24 x 20 px roof
    assert res.valid_pixels == 64 * 64 and (res.change != NODATA).all()
    score = res.sums[0, 0] / res.counts[0]
    assert score > 0.7
    assert set(res.timings) >= {"read_pre_s", "warp_post_s", "model_s", "zonal_s", "model_cpu_s"}


def test_a_block_without_data_returns_no_change(pair, mosaics, tmp_path):
    d, grid, geoms = mosaics
    _, _, post = pair.arrays()
    pair.write(tmp_path / "blank.tif", post, mask=np.zeros((pair.size, pair.size), bool))
    post_xml, _ = mosaic_vrt([tmp_path / "blank.tif"], read_card(pair.model), "post")
    (tmp_path / "blank.vrt").write_text(post_xml)
    (job,) = plan_blocks(Box(0, 0, 64, 64), 64, geoms, grid)
    pre_vrt, _, *rest = _args(pair, d, grid)
    res = assess_block(job, pre_vrt, str(tmp_path / "blank.vrt"), *rest)
    assert res.change is None and res.valid_pixels == 0 and res.counts.tolist() == [0] * len(job.ids)


class InReverse(Executor):
    """An executor that runs the tasks here, last first, and remembers how it was asked."""

    description = "test"

    def __init__(self) -> None:
        self.asked: dict[str, Any] = {}

    @property
    def workers(self) -> int:
        return 1

    def run_chunks(self, tasks, take, label) -> None:
        raise NotImplementedError

    def imap_unordered(self, fn, items, *args, in_flight=None, retries=2) -> Iterator[Any]:
        self.asked = {"in_flight": in_flight, "retries": retries}
        for item in reversed(list(items)):
            yield fn(item, *args)

    def map(self, fn, items, *args, retries=2) -> list[Any]:
        raise NotImplementedError

    def submit(self, fn, *args, retries=2) -> Any:
        raise NotImplementedError

    def load_model(self, model_path, device, backend) -> None:
        pass

    def close(self) -> None:
        pass


def test_sums_add_up_over_blocks_in_any_order_and_on_an_executor(pair, mosaics):
    """A roof across block edges gets the same valid-pixel count from four blocks as from one."""
    d, grid, geoms = mosaics
    one = BuildingSums(len(geoms))
    for res in assess_blocks(plan_blocks(grid.extent, 256, geoms, grid), None, *_args(pair, d, grid)):
        one.add(res)
    executor = InReverse()
    four = BuildingSums(len(geoms))
    for res in assess_blocks(plan_blocks(grid.extent, 128, geoms, grid), executor, *_args(pair, d, grid)):
        four.add(res)
    assert executor.asked == {"in_flight": IN_FLIGHT, "retries": 1}
    assert four.counts.tolist() == one.counts.tolist() == [22 * 18] * 9
    assert four.valid_pixels == one.valid_pixels == 256 * 256
    assert np.allclose(four.means()[0], one.means()[0], atol=0.05)  # context differs a little at block edges
    assert four.timings["model_s"] > 0
