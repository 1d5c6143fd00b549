"""``georaster-cnn info``: show what a model file holds (its card)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from georaster_cnn_cli._common import (
    CLIState,
    class_counts_table,
    format_metrics,
    get_state,
    kv_table,
    plural,
)
from georaster_cnn_cli._warnings import load_model_or_exit

if TYPE_CHECKING:
    from georaster_cnn import GeoModel

__all__ = ["info"]

# Provenance entries shown in this order with these labels; others follow as they come.
_PROVENANCE_LABELS = {
    "data": "training data",
    "labels": "labels",
    "created": "created",
    "epochs": "epochs",
    "early_stopping": "stopped early",
    "history": "history",
    "metrics": "final metrics",
    "n_train": "training windows",
    "n_val": "validation windows",
    "class_counts": "class counts",
    "split": "validation split",
}
#: Provenance entries shown as their own table (:func:`class_counts_table`).
_TABLES = ("windows_per_class", "chips_per_class")


@click.command("info", short_help="Show what a model file holds.")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the model card as JSON.")
@click.pass_context
def info(ctx: click.Context, model: Path, as_json: bool) -> None:
    """Describe MODEL: architecture, bands and their statistics, classes, provenance.

    Loading checks the file: a model whose weights or card do not match the
    digests stored with them is refused; "verified" says the check was made
    (format 1 files carry no digest).

    \b
    Examples:
      georaster-cnn info landcover.safetensors
      georaster-cnn info landcover.safetensors --json | jq .classes
    """
    state = get_state(ctx)
    geo_model = load_model_or_exit(state, model)
    if as_json:
        card = {**geo_model.card(), "checksum": geo_model.checksum, "verified": geo_model.verified}
        # click.echo, not rich: JSON must not be wrapped or highlighted
        click.echo(json.dumps(card, indent=2, default=str))
        return
    _print_card(state, model, geo_model)


def _num(x: float) -> str:
    return f"{x:.4g}"


def _compact(value: Any) -> str:
    """A short one-line rendering of a JSON-able value."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_compact(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_compact(v) for v in value) or "-"
    if isinstance(value, float):
        return _num(value)
    if value is None:
        return "-"
    return str(value)


def _early_stopping(value: Any, prov: Mapping[str, Any]) -> str:
    """Whether training stopped early: 'no (ran all N epochs)' or 'yes, after epoch k of N'."""
    if not isinstance(value, Mapping):
        return _compact(value)
    patience, stopped = value.get("patience"), value.get("stopped_after")
    epochs, run = prov.get("epochs"), prov.get("epochs_run", prov.get("epochs"))
    rule = f"patience {patience}" if patience else "early stopping off"
    if stopped is None:
        ran = f"ran all {plural(run, 'epoch')}; " if isinstance(run, int) else ""
        return f"no ({ran}{rule})"
    of = f" of {epochs}" if isinstance(epochs, int) else ""
    return f"yes, after epoch {stopped}{of} ({rule})"


def _integrity(model: GeoModel) -> str:
    if model.verified:
        return "verified (weights and card match their SHA-256 digests)"
    return f"not verified (format {model.format_version} file, no digest)"


def _print_card(state: CLIState, path: Path, model: GeoModel) -> None:
    out = state.out
    overview = kv_table(f"Model {path}")
    hp = _compact(model.hparams) if model.hparams else "defaults"
    overview.add_row("architecture", Text(f"{model.arch} ({hp})"))
    overview.add_row("patch size", f"{model.patch_size} x {model.patch_size} pixels")
    overview.add_row("training dtype", Text(str(model.source_dtype)))
    overview.add_row(
        "nodata policy",
        f"a window needs >= {model.min_valid:.0%} valid pixels to be classified; "
        "other cells are nodata (255)",
    )
    overview.add_row("format version", str(model.format_version))
    overview.add_row("checksum", model.checksum)
    overview.add_row("integrity", _integrity(model))
    out.print(overview)
    out.print()

    stats = model.stats
    bands = Table(title=f"Input bands ({len(model.band_names)})", title_justify="left")
    bands.add_column("#", justify="right")
    bands.add_column("name")
    for label in ("mean", "std", "min", "max"):
        bands.add_column(label, justify="right")
    for k, name in enumerate(model.band_names):
        bands.add_row(
            str(k + 1),
            Text(name),
            _num(stats.mean[k]),
            _num(stats.std[k]),
            _num(stats.minimum[k]),
            _num(stats.maximum[k]),
        )
    out.print(bands)
    out.print()

    classes = Table(title=f"Classes ({len(model.class_names)})", title_justify="left")
    classes.add_column("value", justify="right")
    classes.add_column("colour")
    classes.add_column("name")
    for k, (name, rgb) in enumerate(zip(model.class_names, model.class_colors, strict=False)):
        r, g, b = (int(c) for c in rgb[:3])
        swatch = Text("██", style=f"rgb({r},{g},{b})")
        swatch.append(f" #{r:02x}{g:02x}{b:02x}")
        classes.add_row(str(k), swatch, Text(name))
    out.print(classes)
    out.print()

    out.print(_provenance_table(model))
    counts = class_counts_table(model)
    if counts is not None:
        out.print()
        out.print(counts)
    out.print()
    out.print(_export_table(path, model))


def _export_table(path: Path, model: GeoModel) -> Table:
    """What ``georaster-cnn export`` would write for this model with its defaults."""
    from georaster_cnn.products.export import plan_export

    table = kv_table("Export (georaster-cnn export MODEL -o DIR)")
    for label, text in plan_export(model, name=path.stem).describe():
        table.add_row(label, Text(text))
    return table


def _provenance_table(model: GeoModel) -> Table:
    prov = dict(model.provenance or {})
    table = kv_table("Training provenance")
    if not prov:
        table.add_row("", "none recorded")
        return table
    keys = [k for k in _PROVENANCE_LABELS if k in prov]
    keys += [k for k in prov if k not in _PROVENANCE_LABELS and k not in _TABLES]
    for key in keys:
        value = prov[key]
        label = _PROVENANCE_LABELS.get(key, key.replace("_", " "))
        if key in ("data", "labels") and isinstance(value, list):
            text = "\n".join(str(v) for v in value) or "-"
        elif key == "history" and isinstance(value, list):
            text = f"{plural(len(value), 'epoch')} recorded"
        elif key == "metrics" and isinstance(value, Mapping):
            text = format_metrics(value)
            if "epoch" in value:
                text = f"{text} (epoch {value['epoch']})"
        elif key == "early_stopping":
            text = _early_stopping(value, prov)
        elif key == "class_counts" and isinstance(value, list):
            names = list(model.class_names)
            text = ", ".join(
                f"{names[i] if i < len(names) else i} {n}" for i, n in enumerate(value)
            )
        else:
            text = _compact(value)
        table.add_row(label, Text(text))
    return table
