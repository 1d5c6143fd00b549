"""Generate the synthetic sample scene: 2-D numerical data that is *not* an image.

Run ``python sample_data/make_sample.py [--out DIR] [--size N] [--seed S]`` to (re)write
``scene.tif``, ``labels.tif`` and ``scene.nc`` (defaults: this folder, 512, 20261122), and
``python sample_data/make_sample.py --check [--out DIR]`` to verify existing files. The output
is a pure function of ``(size, seed)``: same arguments, same pixel values and metadata.

Design
------
The scene has three float32 channels in unrelated physical units (an elevation in m, a
volumetric soil moisture, an arbitrary sensor reading), a projected CRS (EPSG:32633, 30 m
pixels) and nodata holes. Four classes cover it as irregular regions: a Voronoi partition of
10-14 well-spaced seed points, with boundaries wiggled by a smooth domain warp and regions
assigned to classes so that each class gets roughly a quarter of the area.

The classes differ **only in spatial structure**:

* ``noise``     -- spatially uncorrelated white noise;
* ``smooth``    -- isotropic Gaussian random field, correlation length ~5 px;
* ``ridges``    -- anisotropic field, correlated over ~24 px along x (east-west) and ~2 px
  along y, i.e. streaks running east-west;
* ``labyrinth`` -- isotropic band-pass field around an 8 px wavelength (maze-like blobs).

All four are unchanged *as classes* by flips and 90-degree rotations, the default training
augmentations (a rotated ridge field is still ridges), so augmentation never mislabels.

Every field is a Gaussian random field: white noise filtered with a (possibly anisotropic)
Gaussian kernel in the Fourier domain, then standardised to zero mean and unit variance over
the whole image *before* the classes are composed, so the per-pixel marginal is N(0, 1) in
every class. Because a finite region of a correlated field has a sample mean/variance that
wanders away from (0, 1) by a few hundredths of a standard deviation, the composed field is
finally rank-transformed to exact N(0, 1) quantiles within each class (over valid pixels).
That monotone per-class map leaves the spatial structure intact but makes the class-wise
histograms of every channel practically identical. Each channel uses its own independent
fields with the same class structure and is mapped to its units as
``value = mean_c + std_c * field``, rounded to a unit-appropriate quantum.

Consequently no per-pixel rule -- a threshold, a per-pixel MLP, a 1x1 convolution -- can do
better than guessing the most frequent class: the label is only recoverable from a pixel's
*neighbourhood* (e.g. the variance of lag-1 differences along x versus along y), which is
what a CNN with a spatial receptive field learns. ``--check`` prints both statistics.

Files (all writes are atomic: temp file in the same folder, then ``os.replace``):

* ``scene.tif``  -- 3 x float32, tiled 256 x 256, DEFLATE + floating-point predictor,
  nodata -9999, band descriptions = channel names, generator tags;
* ``labels.tif`` -- uint8 class index 0..3, nodata 255 on the holes, colour table,
  tag ``CLASS_NAMES`` (JSON list), band description ``class``;
* ``scene.nc``   -- CF-1.8 netCDF copy of the scene: one variable per channel on (y, x)
  pixel-centre coordinates with a ``spatial_ref`` grid mapping, packed as int16 with
  ``scale_factor``/``add_offset`` (scale = the rounding quantum, so packing is lossless
  with respect to the GeoTIFF values) and ``_FillValue`` on the holes, zlib-compressed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.crs import CRS
from rasterio.transform import from_origin

__all__ = [
    "CHANNELS",
    "CLASS_COLORS",
    "CLASS_NAMES",
    "DEFAULT_SEED",
    "DEFAULT_SIZE",
    "GENERATOR_VERSION",
    "LABEL_NODATA",
    "NODATA",
    "Channel",
    "check",
    "generate",
    "main",
]

GENERATOR_VERSION = "2"
DEFAULT_SIZE = 512
DEFAULT_SEED = 20261122

CLASS_NAMES: tuple[str, ...] = ("noise", "smooth", "ridges", "labyrinth")
#: RGB colour per class index (the labels.tif colour table).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (200, 200, 200),  # noise: light grey
    (46, 139, 87),  # smooth: sea green
    (220, 120, 30),  # ridges: orange
    (60, 90, 200),  # labyrinth: blue
)
#: Spectral filter per class: ``None`` = white noise; ``("lowpass", sx, sy)`` = Gaussian kernel
#: with standard deviations ``sx``, ``sy`` pixels along x and y; ``("ring", wavelength, width)``
#: = isotropic band-pass around ``wavelength`` pixels with relative width ``width``. Every
#: class is unchanged *as a class* by flips and 90-degree rotations (the default training
#: augmentations): rotated ridges are still ridges.
Kernel = tuple[str, float, float] | None
_CLASS_KERNELS: tuple[Kernel, ...] = (
    None,  # noise: white
    ("lowpass", 2.5, 2.5),  # smooth: isotropic, correlation length ~5 px
    ("lowpass", 12.0, 1.0),  # ridges: streaks ~24 px long east-west, ~2 px across
    ("ring", 8.0, 0.35),  # labyrinth: isotropic band-pass around an 8 px wavelength
)

NODATA = -9999.0
LABEL_NODATA = 255

CRS_EPSG = 32633  # WGS 84 / UTM zone 33N
PIXEL_SIZE = 30.0
ORIGIN = (500_000.0, 5_200_000.0)  # upper-left corner (x0, y0), metres
TILE = 256


class Channel(NamedTuple):
    """One channel of the scene: name (band description / netCDF variable) and units.

    (A NamedTuple rather than a dataclass so the script also imports through
    ``importlib.util.spec_from_file_location`` without being registered in ``sys.modules``.)
    """

    name: str
    long_name: str
    units: str
    mean: float
    std: float
    quantum: float  # values are rounded to a multiple of this; also the int16 scale factor


CHANNELS: tuple[Channel, ...] = (
    Channel("elevation_m", "synthetic surface elevation", "m", 1200.0, 150.0, 0.1),
    Channel("soil_moisture", "synthetic volumetric soil moisture", "m3 m-3", 0.30, 0.05, 1e-4),
    Channel("sensor_c", "synthetic sensor C reading (arbitrary units)", "1", -5.0, 2.0, 1e-3),
)

_INT16_FILL = -32768

# Independent, stable random streams (adding a stream never changes the others).
_STREAM_LAYOUT, _STREAM_WARP, _STREAM_HOLES, _STREAM_FIELDS = 1, 2, 3, 4


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


# --------------------------------------------------------------------------- fields


def _gaussian_field(
    rng: np.random.Generator, size: int, kernel: Kernel | tuple[float, float]
) -> np.ndarray:
    """Standardised (mean 0, variance 1 over the image) periodic Gaussian random field.

    White noise filtered in the Fourier domain (see :data:`Kernel`); a plain ``(sx, sy)``
    means ``("lowpass", sx, sy)``; ``None`` returns the white noise itself.
    """
    white = rng.standard_normal((size, size))
    if kernel is None:
        field = white
    else:
        if len(kernel) == 2:
            kernel = ("lowpass", float(kernel[0]), float(kernel[1]))
        kind, a, b = kernel  # type: ignore[misc]
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        if kind == "lowpass":
            transfer = np.exp(-2.0 * np.pi**2 * ((a * fx) ** 2 + (b * fy) ** 2))
        elif kind == "ring":
            f0 = 1.0 / a
            transfer = np.exp(-0.5 * ((np.hypot(fx, fy) - f0) / (b * f0)) ** 2)
        else:
            raise ValueError(f"unknown kernel kind {kind!r}")
        field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(size, size))
    return (field - field.mean()) / field.std()


def _class_layout(seed: int, size: int) -> np.ndarray:
    """Class index per pixel: warped Voronoi cells of 10-14 seeds, balanced across classes."""
    rng = _rng(seed, _STREAM_LAYOUT)
    n_seeds = int(rng.integers(10, 15))
    min_dist = 0.19 * size
    points: list[tuple[float, float]] = []
    while len(points) < n_seeds:  # dart throwing; relax the spacing if it gets stuck
        for _ in range(2000):
            p = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
            if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist**2 for q in points):
                points.append(p)
                break
        else:
            min_dist *= 0.9
    pts = np.array(points)

    # Smooth domain warp so the cell boundaries are wiggly rather than straight.
    wrng = _rng(seed, _STREAM_WARP)
    amp = 0.025 * size
    corr = (size / 16.0, size / 16.0)
    warp_x = amp * _gaussian_field(wrng, size, corr)
    warp_y = amp * _gaussian_field(wrng, size, corr)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    wx, wy = xx + warp_x, yy + warp_y
    d2 = (wx[None] - pts[:, 0, None, None]) ** 2 + (wy[None] - pts[:, 1, None, None]) ** 2
    cell = np.argmin(d2, axis=0)

    # Largest cells first, each to the class with the least area so far.
    areas = np.bincount(cell.ravel(), minlength=n_seeds)
    class_of_cell = np.empty(n_seeds, dtype=np.uint8)
    class_area = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for c in np.argsort(-areas, kind="stable"):
        k = int(np.argmin(class_area))
        class_of_cell[c] = k
        class_area[k] += areas[c]
    return class_of_cell[cell]


def _holes(seed: int, size: int) -> np.ndarray:
    """Boolean mask of 4-6 irregular blobs covering 3-6 % of the pixels."""
    rng = _rng(seed, _STREAM_HOLES)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    for _ in range(100):  # redraw until the total cover is in range (usually the first try)
        mask = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(4, 7))):
            cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
            a, b = rng.uniform(0.035 * size, 0.07 * size, 2)
            theta = rng.uniform(0.0, np.pi)
            u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
            rough = _gaussian_field(rng, size, (0.02 * size, 0.02 * size))
            mask |= (u / a) ** 2 + (v / b) ** 2 < 1.0 + 0.45 * rough
        if 0.03 <= mask.mean() <= 0.06:
            return mask
    raise RuntimeError("could not draw nodata holes covering 3-6 % of the image")


def _gaussianise_per_class(field: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> None:
    """In place: map each class's valid values monotonically onto exact N(0, 1) quantiles."""
    nd = NormalDist()
    for k in range(len(CLASS_NAMES)):
        sel = (labels == k) & valid
        n = int(sel.sum())
        if n == 0:
            continue
        order = np.argsort(field[sel], kind="stable")
        probs = (np.arange(n) + 0.5) / n
        quantiles = np.fromiter((nd.inv_cdf(float(p)) for p in probs), np.float64, count=n)
        values = np.empty(n)
        values[order] = quantiles
        field[sel] = values


def _synthesize(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(scene float32 (3, size, size) with NODATA holes, labels uint8 with LABEL_NODATA)."""
    labels = _class_layout(seed, size)
    holes = _holes(seed, size)
    valid = ~holes
    scene = np.empty((len(CHANNELS), size, size), dtype=np.float32)
    for c, ch in enumerate(CHANNELS):
        composed = np.empty((size, size))
        for k, kernel in enumerate(_CLASS_KERNELS):
            field = _gaussian_field(_rng(seed, _STREAM_FIELDS, c, k), size, kernel)
            composed[labels == k] = field[labels == k]
        _gaussianise_per_class(composed, labels, valid)
        values = np.round((ch.mean + ch.std * composed) / ch.quantum) * ch.quantum
        scene[c] = np.where(valid, values, NODATA).astype(np.float32)
    labels = np.where(valid, labels, LABEL_NODATA).astype(np.uint8)
    return scene, labels


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _atomic(final: Path) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success rename it over ``final``."""
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; make it an ordinary readable file
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        for sidecar in tmp.parent.glob(f"{tmp.name}.*"):  # e.g. a GDAL .aux.xml
            sidecar.unlink(missing_ok=True)


def _geotiff_profile(size: int, count: int, dtype: str, nodata: float) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": count,
        "dtype": dtype,
        "crs": CRS.from_epsg(CRS_EPSG),
        "transform": from_origin(ORIGIN[0], ORIGIN[1], PIXEL_SIZE, PIXEL_SIZE),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
        "zlevel": 9,
        "interleave": "band",
    }


def _generator_tags(size: int, seed: int) -> dict[str, str]:
    return {
        "GENERATOR": "sample_data/make_sample.py",
        "GENERATOR_VERSION": GENERATOR_VERSION,
        "SEED": str(seed),
        "SIZE": str(size),
        "CLASS_NAMES": json.dumps(list(CLASS_NAMES)),
        "DESCRIPTION": (
            "Synthetic non-image scene: 4 classes with identical per-pixel value "
            "distributions that differ only in spatial correlation structure."
        ),
    }


def _write_scene_tif(path: Path, scene: np.ndarray, size: int, seed: int) -> None:
    profile = _geotiff_profile(size, len(CHANNELS), "float32", NODATA)
    with _atomic(path) as tmp, rasterio.open(tmp, "w", predictor=3, **profile) as dst:
        dst.write(scene)
        dst.update_tags(**_generator_tags(size, seed))
        for i, ch in enumerate(CHANNELS, start=1):
            dst.set_band_description(i, ch.name)
            dst.update_tags(i, units=ch.units, long_name=ch.long_name)
        dst.units = tuple(ch.units for ch in CHANNELS)


def _write_labels_tif(path: Path, labels: np.ndarray, size: int, seed: int) -> None:
    profile = _geotiff_profile(size, 1, "uint8", LABEL_NODATA)
    colormap: dict[int, tuple[int, int, int, int]] = {
        i: (*rgb, 255) for i, rgb in enumerate(CLASS_COLORS)
    }
    colormap[LABEL_NODATA] = (0, 0, 0, 0)
    with _atomic(path) as tmp, rasterio.open(tmp, "w", predictor=2, **profile) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, colormap)
        dst.set_band_description(1, "class")
        dst.update_tags(**_generator_tags(size, seed))


def _write_scene_nc(path: Path, scene: np.ndarray, size: int, seed: int) -> None:
    transform = from_origin(ORIGIN[0], ORIGIN[1], PIXEL_SIZE, PIXEL_SIZE)
    x = transform.c + PIXEL_SIZE * (np.arange(size) + 0.5)
    y = transform.f - PIXEL_SIZE * (np.arange(size) + 0.5)
    data_vars = {}
    encoding: dict[str, dict[str, Any]] = {
        "x": {"_FillValue": None},
        "y": {"_FillValue": None},
    }
    chunk = min(TILE, size)
    for c, ch in enumerate(CHANNELS):
        band = scene[c].astype(np.float64)
        band[scene[c] == NODATA] = np.nan
        data_vars[ch.name] = xr.Variable(
            ("y", "x"), band, attrs={"long_name": ch.long_name, "units": ch.units}
        )
        encoding[ch.name] = {
            "dtype": "int16",
            "scale_factor": np.float32(ch.quantum),
            "add_offset": np.float32(ch.mean),
            "_FillValue": np.int16(_INT16_FILL),
            "zlib": True,
            "complevel": 9,
            "shuffle": True,
            "chunksizes": (chunk, chunk),
        }
    tags = _generator_tags(size, seed)
    ds = xr.Dataset(
        data_vars,
        coords={"x": ("x", x), "y": ("y", y)},
        attrs={
            "Conventions": "CF-1.8",
            "title": "georaster_cnn synthetic sample scene",
            "source": f"{tags['GENERATOR']} v{GENERATOR_VERSION} (size={size}, seed={seed})",
            "comment": tags["DESCRIPTION"],
            "class_names": tags["CLASS_NAMES"],
        },
    )
    ds = ds.rio.write_crs(CRS.from_epsg(CRS_EPSG), grid_mapping_name="spatial_ref")
    ds = ds.rio.write_transform(transform)
    ds = ds.rio.write_coordinate_system()
    # Passing ``encoding=`` to to_netcdf would replace (not merge) each variable's encoding and
    # drop the ``grid_mapping`` that rioxarray stored there, so merge it in explicitly.
    for name, enc in encoding.items():
        ds[name].encoding.update(enc)
    with _atomic(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")


def generate(
    out_dir: str | os.PathLike[str], *, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED
) -> dict[str, Path]:
    """Write ``scene.tif``, ``labels.tif`` and ``scene.nc`` into ``out_dir``.

    Returns a mapping from file name to the written path. The content depends only on
    ``size`` (image side in pixels, >= 64) and ``seed``.
    """
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene, labels = _synthesize(size, seed)
    paths = {name: out / name for name in ("scene.tif", "labels.tif", "scene.nc")}
    _write_scene_tif(paths["scene.tif"], scene, size, seed)
    _write_labels_tif(paths["labels.tif"], labels, size, seed)
    _write_scene_nc(paths["scene.nc"], scene, size, seed)
    return paths


# --------------------------------------------------------------------------- checking


def _window_stats(band: np.ndarray, labels: np.ndarray, win: int) -> list[tuple[int, float, float]]:
    """(class, var(dx)/var, var(dy)/var) for win x win windows (stride win/2) that lie entirely
    inside one class and contain no nodata."""
    out = []
    h, w = labels.shape
    step = max(1, win // 2)
    for i in range(0, h - win + 1, step):
        for j in range(0, w - win + 1, step):
            lab = labels[i : i + win, j : j + win]
            k = int(lab[0, 0])
            if k == LABEL_NODATA or not np.all(lab == k):
                continue
            v = band[i : i + win, j : j + win].astype(np.float64)
            var = v.var()
            out.append((k, np.diff(v, axis=1).var() / var, np.diff(v, axis=0).var() / var))
    return out


def check(out_dir: str | os.PathLike[str], *, verbose: bool = True) -> dict[str, float]:
    """Reopen the files in ``out_dir``, verify them and return summary numbers.

    Raises ``AssertionError`` when a structural property (CRS, transform, nodata, alignment,
    netCDF round trip) is wrong or when the per-class mean/std of a channel differ by more
    than 0.05 channel standard deviations. Prints the tables when ``verbose``.
    """
    out = Path(out_dir)
    say = print if verbose else (lambda *a, **k: None)
    crs = CRS.from_epsg(CRS_EPSG)

    with rasterio.open(out / "scene.tif") as src:
        assert src.crs == crs, src.crs
        assert src.count == len(CHANNELS) and src.dtypes[0] == "float32"
        assert src.nodata == NODATA
        assert src.descriptions == tuple(ch.name for ch in CHANNELS), src.descriptions
        assert src.block_shapes[0] == (TILE, TILE), src.block_shapes
        size = src.width
        assert (src.transform.a, src.transform.e) == (PIXEL_SIZE, -PIXEL_SIZE)
        assert (src.transform.c, src.transform.f) == ORIGIN
        scene = src.read()
        transform = src.transform
        say(
            f"scene.tif   {src.width}x{src.height}x{src.count} {src.dtypes[0]} {src.crs} "
            f"nodata={src.nodata} tiles={src.block_shapes[0]} "
            f"compress={src.compression.value if src.compression else None} "
            f"predictor={src.tags(ns='IMAGE_STRUCTURE').get('PREDICTOR')}"
        )
    with rasterio.open(out / "labels.tif") as src:
        assert src.crs == crs and src.transform == transform
        assert (src.width, src.height) == (size, size)
        assert src.nodata == LABEL_NODATA and src.dtypes[0] == "uint8"
        assert json.loads(src.tags()["CLASS_NAMES"]) == list(CLASS_NAMES)
        assert src.descriptions == ("class",)
        cmap = src.colormap(1)
        assert all(cmap[i][:3] == rgb for i, rgb in enumerate(CLASS_COLORS)), cmap
        labels = src.read(1)
        say(
            f"labels.tif  {src.width}x{src.height} uint8 nodata={src.nodata} "
            f"classes={json.loads(src.tags()['CLASS_NAMES'])} colormap ok"
        )

    holes = labels == LABEL_NODATA
    assert np.array_equal(holes[None].repeat(len(CHANNELS), 0), scene == NODATA)
    say(f"nodata holes: {holes.mean():.2%} of pixels (same in all channels and labels)")
    shares = np.bincount(labels[~holes], minlength=len(CLASS_NAMES)) / (~holes).sum()
    say(
        "class shares: "
        + ", ".join(f"{n}={s:.1%}" for n, s in zip(CLASS_NAMES, shares, strict=True))
    )

    with xr.open_dataset(out / "scene.nc", decode_coords="all") as ds:
        assert ds.rio.crs == crs, ds.rio.crs
        assert list(ds.data_vars) == [ch.name for ch in CHANNELS], list(ds.data_vars)
        assert ds.rio.transform() == transform, ds.rio.transform()
        worst = 0.0
        for c, ch in enumerate(CHANNELS):
            var = ds[ch.name]
            assert var.encoding["dtype"] == np.dtype("int16")
            nc = var.values
            assert np.array_equal(np.isnan(nc), holes)
            err = float(np.max(np.abs(nc[~holes] - scene[c][~holes])) / ch.quantum)
            worst = max(worst, err)
            assert err < 0.5, (ch.name, err)
        say(
            f"scene.nc    vars={list(ds.data_vars)} crs={ds.rio.crs} int16-packed, "
            f"max |nc - tif| = {worst:.3f} quantum"
        )

    # -- per-class stats: per-pixel marginals must agree ---------------------------------
    result: dict[str, float] = {"hole_fraction": float(holes.mean())}
    max_dev = 0.0
    say("\nper-class statistics (deviation in units of the channel std):")
    say(
        f"{'channel':<14}{'class':<11}{'n':>8}{'mean':>12}{'std':>11}"
        f"{'dmean/s':>9}{'std/s':>7}   p05 / p50 / p95 (z)"
    )
    for c, ch in enumerate(CHANNELS):
        for k, name in enumerate(CLASS_NAMES):
            v = scene[c][labels == k].astype(np.float64)
            z = (v - ch.mean) / ch.std
            dmean, sratio = (v.mean() - ch.mean) / ch.std, v.std() / ch.std
            max_dev = max(max_dev, abs(dmean), abs(sratio - 1.0))
            q = np.percentile(z, [5, 50, 95])
            say(
                f"{ch.name:<14}{name:<11}{v.size:>8}{v.mean():>12.4f}{v.std():>11.4f}"
                f"{dmean:>+9.4f}{sratio:>7.4f}   {q[0]:+.3f} / {q[1]:+.3f} / {q[2]:+.3f}"
            )
    result["max_class_moment_deviation"] = max_dev
    say(f"max |dmean|, |std ratio - 1| over channels x classes: {max_dev:.4f} (limit 0.05)")

    # -- a per-pixel classifier cannot beat the majority class ---------------------------
    valid = ~holes
    edges = np.linspace(-4.0, 4.0, 33)
    zs = [(scene[c][valid] - ch.mean) / ch.std for c, ch in enumerate(CHANNELS)]
    bins = [np.clip(np.digitize(z, edges), 0, len(edges)) for z in zs]
    lab = labels[valid]
    loglik = np.zeros((len(CLASS_NAMES), lab.size))
    tv_max = 0.0
    for k in range(len(CLASS_NAMES)):
        for c in range(len(CHANNELS)):
            hist = np.bincount(bins[c][lab == k], minlength=len(edges) + 1) + 1.0
            hist /= hist.sum()
            loglik[k] += np.log(hist[bins[c]])
            ref = np.bincount(bins[c], minlength=len(edges) + 1) / bins[c].size
            tv_max = max(tv_max, 0.5 * float(np.abs(hist - ref).sum()))
        loglik[k] += np.log(shares[k])
    pixel_acc = float(np.mean(np.argmax(loglik, axis=0) == lab))
    result["pixel_naive_bayes_accuracy"] = pixel_acc
    result["max_class_histogram_tv_distance"] = tv_max
    say("\nper-pixel separability (33-bin histograms of each channel's z-score):")
    say(f"  max total-variation distance, class histogram vs all pixels: {tv_max:.4f}")
    say(
        f"  in-sample naive-Bayes accuracy from the 3 pixel values: {pixel_acc:.3f} "
        f"(majority class share {shares.max():.3f})"
    )

    # -- a neighbourhood statistic separates them ----------------------------------------
    win = min(64, max(16, size // 8))
    say(
        f"\nneighbourhood separability: var of lag-1 differences / var, in {win}x{win} "
        "windows (stride win/2) inside one class (median over windows, channel 1):"
    )
    stats = _window_stats(scene[0], labels, win)
    feats = np.array([(np.log(sx), np.log(sy)) for _, sx, sy in stats]).reshape(-1, 2)
    wlab = np.array([k for k, _, _ in stats], dtype=np.int64)
    say(f"{'class':<11}{'windows':>8}{'dx var':>9}{'dy var':>9}")
    centroids = np.full((len(CLASS_NAMES), 2), np.nan)
    for k, name in enumerate(CLASS_NAMES):
        sel = wlab == k
        if sel.any():
            centroids[k] = feats[sel].mean(axis=0)
            mx, my = np.exp(np.median(feats[sel], axis=0))
            say(f"{name:<11}{int(sel.sum()):>8}{mx:>9.3f}{my:>9.3f}")
        else:
            say(f"{name:<11}{0:>8}{'-':>9}{'-':>9}")
    if wlab.size:
        dist = np.nansum((feats[:, None, :] - centroids[None]) ** 2, axis=2)
        dist[:, np.isnan(centroids[:, 0])] = np.inf
        win_acc = float(np.mean(np.argmin(dist, axis=1) == wlab))
        result["window_nearest_centroid_accuracy"] = win_acc
        say(
            f"  nearest-centroid accuracy on (log dx var, log dy var): {win_acc:.3f} "
            f"over {wlab.size} windows"
        )

    assert max_dev < 0.05, f"per-class moments differ by {max_dev:.4f} std (limit 0.05)"
    return result


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify the files already in --out instead of writing them",
    )
    args = parser.parse_args(argv)
    if args.check:
        try:
            check(args.out)
        except AssertionError as exc:
            print(f"CHECK FAILED: {exc}", file=sys.stderr)
            return 1
        return 0
    paths = generate(args.out, size=args.size, seed=args.seed)
    for path in paths.values():
        print(f"{path}  {path.stat().st_size:>10,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
