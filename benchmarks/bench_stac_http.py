#!/usr/bin/env python
"""What a STAC mosaic reads over HTTP: requests and bytes per asset against the COG tiles needed.

Writes ``--scenes`` side-by-side scenes (512 x 512 pixels, 256-pixel COG tiles, one COG per
band, three bands; tests/stac_fixtures.py), serves them on the loopback range server
(tests/loopback_http.py, which logs every request and its bytes), and reads their
ItemCollection with ``gc.open_stac`` over HTTP: the whole mosaic, then a ``--bbox``
quarter of the first scene. For each, prints:

* requests per asset (HEAD, GET) and how many GETs start at byte 0 (header fetches);
* bytes fetched (GET bodies) against the bytes of the COG tiles the grid touches
  (TIFF tile byte counts of every tile intersecting it), and their ratio;
* wall seconds of ``open_stac`` + compute (loopback: no network latency).

Run: ``PYTHONPATH=.:cli:tests python benchmarks/bench_stac_http.py [--scenes 2]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import rasterio
import rasterio.warp
from rasterio.windows import from_bounds

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from loopback_http import serve  # noqa: E402
from stac_fixtures import MODEL_BANDS, RES, SIZE, TILE, write_collection, write_scene  # noqa: E402

import georaster_cnn as gc  # noqa: E402


def tiles_needed(path: Path, bounds: tuple[float, float, float, float] | None) -> int:
    """Bytes of the tiles of ``path`` that intersect ``bounds`` (its CRS; None: all)."""
    with rasterio.open(path) as src:
        rows, cols = -(-src.height // TILE), -(-src.width // TILE)
        r0, r1, c0, c1 = 0, rows, 0, cols
        if bounds is not None:
            w = from_bounds(*bounds, transform=src.transform)
            r0, c0 = max(0, int(w.row_off // TILE)), max(0, int(w.col_off // TILE))
            r1 = min(rows, int(-(-(w.row_off + w.height) // TILE)))
            c1 = min(cols, int(-(-(w.col_off + w.width) // TILE)))
        return sum(src.block_size(1, i, j) for i in range(r0, r1) for j in range(c0, c1))


def run(root: Path, names: list[str], bbox_utm: tuple[float, float, float, float] | None) -> None:
    with serve(root) as s:
        write_collection(root, names, f"{s.url}/", "bench.json")
        bbox = None
        if bbox_utm is not None:
            bbox = rasterio.warp.transform_bounds("EPSG:32632", "EPSG:4326", *bbox_utm)
        t0 = time.perf_counter()
        data = gc.open_stac(f"{s.url}/bench.json", bands=MODEL_BANDS, bbox=bbox, allow_remote=True)
        data.compute()
        seconds = time.perf_counter() - t0
        log = [r for r in s.log if r[1].endswith(".tif")]
    files = sorted({p.lstrip("/") for _, p, _, _ in log})
    grid = data.rio.bounds()
    needed = sum(tiles_needed(root / f, grid if bbox_utm is not None else None) for f in files)
    fetched = sum(n for m, _, _, n in log if m == "GET")
    methods = Counter(m for m, *_ in log)
    headers = sum(1 for m, _, rng, _ in log if m == "GET" and rng.startswith("bytes=0-"))
    what = "whole mosaic" if bbox_utm is None else "bbox (200 x 200 pixels inside one tile)"
    print(f"{what}: grid {data.sizes['y']} x {data.sizes['x']}, {len(files)} assets")
    print(
        f"  requests per asset: {methods['HEAD'] / len(files):.1f} HEAD, "
        f"{methods['GET'] / len(files):.1f} GET ({headers} header GETs for {len(files)} assets)"
    )
    print(f"  fetched {fetched:,} B, tiles needed {needed:,} B, ratio {fetched / needed:.3f}")
    print(f"  {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    root = Path(tempfile.mkdtemp())
    names = [f"S{i}" for i in range(args.scenes)]
    for i, name in enumerate(names):
        write_scene(root, name, 32632, 730000 + i * SIZE * RES, 5000000, seed=i, holes=False)
    run(root, names, None)
    x0, y1 = 730000 + 20 * RES, 5000000 - 20 * RES  # inside the first tile of the first scene
    run(root, names, (x0, y1 - 200 * RES, x0 + 200 * RES, y1))


if __name__ == "__main__":
    main()
