"""What a user might write without geounet: the baseline row of ``efficiency.py``'s end-to-end table.

The whole scene read into memory, normalised as the model card says, cut into 512 px tiles
overlapping by 64 px, run through the same network in torch (batches of 4, inference
mode, all cores), the tiles' probabilities averaged where they overlap, the arg-max
written as a deflate GeoTIFF on the scene's grid, and the building pixels polygonized
over the whole raster at once (``rasterio.features.shapes``) into a GeoPackage with
geopandas. No regularisation, no blending ramps, no nodata handling: a fair, simple script.

    python benchmarks/naive_predict.py SCENE MODEL OUTDIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main() -> None:
    scene, model, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    import geopandas as gpd
    import rasterio
    import shapely
    import torch
    from rasterio.features import shapes

    from geounet.models.card import normalise
    from geounet.models.network import load_model

    out.mkdir(parents=True, exist_ok=True)
    net, card = load_model(model, "cpu")
    net.eval()
    with rasterio.open(scene) as src:
        image, profile = src.read(), src.profile
    x = normalise(image, card)
    _, h, w = x.shape
    tile, step = 512, 448
    pad_h, pad_w = (-(h - tile) % step) if h > tile else tile - h, (-(w - tile) % step) if w > tile else tile - w
    x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    probs = np.zeros((len(card.classes), *x.shape[1:]), np.float32)
    counts = np.zeros(x.shape[1:], np.float32)
    corners = [(r, c) for r in range(0, x.shape[1] - tile + 1, step) for c in range(0, x.shape[2] - tile + 1, step)]
    with torch.inference_mode():
        for k in range(0, len(corners), 4):
            batch = corners[k : k + 4]
            t = torch.from_numpy(np.stack([x[:, r : r + tile, c : c + tile] for r, c in batch]))
            p = torch.softmax(net(t), dim=1).numpy()
            for (r, c), pi in zip(batch, p):
                probs[:, r : r + tile, c : c + tile] += pi
                counts[r : r + tile, c : c + tile] += 1
    classes = (probs / counts).argmax(0)[:h, :w].astype(np.uint8)
    profile.update(count=1, dtype="uint8", compress="deflate", tiled=True, nodata=None, photometric="MINISBLACK")
    with rasterio.open(out / "classes.tif", "w", **profile) as dst:
        dst.write(classes, 1)
    geoms = [shapely.geometry.shape(g) for g, v in shapes(classes, mask=classes == 1, transform=profile["transform"])]
    gdf = gpd.GeoDataFrame({"class": ["building"] * len(geoms)}, geometry=geoms, crs=profile["crs"])
    gdf.to_file(out / "buildings.gpkg", layer="buildings")


if __name__ == "__main__":
    main()
