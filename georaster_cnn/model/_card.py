"""The model card's validator: every field of a card read from a model file, checked.

A card is a JSON object; :data:`_FIELDS` lists its fields with a check, what the
field should be (for the message) and a default for optional ones. :func:`_check_card`
also checks what ties fields together (one colour per class, statistics of one
entry per band, finite statistics, a patch whose windows fit in memory), and that no
text of the card holds a control character, so that :mod:`georaster_cnn.model.modelfile`
rebuilds a model only from a card that describes one. It runs on save and on load.

Control characters (C0 ``U+0000``-``U+001F``, DEL ``U+007F``, C1 ``U+0080``-``U+009F``)
and unpaired surrogates are refused in every string of the card: names (architecture,
bands, classes, hyper-parameter and provenance keys) end up in XML styles and sidecars,
in CSV reports and on terminals, where an ESC starts an escape sequence and most C0
characters make the XML invalid. Free text inside ``hparams`` and ``provenance`` values
may hold tab and line feed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from georaster_cnn.errors import ModelFileError
from georaster_cnn.io.classmap import MAX_CLASSES
from georaster_cnn.options import (  # noqa: F401  (the patch limits are re-exported)
    MAX_PATCH_SIZE,
    MAX_WINDOW_BYTES,
    control_character,
    patch_size_problem,
)

_FIX = "copy or download the file again, or retrain the model"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    # JSON integers are unbounded; beyond float range they would overflow in NumPy.
    if isinstance(v, int) and not isinstance(v, bool):
        return abs(v) < 2**1000
    return isinstance(v, float)


def _names(v: object, least: int, most: int) -> bool:
    return (
        isinstance(v, list)
        and least <= len(v) <= most
        and all(isinstance(s, str) and s != "" for s in v)
    )


def _is_rgb(v: object) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in v)


def _is_dtype(v: object) -> bool:
    try:
        return isinstance(v, str) and np.dtype(v).kind in "biuf"
    except TypeError:
        return False


#: Card field -> the GeoModel attribute it comes from (for the fix on save).
_ATTRIBUTES = {"bands": "band_names", "classes": "class_names", "stats": "stats"}
_STATS_KEYS = ("count", "mean", "m2", "min", "max")

#: field -> (check, what it should be, default when missing; ``...``: required)
_FIELDS: dict[str, tuple[Callable[[Any], bool], str, Any]] = {
    "arch": (lambda v: isinstance(v, str) and v != "", "an architecture name", ...),
    "hparams": (lambda v: isinstance(v, dict), "a JSON object of hyper-parameters", ...),
    # Its bounds (MAX_PATCH_SIZE, window memory) are checked with the bands, below.
    "patch_size": (lambda v: _is_int(v) and v > 0, "a whole number from 1", ...),
    "bands": (lambda v: _names(v, 1, 10**6), "a non-empty list of band names", ...),
    "classes": (
        lambda v: _names(v, 2, MAX_CLASSES),
        f"a list of 2 to {MAX_CLASSES} class names",
        ...,
    ),
    "colors": (
        lambda v: isinstance(v, list) and all(_is_rgb(c) for c in v),
        "a list of RGB triples (whole numbers 0-255)",
        ...,
    ),
    "stats": (
        lambda v: isinstance(v, dict) and all(k in v for k in ("names", *_STATS_KEYS)),
        f"a JSON object with {', '.join(('names', *_STATS_KEYS))}",
        ...,
    ),
    "min_valid": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]", ...),
    "source_dtype": (_is_dtype, "a numeric data type name such as 'float32'", "float32"),
    "provenance": (lambda v: isinstance(v, dict), "a JSON object", {}),
}


def _check_card(card: object, version: int, source: str, *, fix: str = "") -> dict[str, Any]:
    """The card's fields (defaults filled in), each checked; a :class:`ModelFileError` otherwise."""

    def bad(name: str, expected: str, found: object) -> ModelFileError:
        shown = "nothing (missing)" if found is ... else _short(found)
        return ModelFileError(
            f"{source}: model card field {name!r} should be {expected}; found {shown}. "
            + (fix or f"The file is damaged or was not written by georaster_cnn: {_FIX}")
        )

    if not isinstance(card, dict):
        raise bad("card", "a JSON object", card)
    out: dict[str, Any] = {}
    for name, (check, expected, default) in _FIELDS.items():
        value = card.get(name, default)
        if value is ... or not check(value):
            raise bad(name, expected, value)
        out[name] = value
    found = card.get("format_version", version)  # it repeats the file's, when there
    if not (_is_int(found) and found == version):
        raise bad("format_version", f"{version}, the file's format version", found)
    n_bands, n_classes = len(out["bands"]), len(out["classes"])
    problem = patch_size_problem(out["patch_size"], n_bands)
    if problem is not None:
        raise ModelFileError(
            f"{source}: model card field 'patch_size' {problem}; windows this large would not "
            "fit in memory on every tile. "
            + (fix or f"The file is damaged or was not written by georaster_cnn: {_FIX}")
        )
    if len(out["colors"]) != n_classes:
        raise bad("colors", f"one RGB triple per class ({n_classes})", out["colors"])
    stats = out["stats"]
    if not _names(stats["names"], n_bands, n_bands):
        raise bad("stats.names", f"one band name per band ({n_bands})", stats["names"])
    for key in _STATS_KEYS:
        v = stats[key]
        if not (isinstance(v, list) and len(v) == n_bands and all(_is_num(x) for x in v)):
            raise bad(f"stats.{key}", f"one number per band ({n_bands})", v)
    _check_text(out, source, fix)
    for k, band in enumerate(out["bands"]):
        count = stats["count"][k]
        values = {key: stats[key][k] for key in _STATS_KEYS[1:]}
        if not (math.isfinite(count) and count >= 0) or (
            count > 0 and not (all(math.isfinite(x) for x in values.values()) and values["m2"] >= 0)
        ):
            raise ModelFileError(
                f"{source}: normalisation statistics of band {band!r} are not finite or have "
                f"a negative variance (count {count}, mean {values['mean']}, m2 {values['m2']}, min {values['min']}, "
                f"max {values['max']}); the model is broken: retrain it"
            )
    return out


def _check_text(card: dict[str, Any], source: str, fix: str) -> None:
    """Refuse a control character (or lone surrogate) in any string of ``card``'s fields."""
    for where, text, free in _strings(card):
        found = control_character(text, free_text=free)  # values of hparams/provenance: free
        if found is None:
            continue
        char, field = found.group(), re.split(r"[.\[ ]", where)[0]
        kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "the control character"
        what = (
            "text in a model card may hold no control character but tab and line feed"
            if free
            else "names in a model card may hold no control character"
        )
        remedy = (
            f"Remove it from the GeoModel's {_ATTRIBUTES.get(field, field)} and save again."
            if fix
            else f"The file was crafted or damaged: {_FIX}"
        )
        raise ModelFileError(
            f"{source}: model card field {where!r} holds {kind} {char!r} "
            f"(U+{ord(char):04X}) at position {found.start()} of {_short(text)}; {what}: "
            f"they would corrupt QGIS styles, GDAL sidecars, reports and terminal output. {remedy}"
        )


def _strings(card: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """Every string of ``card`` (keys too): ``(where, text, is_free_text)``, depth first.

    Iterative, so a deeply nested card (``json`` parses up to the recursion limit)
    cannot overflow the stack here.
    """
    stack: list[tuple[str, object, bool]] = [
        (name, card[name], name in ("hparams", "provenance")) for name in reversed(list(card))
    ]
    while stack:
        where, value, free = stack.pop()
        if isinstance(value, str):
            yield where, value, free
        elif isinstance(value, dict):
            for key in value:
                yield f"{where} key", str(key), False
            stack.extend((f"{where}.{k}", v, free) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v, free) for i, v in reversed(list(enumerate(value))))


def _short(value: object, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
