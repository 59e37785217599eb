"""Throughput without the model: the pipeline's own megapixels per second per core, stage by stage.

The proxy for GPU hosts, where the model is nearly free. A scene (the demo crop repeated,
at the model's resolution, so every pixel is run) is predicted end to end, with vectors,
as the CLI runs it (the vector stage in worker processes on 4+ cores, else threads), with the model replaced by a trivial one:
building probability a smooth function of the red band smoothed over 15 px (a few numpy
operations per pixel), brighter than the scene's mean red being building (the demo's
metal roofs). The script prints the class map's shape beside the real drone model's on
the same scene (building share, components, the largest one's share): both about 60 %
building in about a thousand separate components. (Until 2026-12-02 the threshold was the
card's mean instead of the scene's: 74 % building, one component holding 89 % of it, a
polygon of 236,000 vertices that no building map has, whose seam merge was most of the
vector stage.)

The run with vectors is repeated on the same scene in the same process: the first pays for
importing the vector stage's libraries, the second is what each scene of a batch costs.

Then each stage runs alone over the same scene, one after the other, timed in CPU seconds:
reading (windowed reads of every chunk), normalising and blending (the trivial model's
answer precomputed), stitching and writing the tiled rasters, the COGs, polygonizing and
cleaning every block, and the seam merges. Prints megapixels per CPU second for each
(= MP/s per core when the stage has a core to itself), the end-to-end MP/s per core,
and names the stage that limits it. A tiny real U-Net's forward passes over the same
tiles are timed too, for scale.

    python benchmarks/throughput.py [--size 4096] [--keep DIR] [--gpu-style 1,2,1,2]

``--gpu-style``: also the torch path as a GPU run takes it (2048 px chunks, 4 tiles per
call, the trivial model as a torch module), once per chunk-task count given, without and
with vectors: what more chunk tasks give a GPU host's CPU stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from memory import make_model, make_scene  # noqa: E402


def trivial_net(threshold: float):
    """(n, bands, h, w) normalised input -> (n, 2, h, w) probabilities: background / building from band 1.

    Band 1 is smoothed over 15 px first, so the classes come in blobs of about a roof's size,
    not per-pixel speckle (which would make the vector stage's work unlike a real scene's);
    ``threshold``: the smoothed value (model units) where building becomes the likelier class.
    """
    from scipy.ndimage import uniform_filter

    def net(x: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-4.0 * (uniform_filter(x[:, 0], size=(1, 15, 15)) - threshold)))
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)

    return net


def model_floor(model: Path, n_tiles: int, tile: int) -> float:
    """Wall seconds of ``n_tiles`` forward passes of ``model`` alone (ONNX Runtime, batch 1, all cores)."""
    from geounet.models.onnx import load_onnx

    net = load_onnx(model, os.cpu_count() or 1)
    x = np.random.default_rng(0).normal(size=(1, 3, tile, tile)).astype(np.float32)
    net(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n_tiles):
        net(x)
    return time.perf_counter() - t0


def map_shape(classes_path: Path) -> str:
    """Building share, 4-connected components and the largest one's share of a class raster."""
    import rasterio
    from scipy import ndimage

    with rasterio.open(classes_path) as src:
        building = src.read(1) == 1
    labels, n = ndimage.label(building)
    largest = np.bincount(labels.ravel())[1:].max() if n else 0
    return f"{building.mean():.0%} building, {n} components, the largest {largest / max(building.sum(), 1):.1%}"


def cpu(fn, *args):
    """(CPU seconds of this process, fn's result): one stage alone, on one core."""
    c0 = time.process_time()
    out = fn(*args)
    return time.process_time() - c0, out


def stages_alone(scene: Path, model: Path, out: Path, net) -> dict[str, float]:
    """CPU seconds of each stage of the run, each alone (vectors: wall seconds on one worker thread)."""

    from geounet.compute.blend import blend_tiles, blend_weights
    from geounet.compute.grid import GeoGrid, TileGrid
    from geounet.engine.executors import ThreadedExecutor
    from geounet.engine.predict import _write_cogs
    from geounet.engine.stitch import Stitcher, final_writer
    from geounet.engine.tiles import ChunkResult, input_array
    from geounet.engine.vector_stage import VectorStream
    from geounet.io.scene import open_scene, read_box
    from geounet.models.card import read_card

    card = read_card(model)
    with open_scene(scene) as src:
        grid = TileGrid(src.height, src.width, card.tile_size, card.overlap, 1)
        geo = GeoGrid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)
        scene_grid = (src.crs, src.transform, src.width, src.height)
    chunks = list(grid.chunks())
    t: dict[str, float] = {}

    def read_all():
        with open_scene(scene) as src:
            return [read_box(src, card.bands, c.box, (grid.height, grid.width)) for c in chunks]

    t["read (windowed reads of every chunk)"], pixels = cpu(read_all)
    first_tile = chunks[0].tiles[0]
    answer = net(input_array(*pixels[0], [first_tile.box.relative_to(chunks[0].box)], card))  # one tile's, reused

    def normalise_and_blend():
        results = []
        for chunk, (px, valid) in zip(chunks, pixels):
            windows = [tile.box.relative_to(chunk.box) for tile in chunk.tiles]
            input_array(px, valid, windows, card)
            probs = np.zeros((2, chunk.box.height, chunk.box.width), np.float32)
            weights = [blend_weights(grid.tile_size, grid.overlap, tile.taper) for tile in chunk.tiles]
            blend_tiles(
                np.repeat(answer, len(windows), 0),
                [(r.start, c.start) for r, c in windows],
                weights,
                probs.shape[1:],
                out=probs,
            )
            results.append(ChunkResult(chunk.index, chunk.box, probs, len(chunk.tiles), 0, valid))
        return results

    t["normalise + blend (model answer precomputed)"], results = cpu(normalise_and_blend)
    out.mkdir(parents=True, exist_ok=True)

    def stitch_and_write():
        with final_writer(out, card, scene_grid) as sink:
            stitcher = Stitcher(grid, sink)
            for r in results:
                stitcher.add(r)

    t["stitch + finalize + tiled rasters"], _ = cpu(stitch_and_write)
    t["COGs (overviews, deflate)"], _ = cpu(_write_cogs, out, (("scores", "AVERAGE"), ("classes", "NEAREST")))
    import rasterio
    import shapely

    from geounet.compute.vectorize import Pieces, merge_groups, polygonize_block, seam_groups
    from geounet.engine.vector_stage import pieces_to_layers

    executor = ThreadedExecutor(1)  # not used: the stages run here, one after the other
    stream = VectorStream(out / "features.gpkg", card, executor, geo)
    with rasterio.open(out / "classes.tif") as c, rasterio.open(out / "scores.tif") as sc:
        classes_all, scores_all = c.read(1), sc.read()
    own_all = np.take_along_axis(scores_all, np.where(classes_all == 255, 0, classes_all)[None].astype(np.intp), 0)[0]

    def polygonize_all():
        out = []
        for job in stream.jobs.values():
            r0, c0, r1, c1 = job.window
            out.append(
                polygonize_block(
                    classes_all[r0:r1, c0:c1], (r0, c0), stream.poly_ids, own_all[r0:r1, c0:c1], job.inner_edges
                )
            )
        return out

    t["vectors: polygonize (rasterio shapes, score sums)"], blocks_pieces = cpu(polygonize_all)
    t["vectors: clean + regularise the polygons inside blocks"], layers = cpu(
        lambda: [pieces_to_layers(p.take(~p.on_edge), stream.ctx) for p in blocks_pieces]
    )

    def seams():
        cand = Pieces.concat([p.take(p.on_edge) for p in blocks_pieces])
        return [pieces_to_layers(merge_groups(cand, seam_groups(cand)), stream.ctx)]

    t["vectors: seam merges + their clean-up"], merged = cpu(seams)

    def write():
        for part in layers + merged:
            stream.writer.write(part)
        stream.writer.flush()

    t["vectors: GeoPackage writes"], _ = cpu(write)
    executor.close()
    n = sum(len(g) for part in layers + merged for g in part.values())
    vertices = sum(
        int(shapely.get_num_coordinates(g.geometry.values).sum()) for part in layers + merged for g in part.values()
    )
    print(f"vector stage alone: {n} features, {vertices} vertices")
    return t


def replace_model(net, card) -> None:
    """Make every chunk task of this process use ``net`` (with ``card``) instead of loading the model file."""
    import geounet.engine.executors as executors
    import geounet.engine.tiles as tiles_module

    fake = lambda *args, **kwargs: (net, card)  # noqa: E731 - the model replaced, nothing else
    tiles_module.cached_model = fake  # type: ignore[assignment]
    executors.cached_model = fake  # type: ignore[assignment]


def trivial_torch_net(threshold: float):
    """The trivial model as a torch module (logits), for the torch path a GPU run takes.

    The same rule as :func:`trivial_net` (band 1 averaged over 15 px, a logistic step at
    ``threshold``), as logits whose softmax is that probability; zero padding at tile edges.
    """
    import torch

    class Trivial(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pool = torch.nn.functional.avg_pool2d  # separable: 30 operations per pixel, not 225
            smooth = pool(x[:, :1], (1, 15), stride=1, padding=(0, 7), count_include_pad=False)
            smooth = pool(smooth, (15, 1), stride=1, padding=(7, 0), count_include_pad=False)
            building = 4.0 * (smooth - threshold)
            return torch.cat([torch.zeros_like(building), building], dim=1)

    return Trivial().eval()


def gpu_style(scene: Path, model: Path, work: Path, threshold: float, workers: list[int], mp: float) -> None:
    """The torch path as a GPU run takes it (2048 px chunks, 4 tiles per call) with the trivial model, per task count.

    What a GPU host's CPU stages gain from more chunk tasks when the model is nearly free
    (``hardware.default_workers``). Wall and CPU seconds of this process, without and with vectors.
    """
    from geounet.engine.predict import predict_batch
    from geounet.engine.settings import PredictSettings
    from geounet.models.card import read_card

    card = read_card(model)
    replace_model(trivial_torch_net(threshold), card)
    print()
    print("the torch path as on a GPU (2048 px chunks, 4 tiles per call), trivial model, by chunk tasks:")
    for vector in (False, True):
        for n in workers:
            settings = PredictSettings(
                quiet=True,
                device="cpu",
                backend="torch",
                precision="fp32",
                batch_size=4,
                chunk_pixels=2048,
                workers=n,
                vector=vector,
            )
            t0, c0 = time.perf_counter(), time.process_time()
            [report] = predict_batch([scene], work / f"gpu_style_{n}_{vector}", model, settings)
            wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            if not report.ok:
                sys.exit(f"run failed: {report.error}")
            print(
                f"   {'with' if vector else 'without'} vectors, {n} task(s): {wall:.2f} s wall, "
                f"{mp / wall:.2f} MP/s, CPU {cpu_s:.1f} s",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="scene side in pixels")
    ap.add_argument("--keep", type=Path, help="keep the scene and outputs here")
    ap.add_argument(
        "--gpu-style", default="", help="also the torch path as on a GPU with these chunk-task counts, e.g. 1,2,1,2"
    )
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="geounet-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GEOUNET_CACHE_DIR"] = str(work / "cache")
    cores = os.cpu_count() or 1
    try:
        scene = make_scene(work / "scene.tif", args.size)
        model = make_model(work / "tiny.safetensors", scene)
        import rasterio

        from geounet.engine.predict import predict_batch
        from geounet.engine.settings import PredictSettings
        from geounet.models.card import normalisation, read_card

        card = read_card(model)
        with rasterio.open(scene) as src:  # the scene's mean red, in the model's units
            red = src.read(1, out_shape=(512, 512)).astype(np.float32)
        gain, offset = normalisation(card)
        net = trivial_net(float(red.mean() * gain[0] - offset[0]))
        replace_model(net, card)
        t0, c0 = time.perf_counter(), time.process_time()
        settings = PredictSettings(quiet=True, precision="fp32", backend="onnx", vector=False)
        [report] = predict_batch([scene], work / "novector", model, settings)
        wall_nv, cpu_nv = time.perf_counter() - t0, time.process_time() - c0
        # as on a GPU host, where the model leaves the CPU's cores free: blocks polygonized while predicting
        settings = PredictSettings(
            quiet=True, precision="fp32", backend="onnx", vector_processes=None, vector_while_predicting=True
        )
        t0, c0 = time.perf_counter(), time.process_time()
        [report] = predict_batch([scene], work / "out", model, settings)
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        if not report.ok:
            sys.exit(f"run failed: {report.error}")
        # the same scene again in this process: what each scene of a batch costs once the
        # vector stage's libraries are imported (a GPU host runs batches)
        t0, c0 = time.perf_counter(), time.process_time()
        [again] = predict_batch([scene], work / "again", model, settings)
        wall_warm, cpu_warm = time.perf_counter() - t0, time.process_time() - c0
        if not again.ok:
            sys.exit(f"run failed: {again.error}")
        record = json.loads((work / "out" / "scene" / "run.json").read_text())
        tiles, timings = record["tiles"], record["timings"]
        mp = args.size * args.size / 1e6
        print(
            f"machine: {cores} cores; scene {args.size}^2 ({mp:.1f} MP), {tiles['run']} tiles of {tiles['tile_size']} px"
        )
        print(f"class map of the trivial model: {map_shape(work / 'out' / 'scene' / 'classes.tif')}")
        print(
            f"\nend to end, without vectors: {wall_nv:.2f} s wall, {mp / wall_nv / cores:.2f} MP/s per core, "
            f"CPU {cpu_nv:.1f} s (of which the trivial model's: see 'model' below)"
        )
        print(
            f"end to end, with vectors (vector stage as the CLI runs it: {record['vector']['ran_on']}): {wall:.2f} s wall, "
            f"{mp / wall / cores:.2f} MP/s per core; CPU of this process {cpu_s:.1f} s (worker processes, if any, not counted)"
        )
        print(
            f"   again, a second scene in the same process: {wall_warm:.2f} s wall, "
            f"{mp / wall_warm / cores:.2f} MP/s per core; CPU {cpu_warm:.1f} s"
        )
        print(
            "   run.json: "
            + ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k.endswith("_s") and v)
            + f"; blocks polygonized while predicting: {record['vector']['blocks_while_predicting']}"
        )
        if args.gpu_style:
            threshold = float(red.mean() * gain[0] - offset[0])
            gpu_style(scene, model, work, threshold, [int(n) for n in args.gpu_style.split(",")], mp)
            replace_model(net, card)
        alone = stages_alone(scene, model, work / "alone", net)
        print(f"\n{'each stage alone':66s} {'CPU s':>7s} {'MP/s/core':>10s}")
        for name, seconds in alone.items():
            print(f"{name:66s} {seconds:7.2f} {mp / max(seconds, 1e-9):10.2f}")
        total = sum(alone.values())
        print(f"{'all stages, one after the other':66s} {total:7.2f} {mp / total:10.2f}")
        limit = max(alone, key=lambda k: alone[k])
        print(f"limiting stage: {limit} ({alone[limit] / total:.0%} of the pipeline's own CPU time)")
        x = np.zeros((1, 3, tiles["tile_size"], tiles["tile_size"]), np.float32)
        c0 = time.process_time()
        for _ in range(tiles["run"]):
            net(x)
        print(f"model: the trivial model over the same tiles: {time.process_time() - c0:.2f} CPU s")
        floor = model_floor(model, tiles["run"], tiles["tile_size"])
        print(f"for scale: a tiny real U-Net (resnet18, depth 3) over the same tiles alone: {floor:.1f} s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
