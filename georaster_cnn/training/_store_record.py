"""What a window store was built from, and how a run differs from it.

A store records the rasters (source, shape, bands, grid, file identity), the labels and
the window and split options (:func:`recorded_options`); a run reuses it only when its
own record is equal, else :func:`store_differences` names what differs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr

from georaster_cnn.io._identity import input_identity
from georaster_cnn.training.labels import label_sources
from georaster_cnn.training.vector_labels import VectorLabels
from georaster_cnn.training.windows import WindowSpec

__all__ = ["recorded_options", "store_differences"]


def _data_record(d: xr.DataArray) -> dict[str, Any]:
    """What identifies a raster: its source, shape, bands, grid and (files) size and time."""
    source = str(d.attrs.get("source", "<in-memory>"))
    record: dict[str, Any] = {
        "source": source,
        "shape": [int(d.sizes.get("band", 1)), int(d.sizes["y"]), int(d.sizes["x"])],
        "bands": [str(b) for b in d.coords["band"].values] if "band" in d.coords else [],
    }
    if d.rio.crs is not None:
        record["crs"] = d.rio.crs.to_string()
        record["transform"] = [round(float(v), 9) for v in tuple(d.rio.transform())[:6]]
    if source != "<in-memory>":
        with contextlib.suppress(OSError, ValueError):
            record["identity"] = input_identity(source)
    return record


def recorded_options(
    datas: Sequence[xr.DataArray],
    items: Sequence[xr.DataArray | VectorLabels],
    spec: WindowSpec,
    *,
    val_block: int,
    val_fraction: float,
    label_column: str | None,
) -> dict[str, Any]:
    """What a store's windows depend on: rasters, labels, window and split options, seed.

    A store is reused only for a run whose record is equal (:func:`store_differences`).
    """
    return json.loads(
        json.dumps(
            {
                "data": [_data_record(d) for d in datas],
                "labels": label_sources(items),
                "label_column": label_column,
                "patch_size": spec.patch,
                "stride": spec.stride,
                "min_valid": spec.min_valid,
                "min_cover": spec.min_cover,
                "val_block": val_block,
                "val_fraction": val_fraction,
                "seed": spec.seed,
            },
            default=str,
        )
    )


def store_differences(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """One phrase per option that differs between a store's record and a run (empty: none)."""
    out = []
    for key in sorted(set(recorded) | set(asked)):
        have, want = recorded.get(key), asked.get(key)
        if have == want:
            continue
        if key in ("data", "labels") and isinstance(have, list) and isinstance(want, list):
            if len(have) != len(want):
                out.append(f"{key}: {len(have)} recorded, {len(want)} asked")
                continue
            for i, (h, w) in enumerate(zip(have, want, strict=True)):
                if h != w:
                    fields = (
                        sorted(k for k in set(h) | set(w) if h.get(k) != w.get(k))
                        if (isinstance(h, dict) and isinstance(w, dict))
                        else ["source"]
                    )
                    name = w.get("source", w) if isinstance(w, dict) else w
                    out.append(f"{key} {i + 1} ({name}): {', '.join(fields)} differ")
            continue
        out.append(f"{key} {have!r} recorded, {want!r} asked")
    return out
