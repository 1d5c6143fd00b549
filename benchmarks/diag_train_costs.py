#!/usr/bin/env python
"""Where an epoch of ``train()`` spends its time, and what fewer BN-recalibration batches cost.

Companion to ``bench_train_throughput.py``. Two reports:

``costs``
    Seconds per 64 chips of each piece of ``train()``'s epoch on random chips with the
    library's default ``SmallCNN``: a bare training step, the same with the library's
    ``_augment``, ``_fit``'s whole loop body (weighted loss, disabled autocast and
    GradScaler, metrics), a batch-norm recalibration forward pass (train mode, no grad),
    a validation forward pass (eval mode, batch 256 and batch 64; per 64 chips)
    and the ``xt[order]``
    copy ``_fit`` makes every epoch (per 64 chips). The pieces alternate batch by batch in
    a shuffled order, so a machine shared with other jobs slows all of them alike; the
    medians are reported relative to the bare step. With them an epoch of ``n`` training
    and ``v`` validation chips costs, in bare steps of 64 chips, about
    ``n/64 * loop + min(n, 64 * K)/64 * recal + v/64 * valid`` (``K``: recalibration batches).

``recal SCENE LABELS``
    Trains on the pair (``patience=0``) and, after every epoch, evaluates the same
    weights with the library's batch-norm recalibration (``_bn_batches`` of the epoch's
    batches) and after recalibrating over K = 1, 2, 5, 10 and 50 random training batches
    instead: whether fewer batches change the validation loss and accuracy that pick the
    best epoch. Training goes on with the library's statistics.

    python benchmarks/diag_train_costs.py costs --rounds 20
    python benchmarks/diag_train_costs.py recal DIR/scene.tif DIR/labels.tif --epochs 4
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import georaster_cnn as gc
from georaster_cnn.training import _fit as _fit_mod
from georaster_cnn.training import trainer as _train_mod

PATCH, BATCH, BANDS, CLASSES = 64, 64, 3, 4
RECAL_K = (1, 2, 5, 10, 50)


def costs(n: int, rounds: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(n, BANDS, PATCH, PATCH)
    y = torch.randint(0, CLASSES, (n,))
    module = gc.build_model("cnn", in_channels=BANDS, n_classes=CLASSES, patch_size=PATCH)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    plain = nn.CrossEntropyLoss()
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 0.9, 1.1, 1.0]))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    gen = torch.Generator().manual_seed(0)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        module.train()
        loss = plain(module(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def fit_body(xb: torch.Tensor, yb: torch.Tensor) -> None:
        """``_fit``'s loop body after indexing and augmentation, on the CPU."""
        module.train()
        with torch.autocast(device_type="cpu", dtype=torch.float16, enabled=False):
            out = module(xb)
            loss = weighted(out, yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        float(loss.detach())
        int((out.argmax(1) == yb).sum())

    def recal(xb: torch.Tensor, yb: torch.Tensor) -> None:
        module.train()
        with torch.no_grad():
            module(xb)

    def valid(xb: torch.Tensor, yb: torch.Tensor) -> None:
        module.eval()
        with torch.inference_mode():
            out = module(xb)
            float(weighted(out, yb))
            int((out.argmax(1) == yb).sum())

    def pick(k: int = BATCH) -> torch.Tensor:
        return torch.randperm(n)[:k]

    def copy_all() -> None:
        x[torch.randperm(n)]

    # name -> (run once, chips it handles)
    pieces: dict[str, tuple[Callable[[], None], int]] = {
        "bare train step": (lambda: step(x[i := pick()], y[i]), BATCH),
        "train step + _augment": (
            lambda: step(_fit_mod._augment(x[i := pick()], gen), y[i]),
            BATCH,
        ),
        "_fit loop body + _augment": (
            lambda: fit_body(_fit_mod._augment(x[i := pick()], gen), y[i]),
            BATCH,
        ),
        "BN recalibration forward": (lambda: recal(x[i := pick()], y[i]), BATCH),
        "validation forward (batch 256)": (lambda: valid(x[i := pick(4 * BATCH)], y[i]), 4 * BATCH),
        "validation forward (batch 64)": (lambda: valid(x[i := pick()], y[i]), BATCH),
        f"xt[order] copy ({n} chips)": (copy_all, n),
    }
    for fn, _ in pieces.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in pieces}
    for r in range(rounds):
        names = list(pieces)
        random.Random(r).shuffle(names)
        for name in names:
            fn, chips = pieces[name]
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * BATCH / chips)
    base = statistics.median(times["bare train step"])
    print(
        f"torch threads {torch.get_num_threads()}, {rounds} rounds; seconds per {BATCH} chips "
        "(median, min) and median relative to the bare train step"
    )
    for name, v in times.items():
        med = statistics.median(v)
        print(f"  {name:34} {med:8.4f} {min(v):8.4f} {med / base:6.2f}")


def recal_quality(scene: str, labels: str, epochs: int, seed: int) -> None:
    orig_fit: Callable[..., Any] = _train_mod.fit
    orig_eval: Callable[..., Any] = _fit_mod._evaluate
    seen: dict[str, torch.Tensor] = {}
    rows: list[dict[Any, Any]] = []

    def fit(x: Any, y: Any, val: Any, *a: Any, **kw: Any) -> Any:
        seen["x"] = torch.from_numpy(x[~val])  # the normalised training windows
        return orig_fit(x, y, val, *a, **kw)

    def evaluate(module: nn.Module, x: torch.Tensor, *a: Any) -> tuple[float, float]:
        xt, batch = seen["x"], BATCH
        state = {k: v.clone() for k, v in module.state_dict().items()}
        row: dict[Any, Any] = {"epoch": len(rows) + 1, "library": orig_eval(module, x, *a)}
        gen = torch.Generator().manual_seed(len(rows) + 1)
        xs = xt[torch.randperm(len(xt), generator=gen)]
        for k in RECAL_K:
            t0 = time.perf_counter()
            _fit_mod._recalibrate_bn(module, xs[: k * batch], x.device, batch)
            row[f"recal_s_{k}"] = time.perf_counter() - t0
            row[k] = orig_eval(module, x, *a)
        module.load_state_dict(state)  # the library's own statistics for the rest
        rows.append(row)
        print(f"  epoch {row['epoch']} done", flush=True)
        result: tuple[float, float] = row["library"]
        return result

    setattr(_train_mod, "fit", fit)  # noqa: B010  (mypy: module attributes)
    setattr(_fit_mod, "_evaluate", evaluate)  # noqa: B010
    try:
        model = gc.train(
            gc.open_raster(scene),
            gc.open_labels(labels),
            epochs=epochs,
            patience=0,
            device="cpu",
            seed=seed,
        )
    finally:
        setattr(_train_mod, "fit", orig_fit)  # noqa: B010
        setattr(_fit_mod, "_evaluate", orig_eval)  # noqa: B010
    prov = model.provenance
    keys: list[Any] = ["library", *RECAL_K]
    print(
        f"{prov['n_train']} training, {prov['n_val']} validation windows; validation loss and "
        "accuracy of the same weights with the library's batch-norm recalibration "
        "(_bn_batches) and after one over K random training batches"
    )
    print(
        f"{'epoch':>5} " + " ".join(f"{k if k == 'library' else 'K=' + str(k):>16}" for k in keys)
    )
    for r in rows:
        print(f"{r['epoch']:>5} " + " ".join(f"{r[k][0]:8.4f} {r[k][1]:7.3f}" for k in keys))
    print(
        "recalibration seconds (mean): "
        + ", ".join(
            f"K={k} {statistics.fmean(r[f'recal_s_{k}'] for r in rows):.1f}" for k in RECAL_K
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("costs", help="per-batch costs of the pieces of an epoch")
    c.add_argument("--chips", type=int, default=3072, help="chips in memory (default 3072)")
    c.add_argument("--rounds", type=int, default=20, help="rounds over all pieces (default 20)")
    c.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    r = sub.add_parser("recal", help="validation loss after recalibrating over K batches")
    r.add_argument("scene")
    r.add_argument("labels")
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "costs":
        costs(args.chips, args.rounds)
    else:
        recal_quality(args.scene, args.labels, args.epochs, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
