"""``geounet predict SCENE... --out OUTDIR``: scores.tif, classes.tif and run.json per scene."""

from __future__ import annotations

from pathlib import Path

import typer

from geounet.cli import options
from geounet.cli.interrupts import interrupted_exit, stop_on_sigterm
from geounet.cli.logs import setup_logging
from geounet.engine.executors import ClusterError, lost_cluster
from geounet.engine.predict import predict_batch
from geounet.engine.settings import PredictSettings
from geounet.errors import GeounetError, Interrupted
from geounet.io.aoi import parse_bbox
from geounet.io.stac_search import StacSearch
from geounet.models.registry import DEFAULT_NAME


def predict(
    scenes: list[str] = typer.Argument(
        None,
        help="GeoTIFF (or any GDAL raster) scenes: files, http(s):// or s3:// URLs, or GDAL /vsi... paths; "
        "or STAC Item, ItemCollection, Catalog or Collection JSON files (each Item a scene, its assets "
        "stacked as a VRT). None needed with --stac-api.",
        show_default=False,
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder; each scene gets OUT/<scene stem>/ (a STAC Item: OUT/<item id>/)."
    ),
    model: str = typer.Option(
        DEFAULT_NAME,
        "--model",
        "-m",
        help="A bundled model's name (the variant trained closest to each scene's "
        "resolution is used; see geounet models) or a .safetensors model file.",
    ),
    tile_size: int | None = options.tile_size(),
    overlap: int | None = options.overlap(),
    batch_size: int | None = options.batch_size(),
    device: str = options.device(),
    precision: str = options.precision(),
    backend: str = typer.Option(
        "auto",
        help="auto, torch or onnx. auto: ONNX Runtime for fp32 on the CPU (the model is exported once to "
        "the cache, $GEOUNET_CACHE_DIR or ~/.cache/geounet), torch otherwise.",
    ),
    workers: int | None = typer.Option(
        None,
        help="Chunks processed in parallel (local threads; ignored with --scheduler). Default: one per core "
        "(at most 4) with ONNX Runtime, each with its share of the cores; 1 with torch.",
    ),
    scheduler: str | None = typer.Option(
        None,
        help="Address of an existing dask.distributed scheduler, e.g. tcp://HOST:8786; the scene and model "
        "paths must be readable by every worker (shared filesystem). Default: this process (dask's threaded scheduler).",
    ),
    vector: bool = typer.Option(
        True, "--vector/--no-vector", help="Also write features.gpkg (polygons, centre lines)."
    ),
    vector_format: str = typer.Option(
        "gpkg",
        help="gpkg: features.gpkg (all layers, QGIS styles); fgb: one FlatGeobuf per layer, features.<layer>.fgb.",
    ),
    vectors_while_predicting: bool | None = typer.Option(
        None,
        "--vectors-while-predicting/--vectors-after-predicting",
        help="Polygonize each block as soon as it is final, while later rows are still predicted, or all of them "
        "after the last chunk. Default: while, where the vector stage has cores of its own (worker processes from "
        "4 cores, a cluster, a GPU); after, where it would share the model's CPU cores (lower peak memory).",
        show_default=False,
    ),
    web: bool = typer.Option(
        False,
        "--web/--no-web",
        help="Also write web/: a map of each scene that needs no internet (see it with geounet view OUT/<scene>).",
    ),
    tta: str = options.tta(),
    rescale: str = options.rescale(),
    decision_weight: list[str] | None = options.decision_weight(),
    rule: list[str] | None = options.rule(),
    aoi: Path | None = typer.Option(
        None,
        help="Area of interest: a vector file (any CRS; its polygons unioned). Only the tiles meeting it run; "
        "outputs are nodata outside it and polygons are cut to it.",
    ),
    bbox: str | None = typer.Option(
        None, help="Area of interest as a box: minx,miny,maxx,maxy in --bbox-crs (instead of --aoi)."
    ),
    bbox_crs: str = typer.Option("EPSG:4326", help="The CRS of --bbox."),
    max_upsample: float = typer.Option(
        8.0,
        help="Refuse a scene whose working grid (at the model's resolution) would be more than this many times "
        "finer than the scene: a coarse scene needs a coarser model, not days of upsampled tiles.",
    ),
    max_working_pixels: float = typer.Option(
        1e11, help="Refuse a scene whose working grid would have more pixels than this."
    ),
    stac_api: str | None = typer.Option(
        None,
        help="Search this STAC API (its root URL) and predict each Item found, in --aoi/--bbox if given.",
        rich_help_panel="STAC API search",
    ),
    collection: list[str] = typer.Option(
        None, help="Collection(s) to search (repeat the option).", rich_help_panel="STAC API search", show_default=False
    ),
    datetime: str | None = typer.Option(
        None, help="Date or range, RFC 3339: 2021-05-01/2021-05-31, ../2021-05-31.", rich_help_panel="STAC API search"
    ),
    query: list[str] = typer.Option(
        None,
        help="Property condition, e.g. 'eo:cloud_cover<20' (repeat: all must hold).",
        rich_help_panel="STAC API search",
        show_default=False,
    ),
    max_items: int = typer.Option(100, help="At most this many Items.", rich_help_panel="STAC API search"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, warnings and errors only (cron)."),
) -> None:
    """Predict class probabilities and classes for each scene, on the scene's own grid."""
    setup_logging(quiet)
    try:
        box = None if bbox is None else parse_bbox(bbox)
        weights = options.parse_decision_weights(decision_weight)
        rules = options.parse_rules(rule)
        search = stac_search(stac_api, collection, datetime, query, max_items)
        if not scenes and search is None:
            raise GeounetError(None, "no scenes: give scene files or URLs, or a STAC API to search (--stac-api)")
    except GeounetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = PredictSettings(
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        precision=precision,
        backend=backend,
        workers=workers,
        scheduler=scheduler,
        vector=vector,
        vector_format=vector_format,
        vector_while_predicting=vectors_while_predicting,
        web=web,
        quiet=quiet,
        tta=tta,
        rescale=rescale,
        decision_weights=weights,
        postprocess=rules,
        aoi=None if aoi is None else str(aoi),
        bbox=box,
        bbox_crs=bbox_crs,
        max_upsample=max_upsample,
        max_working_pixels=int(max_working_pixels),
        vector_processes=None,  # large scenes: vector workers in processes (this console script has a __main__ guard)
    )
    try:
        with stop_on_sigterm():  # SIGTERM, like Ctrl-C: the running scene's partial outputs are removed
            reports = predict_batch(scenes or [], out, model, settings, search)
    except (Interrupted, KeyboardInterrupt) as exc:
        raise interrupted_exit(exc) from None
    except ClusterError as exc:  # the cluster failed under the run: the scene running has no output
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (GeounetError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - only a lost cluster is handled here
        if not lost_cluster(exc):
            raise
        typer.echo(
            f"error: {scheduler or 'local cluster'}: lost the Dask cluster ({type(exc).__name__}); "
            "the scene that was running has no output",
            err=True,
        )
        raise typer.Exit(1) from None
    failed = [r for r in reports if not r.ok]
    for r in failed:
        typer.echo(f"error: {r.error}", err=True)
    if len(reports) > 1 or failed:
        typer.echo(f"geounet: {len(reports) - len(failed)} scene(s) done, {len(failed)} failed", err=True)
    if failed:
        raise typer.Exit(1) from None


def stac_search(
    url: str | None, collections: list[str] | None, datetime: str | None, query: list[str] | None, max_items: int
) -> StacSearch | None:
    """The search the options ask for, or None; a one-line error for search options without --stac-api."""
    if url is None:
        if collections or datetime or query:
            raise GeounetError(None, "--collection, --datetime and --query refine a search: give --stac-api too")
        return None
    try:
        search = StacSearch(url, tuple(collections or ()), datetime, tuple(query or ()), max_items)
    except GeounetError as exc:
        raise GeounetError(None, f"--query: {exc.problem}") from None
    problems = search.problems("--stac-api")
    if problems:
        raise GeounetError(None, "; ".join(problems))
    return search
