"""Make the worked example of docs/vector-labels.md: rasters in three projected CRSs, points in
EPSG:4326.

    python docs/examples/vector_labels_demo.py --out /tmp/vl

writes, in --out:

* ``a_utm33.tif``: the bundled sample scene (EPSG:32633, 30 m);
* ``b_utm34.tif``: a second scene (generator seed 1) 40 km further east, warped to
  EPSG:32634 at 25 m;
* ``c_utm32.tif``: a third scene (seed 2) 40 km to the west, warped to EPSG:32632 at 35 m,
  kept apart for evaluation;
* ``train_points.gpkg``: random labelled points on A and B, ``evaluate_points.gpkg``: on C,
  both in EPSG:4326 with a text column ``landcover`` (the class names).

Points are drawn from each scene's label raster (away from nodata), so they are true labels
of the place they mark. The scenes lie side by side: a point falls on one raster only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"


def _warp(
    src_path: Path, dst_path: Path, shift_x: float, crs: str, res: float, nearest: bool
) -> None:
    """Move a raster ``shift_x`` metres east and warp it to ``crs`` at ``res`` metres."""
    with rasterio.open(src_path) as src:
        shifted = Affine.translation(shift_x, 0) @ src.transform
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *_bounds(shifted, src.width, src.height),
            resolution=res,
        )  # fmt: skip
        profile = src.profile | {
            "crs": crs,
            "transform": transform,
            "width": width,
            "height": height,
        }
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        profile["tiled"] = False
        with rasterio.open(dst_path, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                out = np.full((height, width), src.nodata, dtype=src.dtypes[b - 1])
                reproject(
                    src.read(b), out,
                    src_transform=shifted, src_crs=src.crs, dst_transform=transform, dst_crs=crs,
                    src_nodata=src.nodata, dst_nodata=src.nodata,
                    resampling=Resampling.nearest if nearest else Resampling.bilinear,
                )  # fmt: skip
                dst.write(out, b)
                dst.set_band_description(b, src.descriptions[b - 1])
            if nearest:
                dst.update_tags(**src.tags())
                with contextlib.suppress(ValueError):  # no colour table
                    dst.write_colormap(1, src.colormap(1))


def _bounds(t: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    xs, ys = zip(*(t @ (c, r) for c in (0, width) for r in (0, height)), strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def _points(labels_path: Path, n: int, seed: int) -> gpd.GeoDataFrame:
    """``n`` random labelled pixel centres of a label raster, in EPSG:4326."""
    with rasterio.open(labels_path) as src:
        lab = src.read(1)
        names = json.loads(src.tags()["CLASS_NAMES"])
        rows, cols = np.nonzero(lab != src.nodata)
        pick = np.random.default_rng(seed).choice(rows.size, n, replace=False)
        r, c = rows[pick], cols[pick]
        xs, ys = rasterio.transform.xy(src.transform, r, c)
        return gpd.GeoDataFrame(
            {"landcover": [names[int(k)] for k in lab[r, c]]},
            geometry=gpd.points_from_xy(xs, ys),
            crs=src.crs,
        ).to_crs(4326)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--points", type=int, default=600, help="training points per scene")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        scenes = {"a_utm33": (SAMPLE, 0.0, "EPSG:32633", 30.0)}
        for name, seed, shift, crs, res in (
            ("b_utm34", 1, 40_000.0, "EPSG:32634", 25.0),
            ("c_utm32", 2, -40_000.0, "EPSG:32632", 35.0),
        ):
            folder = Path(tmp) / name
            subprocess.run(
                [sys.executable, str(SAMPLE / "make_sample.py"), "--out", str(folder),
                 "--seed", str(seed)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            scenes[name] = (folder, shift, crs, res)
        frames = {}
        for i, (name, (folder, shift, crs, res)) in enumerate(scenes.items()):
            if name == "a_utm33":  # the bundled scene as it is
                shutil.copyfile(folder / "scene.tif", out / f"{name}.tif")
                shutil.copyfile(folder / "labels.tif", out / f"{name}_labels.tif")
            else:
                _warp(folder / "scene.tif", out / f"{name}.tif", shift, crs, res, nearest=False)
                _warp(folder / "labels.tif", out / f"{name}_labels.tif", shift, crs, res, True)
            frames[name] = _points(out / f"{name}_labels.tif", args.points, seed=i)
    train = gpd.pd.concat([frames["a_utm33"], frames["b_utm34"]], ignore_index=True)
    gpd.GeoDataFrame(train, crs=4326).to_file(out / "train_points.gpkg", driver="GPKG")
    frames["c_utm32"].to_file(out / "evaluate_points.gpkg", driver="GPKG")
    for p in sorted(out.iterdir()):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
