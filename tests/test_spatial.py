"""inspect: Moran's I against a brute-force reference, verdicts, inspect_raster, the CLI."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from click.testing import CliRunner
from geo import NORTH_UP
from georaster_cnn_cli.main import cli

from georaster_cnn import InputError, inspect_raster, morans_i, open_raster
from georaster_cnn.products.spatial import structure_verdict

MakeRaster = Callable[..., Path]
LAGS = (1, 2, 4, 8, 16)


def smooth_field(shape: tuple[int, int], sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian-filtered white noise (periodic, via FFT), standardised."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    return (field - field.mean()) / field.std()


def as_data(values: np.ndarray, chunks: int | None = None) -> xr.DataArray:
    """An in-memory canonical ``(band, y, x)`` array (Dask-backed when ``chunks``)."""
    values = values[None] if values.ndim == 2 else values
    arr = xr.DataArray(
        values.astype("float32"),
        dims=("band", "y", "x"),
        coords={"band": [f"b{i + 1}" for i in range(values.shape[0])]},
    )
    return arr.chunk({"band": -1, "y": chunks, "x": chunks}) if chunks else arr


def brute_force_morans_i(band: np.ndarray, lag: int) -> float:
    """Classic Moran's I, ``N / W * sum_ij w_ij z_i z_j / sum_i z_i^2``, with a full weight matrix.

    ``w_ij = 1`` for valid cells ``lag`` pixels apart along a row or a column.
    """
    h, w = band.shape
    flat = band.astype(np.float64).ravel()
    valid = np.isfinite(flat)
    z = np.where(valid, flat - flat[valid].mean(), 0.0)
    weights = np.zeros((h * w, h * w))
    for r in range(h):
        for c in range(w):
            for r2, c2 in ((r, c + lag), (r + lag, c)):
                if r2 < h and c2 < w and valid[r * w + c] and valid[r2 * w + c2]:
                    weights[r * w + c, r2 * w + c2] = weights[r2 * w + c2, r * w + c] = 1.0
    n, total = valid.sum(), weights.sum()
    return float(n / total * (z @ weights @ z) / (z @ z))


# --------------------------------------------------------------------------- Moran's I


def test_white_noise_is_unstructured() -> None:
    noise = np.random.default_rng(1).standard_normal((256, 256))
    result = morans_i(as_data(noise, chunks=100), lags=LAGS)
    assert list(result) == ["b1"] and list(result["b1"]) == list(LAGS)
    for value in result["b1"].values():
        assert abs(value) < 0.05


def test_smooth_field_is_structured_and_decays() -> None:
    field = smooth_field((256, 256), sigma=4.0)
    values = morans_i(as_data(field, chunks=128), lags=LAGS)["b1"]
    assert values[1] > 0.8
    seq = [values[d] for d in LAGS]
    assert all(a > b for a, b in itertools.pairwise(seq))
    assert values[16] < 0.2


@pytest.mark.parametrize("holes", [False, True])
def test_agrees_with_brute_force(holes: bool) -> None:
    rng = np.random.default_rng(3)
    band = smooth_field((14, 11), sigma=1.5, seed=4) + 0.3 * rng.standard_normal((14, 11))
    if holes:
        band[2:5, 3:6] = np.nan
        band[rng.random(band.shape) < 0.1] = np.nan
    second = rng.standard_normal((14, 11))
    data = as_data(np.stack([band, second]), chunks=4)
    result = morans_i(data, lags=(1, 2, 3, 5))
    for name, values in zip(("b1", "b2"), (band, second), strict=True):
        for lag in (1, 2, 3, 5):
            ref = brute_force_morans_i(values.astype("float32"), lag)
            assert result[name][lag] == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_nan_holes_are_ignored() -> None:
    field = smooth_field((128, 128), sigma=3.0)
    holed = field.copy()
    holed[10:40, 20:70] = np.nan
    holed[np.random.default_rng(0).random(field.shape) < 0.05] = np.nan
    full = morans_i(as_data(field), lags=(1, 4))["b1"]
    part = morans_i(as_data(holed, chunks=50), lags=(1, 4))["b1"]
    assert all(math.isfinite(v) for v in part.values())
    assert part[1] == pytest.approx(full[1], abs=0.05)


def test_independent_of_chunking(tmp_path: Path, make_raster: MakeRaster) -> None:
    values = smooth_field((150, 130), sigma=2.0)
    values[40:60, 30:90] = np.nan
    path = make_raster(
        tmp_path, "s.tif", height=150, width=130, values=values, transform=NORTH_UP, blocksize=32
    )
    results = [
        morans_i(open_raster(path, chunks=c), lags=(1, 3, 30)) for c in (24, (64, 33), "auto")
    ]
    ref = results[0]["band_1"]
    for other in results[1:]:
        for lag, value in other["band_1"].items():
            assert value == pytest.approx(ref[lag], rel=1e-9, abs=1e-12)


def test_numpy_backed_array_matches_dask() -> None:
    field = smooth_field((60, 70), sigma=2.0)
    a = morans_i(as_data(field), lags=(1, 2))
    b = morans_i(as_data(field, chunks=16), lags=(1, 2))
    assert a["b1"] == pytest.approx(b["b1"], rel=1e-9)


def test_constant_band_is_nan() -> None:
    data = as_data(np.stack([np.full((32, 32), 0.1), smooth_field((32, 32), 2.0)]))
    result = morans_i(data, lags=(1, 2))
    assert all(math.isnan(v) for v in result["b1"].values())
    assert result["b2"][1] > 0.5


def test_lag_larger_than_raster_is_nan() -> None:
    result = morans_i(as_data(smooth_field((8, 8), 1.0)), lags=(1, 20))["b1"]
    assert math.isfinite(result[1]) and math.isnan(result[20])


def test_subsampled_large_raster() -> None:
    field = smooth_field((700, 650), sigma=3.0, seed=5)
    data = as_data(field, chunks=256)
    exact = morans_i(data, lags=(1, 4))["b1"]
    sampled = morans_i(data, lags=(1, 4), max_pixels=100_000)["b1"]
    again = morans_i(data, lags=(1, 4), max_pixels=100_000)["b1"]
    assert sampled == again  # deterministic (seeded)
    assert sampled != exact
    for lag in (1, 4):
        assert sampled[lag] == pytest.approx(exact[lag], abs=0.05)


@pytest.mark.parametrize("lags", [(), (0, 1), (1.5,), (-2,)])
def test_bad_lags(lags: tuple[float, ...]) -> None:
    with pytest.raises(InputError, match="lags must be positive whole numbers"):
        morans_i(as_data(np.zeros((4, 4)) + np.arange(4)), lags=lags)  # type: ignore[arg-type]


def test_bad_dims() -> None:
    with pytest.raises(InputError, match=r"expected a \(band, y, x\) array"):
        morans_i(xr.DataArray(np.zeros((4, 4)), dims=("y", "x")))


# --------------------------------------------------------------------------- verdicts


def test_verdicts() -> None:
    kind, text = structure_verdict({1: 0.82, 2: 0.7, 4: 0.5, 8: 0.41, 16: 0.2})
    assert kind == "strong"
    assert text.startswith("strongly spatially structured (Moran's I 0.82 at 1 px")
    assert "still 0.20 at 16 px" in text and "convolution can exploit local patterns" in text
    assert "still correlated at 16 px" in text
    kind, text = structure_verdict({1: 0.7, 2: 0.5, 4: 0.2, 8: 0.05})
    assert kind == "strong" and "pattern scale about 4 px" in text
    kind, text = structure_verdict({1: 0.01, 2: -0.02, 4: 0.0})
    assert kind == "none"
    assert text.startswith("no spatial structure")
    assert "a per-pixel model (or an MLP) is as good as a CNN" in text
    kind, text = structure_verdict({1: 0.2, 2: 0.05})
    assert kind == "weak" and text.startswith("weakly spatially structured")
    kind, text = structure_verdict({1: -0.9, 2: 0.8})
    assert kind == "strong" and "negatively autocorrelated" in text
    assert structure_verdict({1: math.nan}, constant=True)[0] == "constant"
    assert structure_verdict({1: math.nan}, constant=True)[1].startswith("constant band")
    assert structure_verdict({1: math.nan, 2: math.nan})[0] == "undefined"


# --------------------------------------------------------------------------- inspect_raster

KEYS = {
    "path", "driver", "bands", "dtype", "shape", "crs", "crs_units", "transform", "resolution",
    "rotated", "rotation_deg", "nodata", "nodata_fraction", "stats", "lags", "morans_i",
    "sampling", "structure", "verdict", "note",
}  # fmt: skip


@pytest.fixture
def tiny_tif(tmp_path: Path, make_raster: MakeRaster) -> Path:
    values = np.stack(
        [smooth_field((48, 40), 3.0), np.random.default_rng(2).standard_normal((48, 40))]
    )
    values[:, :4, :5] = -9999.0
    values[1, 10, 10] = -9999.0
    return make_raster(
        tmp_path, "tiny.tif", height=48, width=40, count=2, values=values, nodata=-9999.0,
        transform=NORTH_UP, descriptions=["smooth", "noise"], blocksize=16,
    )  # fmt: skip


def test_inspect_raster_report(tiny_tif: Path) -> None:
    report = inspect_raster(tiny_tif, lags=(1, 2, 4))
    assert set(report) == KEYS
    json.dumps(report, allow_nan=False)
    assert report["path"] == str(tiny_tif) and report["driver"] == "GTiff"
    assert report["bands"] == ["smooth", "noise"] and report["dtype"] == "float32"
    assert report["shape"] == [2, 48, 40]
    assert report["crs"] == "EPSG:32633" and report["crs_units"] == "metre"
    assert report["resolution"] == [30.0, 30.0] and not report["rotated"]
    assert report["nodata"] == -9999.0
    n = 48 * 40
    assert report["nodata_fraction"]["bands"]["smooth"] == pytest.approx(20 / n)
    assert report["nodata_fraction"]["bands"]["noise"] == pytest.approx(21 / n)
    assert report["nodata_fraction"]["overall"] == pytest.approx(21 / n)
    assert report["stats"]["smooth"]["count"] == n - 20
    assert set(report["stats"]["noise"]) == {"count", "mean", "std", "min", "max"}
    assert report["lags"] == [1, 2, 4]
    assert report["morans_i"]["smooth"][1] > 0.7
    assert report["structure"] == {"smooth": "strong", "noise": "none"}
    assert report["verdict"]["bands"]["noise"].startswith("no spatial structure")
    assert report["verdict"]["overall"].startswith("strongly spatially structured in 1 of 2 bands")
    assert not report["sampling"]["subsampled"]


def test_inspect_dataarray_constant_and_rotated(tmp_path: Path, make_raster: MakeRaster) -> None:
    rotated = Affine.rotation(30.0) * Affine.scale(10.0, -10.0)
    path = make_raster(
        tmp_path, "c.tif", height=20, width=20, values=np.full((20, 20), 3.0), transform=rotated
    )
    report = inspect_raster(open_raster(path), lags=(1,))
    assert report["structure"] == {"band_1": "constant"}
    assert report["morans_i"]["band_1"] == {1: None}
    assert report["verdict"]["bands"]["band_1"].startswith("constant band")
    assert report["verdict"]["overall"].startswith("every band is constant")
    assert report["rotated"] and report["rotation_deg"] == pytest.approx(30.0)
    assert report["resolution"] == pytest.approx([10.0, 10.0])


def test_inspect_in_memory_array() -> None:
    report = inspect_raster(as_data(smooth_field((30, 30), 2.0)), lags=(1,))
    assert report["path"] is None and report["driver"] is None and report["crs"] is None


# --------------------------------------------------------------------------- CLI


def test_cli_inspect_text(tiny_tif: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(tiny_tif), "--lags", "1,2"])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("GTiff", "EPSG:32633", "30 x 30 metre", "smooth", "noise", "Moran's I", "1 px"):
        assert text in out
    assert "strongly spatially structured" in out and "no spatial structure" in out


def test_cli_inspect_json_and_failures(tiny_tif: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    result = CliRunner().invoke(
        cli, ["inspect", str(tiny_tif), str(bad), str(tmp_path / "missing*.tif"), "--json"]
    )
    assert result.exit_code == 1
    reports = json.loads(result.stdout)
    assert [r["path"] for r in reports] == [str(tiny_tif)]
    assert reports[0]["morans_i"]["smooth"]["1"] > 0.7
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert str(bad) in errors[0] and "missing*.tif: pattern matches nothing" in errors[1]


def test_cli_inspect_folder(tiny_tif: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(tiny_tif.parent), "--json", "--lags", "1"])
    assert result.exit_code == 0, result.output
    assert [r["lags"] for r in json.loads(result.stdout)] == [[1]]


@pytest.mark.parametrize(
    ("lags", "says"),
    [("0", "--lags must be a whole number >= 1"), ("1,x", "positive whole numbers"),
     ("1,,2", "positive whole numbers")],
)  # fmt: skip
def test_cli_inspect_bad_lags(tiny_tif: Path, lags: str, says: str) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(tiny_tif), "--lags", lags])
    assert result.exit_code == 2
    assert says in result.output
