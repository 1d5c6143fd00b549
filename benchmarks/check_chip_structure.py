#!/usr/bin/env python
"""Acceptance check: on chips that differ only in spatial structure, the CNN beats the MLP.

The chip set is made here, independently of ``sample_data/make_sample.py``, the way an
outside user would make one: two classes of single-channel 64 x 64 float32 grids in
which **every chip is a permutation of the same 4096 values** (the standard normal
quantiles ``Phi^-1((r + 0.5) / 4096)``, by rank transform). Per chip, the histogram,
mean, spread, minimum and maximum are identical in both classes; the chips are periodic
and stationary, so the value at any one pixel has the same distribution in both classes
too. Only the arrangement of the values tells the classes apart. About 5 % of the chips
get a rectangular NaN hole (10 to 30 % of the chip) in both classes alike, as nodata.

Two designs (``--design``):

``parcels`` (default)
    Class ``parcels``: piecewise-constant Voronoi "fields" (8 to 20 cells, wrapped on the
    torus, a little pixel noise). Class ``surrogates``: IAAFT surrogates of other,
    independent parcel maps: the same values and (to 0.1 %) the same Fourier amplitudes,
    hence the same power spectrum and autocorrelation in expectation, but random phases,
    so no edges or plateaus. Every linear projection of a chip has the same mean and
    variance in both classes; what differs is local shape (sharp straight edges).
``correlation``
    Gaussian random fields with a correlation length of ``--sigma-long`` (3) versus
    ``--sigma-short`` (1.5) pixels. Same per-pixel distribution, but different
    autocorrelation: a flattened model can learn local difference filters ("roughness"),
    so the MLP is well above chance here, and the ``--max-mlp`` check fails (see
    docs/training-chips.md).

The training set (``--n-train`` chips per class, seed ``--seed``) is written as a folder
of class folders of ``.npy`` files; the held-out test set (``--n-test`` per class, seed
``--seed + 1000``) as one ``.npz`` with ``chips``, ``labels`` and ``class_names``. Then,
through the command line exactly as a user would type it::

    georaster-cnn train train_chips/ --arch cnn --epochs E --seed S -o cnn.safetensors
    georaster-cnn train train_chips/ --arch mlp --epochs E --seed S -o mlp.safetensors
    georaster-cnn evaluate cnn.safetensors test_chips.npz -o report_cnn/
    georaster-cnn evaluate mlp.safetensors test_chips.npz -o report_mlp/

and the test accuracies (``metrics.json``) are checked: PASS when the CNN reaches
``--min-cnn`` (0.8), beats the MLP by ``--min-margin`` (0.15) and the MLP stays below
``--max-mlp`` (0.7), i.e. near chance (0.5). Exit status 0 on PASS, 1 on FAIL.

Run from the repository root with the development environment active::

    python benchmarks/check_chip_structure.py     # 400/100 chips per class, 10 epochs: ~5 min on 2 cores
    python benchmarks/check_chip_structure.py --help

``tests/test_chip_structure_check.py`` imports :func:`make_chips` from here and runs a
smaller version of the same check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np

#: Class names (id order) of each design; folder names sort in this order.
DESIGNS: dict[str, tuple[str, str]] = {
    "parcels": ("parcels", "surrogates"),
    "correlation": ("long", "short"),
}
SIZE = 64


def quantile_values(n: int) -> np.ndarray:
    """``n`` sorted standard-normal quantiles ``Phi^-1((r + 0.5) / n)``, float32."""
    nd = NormalDist()
    return np.array([nd.inv_cdf((r + 0.5) / n) for r in range(n)], dtype=np.float32)


def rank_transform(fields: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Replace every chip's values by the sorted ``values`` in the order of the chip's ranks.

    Afterwards every chip is a permutation of ``values``.
    """
    n = fields.shape[0]
    order = np.argsort(fields.reshape(n, -1), axis=1, kind="stable")
    out = np.empty((n, values.size), dtype=values.dtype)
    out[np.arange(n)[:, None], order] = values[None, :]
    return out.reshape(fields.shape)


def gaussian_fields(n: int, size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` periodic stationary Gaussian random fields ``(n, size, size)``.

    White noise convolved (circularly, via the FFT) with a Gaussian kernel of standard
    deviation ``sigma`` pixels: the correlation length grows with ``sigma``.
    """
    k = np.fft.fftfreq(size)
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    noise = rng.standard_normal((n, size, size))
    return np.fft.ifft2(np.fft.fft2(noise) * transfer).real


def parcel_fields(
    n: int, size: int, rng: np.random.Generator, cells: tuple[int, int] = (8, 20)
) -> np.ndarray:
    """``n`` periodic piecewise-constant "parcel" maps ``(n, size, size)``, plus a little noise.

    Voronoi cells of 8 to 20 random seeds on the torus (distances wrap around), each
    with a standard-normal level; pixel noise of standard deviation 0.15.
    """
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size))
    for i in range(n):
        k = int(rng.integers(cells[0], cells[1] + 1))
        sy, sx = rng.uniform(0, size, k), rng.uniform(0, size, k)
        dy = np.abs(yy[None] - sy[:, None, None])
        dx = np.abs(xx[None] - sx[:, None, None])
        d2 = np.minimum(dy, size - dy) ** 2 + np.minimum(dx, size - dx) ** 2
        out[i] = rng.standard_normal(k)[np.argmin(d2, axis=0)]
        out[i] += 0.15 * rng.standard_normal((size, size))
    return out


def iaaft(chips: np.ndarray, rng: np.random.Generator, iterations: int = 30) -> np.ndarray:
    """IAAFT surrogates (Schreiber & Schmitz 1996) of ``(n, h, w)`` chips.

    Each surrogate holds exactly its chip's values (a permutation of them) and has
    (to about 0.1 %) its chip's Fourier amplitudes, i.e. the same histogram and the
    same periodic autocorrelation, but random Fourier phases: the shapes and edges
    are gone. 30 iterations are converged for 64 x 64 chips.
    """
    n, h, w = chips.shape
    target = np.sort(chips.reshape(n, -1), axis=1)
    amplitude = np.abs(np.fft.fft2(chips))
    x = rng.permuted(chips.reshape(n, -1), axis=1).reshape(chips.shape)
    rows = np.arange(n)[:, None]
    for _ in range(iterations):
        phase = np.angle(np.fft.fft2(x))
        y = np.fft.ifft2(amplitude * np.exp(1j * phase)).real
        order = np.argsort(y.reshape(n, -1), axis=1)
        flat = np.empty((n, h * w), dtype=chips.dtype)
        flat[rows, order] = target
        x = flat.reshape(chips.shape)
    return x


def punch_holes(chips: np.ndarray, rng: np.random.Generator, share: float = 0.05) -> int:
    """Set a random rectangle (10-30 % of the pixels) to NaN in about ``share`` of the chips."""
    n, h, w = chips.shape
    picked = np.flatnonzero(rng.random(n) < share)
    for i in picked:
        area = rng.uniform(0.1, 0.3) * h * w
        hh = int(np.clip(round(np.sqrt(area * rng.uniform(0.5, 2.0))), 4, h))
        ww = int(np.clip(round(area / hh), 4, w))
        r0, c0 = rng.integers(0, h - hh + 1), rng.integers(0, w - ww + 1)
        chips[i, r0 : r0 + hh, c0 : c0 + ww] = np.nan
    return int(picked.size)


def make_chips(
    n_per_class: int,
    seed: int,
    *,
    design: str = "parcels",
    size: int = SIZE,
    sigma_long: float = 3.0,
    sigma_short: float = 1.5,
    hole_share: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Chips ``(2n, size, size)`` float32 (some with NaN holes) and labels ``(2n,)``, shuffled.

    Class ids follow :data:`DESIGNS` ``[design]``. Before the holes, every chip is a
    permutation of the same ``size**2`` values (:func:`quantile_values`).

    - ``"parcels"``: 0 = :func:`parcel_fields`, 1 = IAAFT surrogates (:func:`iaaft`)
      of other, independent parcel maps: same values, same power spectrum in
      expectation, no edges.
    - ``"correlation"``: 0 = Gaussian fields with correlation length ``sigma_long``,
      1 = with ``sigma_short`` (:func:`gaussian_fields`).

    Deterministic in ``seed``.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}; found {design!r}")
    rng = np.random.default_rng(seed)
    values = quantile_values(size * size)
    if design == "parcels":
        parcels = rank_transform(parcel_fields(n_per_class, size, rng), values)
        sources = rank_transform(parcel_fields(n_per_class, size, rng), values)
        parts = [parcels, iaaft(sources, rng)]
    else:
        parts = [
            rank_transform(gaussian_fields(n_per_class, size, sigma, rng), values)
            for sigma in (sigma_long, sigma_short)
        ]
    chips = np.concatenate(parts)
    labels = np.repeat(np.arange(2, dtype=np.int64), n_per_class)
    order = rng.permutation(chips.shape[0])
    chips, labels = chips[order], labels[order]
    punch_holes(chips, rng, hole_share)
    return chips, labels


def write_folder(
    root: Path, chips: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> Path:
    """One sub-folder per class holding ``0000.npy ...`` (2-D float32 arrays)."""
    for k, name in enumerate(class_names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j, chip in enumerate(chips[labels == k]):
            np.save(folder / f"{j:04d}.npy", chip)
    return root


def write_npz(
    path: Path, chips: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> Path:
    """One ``.npz`` with ``chips (n, 1, h, w)``, ``labels (n,)`` and ``class_names``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, chips=chips[:, None], labels=labels, class_names=np.array(class_names))
    return path


def describe(chips: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> str:
    """Per-class summary statistics that show what differs and what does not."""
    n = chips.shape[0]
    whole = np.isfinite(chips).all(axis=(1, 2))
    d = np.diff(chips, axis=2)
    rough = np.nanmean(d**2, axis=(1, 2))  # mean squared neighbour difference
    z = d.reshape(n, -1) / np.nanstd(d.reshape(n, -1), axis=1, keepdims=True)
    kurt = np.nanmean(z**4, axis=1)  # kurtosis of neighbour differences: edges -> heavy tails
    power = np.abs(np.fft.fft2(chips[whole])) ** 2
    lines = []
    spectra = []
    for k, name in enumerate(class_names):
        sel = labels == k
        spectra.append(power[labels[whole] == k].mean(axis=0))
        lines.append(
            f"  {name:<11} chips {int(sel.sum()):4d}, with NaN holes {int((sel & ~whole).sum()):3d}; "
            f"chip mean {np.nanmean(chips[sel]):+.3f} std {np.nanstd(chips[sel]):.3f}; "
            f"neighbour diff^2 {rough[sel].mean():.3f} +- {rough[sel].std():.3f}; "
            f"diff kurtosis {kurt[sel].mean():5.2f} +- {kurt[sel].std():.2f}"
        )
    gap = np.abs(spectra[0] - spectra[1]).sum() / spectra[0].sum()
    lines.append(f"  mean power spectra of the two classes differ by {100 * gap:.1f} %")
    return "\n".join(lines)


def _cli(args: Sequence[str]) -> float:
    """Run ``georaster-cnn ARGS`` (the installed entry point) and return its wall time."""
    exe = shutil.which("georaster-cnn")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "georaster_cnn_cli.main", *args]
    print("$ georaster-cnn " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "COLUMNS": "200"})
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--design", choices=sorted(DESIGNS), default="parcels")
    p.add_argument("--n-train", type=int, default=400, help="training chips per class")
    p.add_argument("--n-test", type=int, default=100, help="held-out test chips per class")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="data seed (test: seed + 1000) and --seed")
    p.add_argument("--sigma-long", type=float, default=3.0, help="correlation design")
    p.add_argument("--sigma-short", type=float, default=1.5, help="correlation design")
    p.add_argument("--min-cnn", type=float, default=0.8)
    p.add_argument("--min-margin", type=float, default=0.15)
    p.add_argument("--max-mlp", type=float, default=0.7)
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the chips, models and reports go (kept); default: a new temporary folder, removed",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = p.parse_args(argv)

    names = DESIGNS[a.design]
    work = a.workdir or Path(tempfile.mkdtemp(prefix="chip_structure_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        shape = {"design": a.design, "sigma_long": a.sigma_long, "sigma_short": a.sigma_short}
        tr_x, tr_y = make_chips(a.n_train, a.seed, **shape)
        te_x, te_y = make_chips(a.n_test, a.seed + 1000, **shape)
        train_dir = write_folder(work / "train_chips", tr_x, tr_y, names)
        test_npz = write_npz(work / "test_chips.npz", te_x, te_y, names)
        print(
            f"design {a.design}: {tr_x.shape[0]} training chips (class folders of .npy in "
            f"{train_dir}), {te_x.shape[0]} test chips (seed {a.seed + 1000}, {test_npz}), "
            f"{SIZE}x{SIZE} float32; made in {time.perf_counter() - t0:.1f} s"
        )
        print("training chips:")
        print(describe(tr_x, tr_y, names), flush=True)
        results: dict[str, dict[str, float]] = {}
        for arch in ("cnn", "mlp"):
            model = work / f"{arch}.safetensors"
            report = work / f"report_{arch}"
            t_train = _cli(
                ["train", str(train_dir), "--arch", arch, "--epochs", str(a.epochs), "--seed",
                 str(a.seed), "-o", str(model), "--overwrite"]
            )  # fmt: skip
            t_eval = _cli(["evaluate", str(model), str(test_npz), "-o", str(report), "--overwrite"])
            metrics = json.loads((report / "metrics.json").read_text())
            results[arch] = {
                "accuracy": float(metrics["accuracy"]),
                "train_seconds": round(t_train, 1),
                "evaluate_seconds": round(t_eval, 1),
            }
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    cnn, mlp = results["cnn"]["accuracy"], results["mlp"]["accuracy"]
    checks = {
        f"cnn accuracy {cnn:.3f} >= {a.min_cnn}": cnn >= a.min_cnn,
        f"cnn - mlp {cnn - mlp:.3f} >= {a.min_margin}": cnn - mlp >= a.min_margin,
        f"mlp accuracy {mlp:.3f} < {a.max_mlp}": mlp < a.max_mlp,
    }
    print()
    print(f"design {a.design}, {a.epochs} epochs, seed {a.seed}; chance 0.5")
    print(f"{'arch':<5} {'test accuracy':>13} {'train s':>8} {'evaluate s':>11}")
    for arch, res in results.items():
        print(
            f"{arch:<5} {res['accuracy']:>13.3f} {res['train_seconds']:>8.1f} "
            f"{res['evaluate_seconds']:>11.1f}"
        )
    for text, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {text}")
    passed = all(checks.values())
    print("PASS" if passed else "FAIL")
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(a).items()},
                    "results": results,
                    "pass": passed,
                },
                indent=1,
            )
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
