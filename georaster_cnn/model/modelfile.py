"""The model file: one self-describing, safe-to-open, verified file.

Format: a `safetensors <https://huggingface.co/docs/safetensors>`_ file. The
tensors are the module's ``state_dict``; the header's string metadata holds
``format`` (``"georaster-cnn-model"``), ``format_version``, ``card``, a JSON
document with everything needed to rebuild and apply the model (architecture and
hyper-parameters, input band names and training dtype, class names and colours,
per-channel normalisation statistics, patch size, nodata policy and training
provenance), and, from format 2 on, two digests:

``card_sha256``
    SHA-256 of the card as stored (canonical JSON: sorted keys).
``weights_sha256``
    SHA-256 of the tensors in key order, each as its key, dtype and shape
    (``json.dumps([key, dtype, shape])``) followed by its bytes.

Loading never executes code (no pickle), recomputes both digests and refuses a
file whose weights or card do not match them, and refuses a malformed card (see
:mod:`georaster_cnn.model._card`) or non-finite weights or statistics. Format 1 files (no
digests) still load, marked ``verified=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from georaster_cnn.errors import ModelFileError
from georaster_cnn.io.staging import atomic_write, check_output
from georaster_cnn.model._card import _FIX, _check_card
from georaster_cnn.model.architectures import build_model
from georaster_cnn.options import DEFAULT_MIN_VALID, DEFAULT_PATCH
from georaster_cnn.stats import ChannelStats

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "GeoModel",
    "load_model",
    "save_model",
]

FORMAT = "georaster-cnn-model"
#: 1: card and weights; 2: plus ``card_sha256`` and ``weights_sha256``.
FORMAT_VERSION = 2

_CARD_DIGEST = "card_sha256"
_WEIGHTS_DIGEST = "weights_sha256"
_FIX_SAVE = "Give the GeoModel valid values."


@dataclass
class GeoModel:
    """A trained classifier with everything needed to apply it to a raster.

    Attributes
    ----------
    module
        The PyTorch network (``eval`` mode when loaded).
    arch, hparams
        Registry name and keyword arguments that rebuild ``module``.
    band_names
        Input bands, in order, as seen at training time.
    class_names, class_colors
        One name and one RGB colour per output class.
    stats
        Per-channel normalisation statistics of the training data.
    patch_size
        Window side in pixels.
    min_valid
        Default minimum valid fraction of a window (nodata policy).
    source_dtype
        Data type of the training rasters on disk (used to warn on mismatches).
    provenance
        Training data, options, history and metrics.
    format_version
        Format of the file the model was loaded from (the current one otherwise).
    verified
        True when the model was loaded from a file whose stored digests of the
        weights and card were recomputed and matched (format 2 and later).
    """

    module: nn.Module
    arch: str
    hparams: dict[str, Any]
    band_names: tuple[str, ...]
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    stats: ChannelStats
    patch_size: int = DEFAULT_PATCH
    min_valid: float = DEFAULT_MIN_VALID
    source_dtype: str = "float32"
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    verified: bool = field(default=False, compare=False)

    @property
    def n_bands(self) -> int:
        return len(self.band_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def checksum(self) -> str:
        """Identifies the model: 16 hex digits of the SHA-256 of its card and weights digests.

        The same digests a file of this model stores (see module docs), so a
        loaded model's checksum comes from the digests checked on load, without
        hashing again. Computed once per model object: a :class:`GeoModel` holds
        trained weights, which nothing changes after it is made.
        """
        card_json = _canonical(self.card())
        return _model_id(_sha256(card_json), _weights_digest(self.module.state_dict()))

    def card(self) -> dict[str, Any]:
        """JSON-able description of the model (everything except the weights)."""
        return {
            "arch": self.arch,
            "hparams": self.hparams,
            "patch_size": self.patch_size,
            "bands": list(self.band_names),
            "source_dtype": self.source_dtype,
            "classes": list(self.class_names),
            "colors": [list(c) for c in self.class_colors],
            "stats": self.stats.to_dict(),
            "min_valid": self.min_valid,
            "provenance": self.provenance,
            "format_version": self.format_version,
        }

    def to_bytes(self) -> bytes:
        """Serialise to the current model-file format (see module docs).

        Raises
        ------
        ModelFileError
            A malformed card field, or non-finite weights or statistics: such a
            model would be refused on load, so it is not written.
        """
        return _encode(self, "model")

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "<bytes>") -> GeoModel:
        """Rebuild from :meth:`to_bytes` output without executing any code.

        Raises
        ------
        ModelFileError
            Not a model file, an unsupported format version, weights or card that
            do not match their stored digests, a malformed card, weights that do
            not fit the card, or non-finite weights or statistics.
        """
        tensors, meta = _parse(raw, source)
        version = _format_version(meta, source)
        if "card" not in meta:
            raise ModelFileError(f"{source}: model file carries no card (metadata); {_FIX}")
        try:
            card = json.loads(meta["card"])
        except (ValueError, RecursionError) as exc:
            raise ModelFileError(f"{source}: model card is not valid JSON ({exc}); {_FIX}") from exc
        # Hash once: the digests checked here also give the model id.
        card_digest = _sha256(_canonical(card))
        weights_digest = _weights_digest(tensors)
        if version >= 2:
            _check_digest(meta, _CARD_DIGEST, card_digest, "its card does", "it", source)
            _check_digest(meta, _WEIGHTS_DIGEST, weights_digest, "its weights do", "them", source)
        c = _check_card(card, version, source)
        module = _build(c, tensors, source)
        model = cls(
            module=module,
            arch=c["arch"],
            hparams=c["hparams"],
            band_names=tuple(c["bands"]),
            class_names=tuple(c["classes"]),
            class_colors=tuple((int(r), int(g), int(b)) for r, g, b in c["colors"]),
            stats=ChannelStats.from_dict(c["stats"]),
            patch_size=c["patch_size"],
            min_valid=float(c["min_valid"]),
            source_dtype=c["source_dtype"],
            provenance=c["provenance"],
            format_version=version,
            verified=version >= 2,
        )
        model.__dict__["checksum"] = _model_id(card_digest, weights_digest)
        return model


def save_model(model: GeoModel, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    ModelFileError
        A malformed card field (a control character in a name or text, a patch beyond
        ``MAX_PATCH_SIZE`` or whose windows exceed ``MAX_WINDOW_BYTES``, ...), or
        non-finite weights or statistics (nothing is written).
    """
    p = check_output(path, overwrite=overwrite)
    raw = _encode(model, str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda f: f.write(raw), overwrite=overwrite)
    return p


def load_model(path: str | os.PathLike[str]) -> GeoModel:
    """Read a model file written by :func:`save_model`; never executes code.

    Raises
    ------
    ModelFileError
        Missing, truncated, corrupt or foreign file (not a regular file, weights or
        card that do not match their digests, a malformed card: e.g. a control
        character in a name or text, a patch too large for memory; non-finite
        weights or statistics), or an unsupported format version.
    """
    p = Path(path)
    try:
        # Never read a device or pipe: /dev/zero would fill the memory, and opening a
        # FIFO would wait for a writer (non-blocking open; no effect on regular files).
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ModelFileError(f"{p}: not a regular file; give the path of a model file")
            raw = f.read()
    except OSError as exc:
        raise ModelFileError(f"{p}: cannot read model file ({exc.strerror or exc})") from exc
    return GeoModel.from_bytes(raw, source=str(p))


# --------------------------------------------------------------------------- digests


def _canonical(card: Mapping[str, Any]) -> str:
    return json.dumps(card, sort_keys=True)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors in key order: key, dtype and shape, then the bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(json.dumps([key, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _model_id(card_digest: str, weights_digest: str) -> str:
    return _sha256(card_digest + weights_digest)[:16]


def _check_digest(
    meta: Mapping[str, str], key: str, found: str, what: str, them: str, source: str
) -> None:
    expected = meta.get(key)
    if expected is None:
        raise ModelFileError(
            f"{source}: model file of format {meta.get('format_version')} carries no digest "
            f"({key!r} is missing from its metadata), so it cannot be verified; {_FIX}"
        )
    if expected != found:
        raise ModelFileError(
            f"{source}: model file is corrupt: {what} not match the digest stored with {them} "
            f"(expected sha256 {expected[:16]}..., found {found[:16]}...); {_FIX}"
        )


def _pack(state: Mapping[str, torch.Tensor], card: Mapping[str, Any]) -> bytes:
    """The file bytes of ``state`` and ``card`` with their digests, unchecked."""
    card_json = _canonical(card)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "card": card_json,
        _CARD_DIGEST: _sha256(card_json),
        _WEIGHTS_DIGEST: _weights_digest(state),
    }
    return st_save(dict(state), metadata=meta)


def _encode(model: GeoModel, source: str) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    card = {**model.card(), "format_version": FORMAT_VERSION}
    _check_card(
        json.loads(_canonical(card)), FORMAT_VERSION, f"{source}: cannot save", fix=_FIX_SAVE
    )
    _check_finite(state, f"{source}: cannot save")
    return _pack(state, card)


# --------------------------------------------------------------------------- reading


def _parse(raw: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of safetensors bytes."""
    # The safetensors parser validates the header (size, JSON, offsets) before we read it.
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError, RecursionError) as exc:
        raise ModelFileError(f"{source}: not a georaster_cnn model file ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelFileError(
            f"{source}: not a georaster_cnn model file (format {found!r}); "
            "train one with `georaster-cnn train`"
        )
    return tensors, meta


def _format_version(meta: Mapping[str, str], source: str) -> int:
    text = meta.get("format_version", "")
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and int(text) >= 1):
        raise ModelFileError(
            f"{source}: model format version {text!r} is not a positive whole number; {_FIX}"
        )
    version = int(text)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source}: model format version {version} is newer than this georaster_cnn "
            f"supports ({FORMAT_VERSION}); upgrade georaster_cnn"
        )
    return version


def _build(card: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """The card's network with ``tensors`` loaded, after checking that they fit it."""
    args = {
        "in_channels": len(card["bands"]),
        "n_classes": len(card["classes"]),
        "patch_size": card["patch_size"],
    }
    try:
        # A skeleton without storage first: a card asking for a huge network costs nothing.
        with torch.device("meta"):
            skeleton = build_model(card["arch"], **args, **card["hparams"])
    except Exception as exc:  # the constructor's own checks, on untrusted arguments
        raise ModelFileError(
            f"{source}: model card does not describe a network this georaster_cnn can build "
            f"(architecture {card['arch']!r}, hyper-parameters {card['hparams']}): {exc}"
        ) from exc
    expected = {k: (v.dtype, tuple(v.shape)) for k, v in skeleton.state_dict().items()}
    found = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    if expected != found:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        shown = ", ".join(
            f"{k}: expected {_spec(expected.get(k))}, found {_spec(found.get(k))}" for k in diff[:3]
        )
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise ModelFileError(
            f"{source}: model file is inconsistent: its weights do not fit the "
            f"{card['arch']!r} network its card describes ({shown}{more}); {_FIX}"
        )
    _check_finite(tensors, source)
    module = build_model(card["arch"], **args, **card["hparams"])
    module.load_state_dict(tensors, strict=True)
    return module.eval()


def _spec(spec: tuple[torch.dtype, tuple[int, ...]] | None) -> str:
    if spec is None:
        return "none"
    return f"{str(spec[0]).removeprefix('torch.')} {list(spec[1])}"


def _check_finite(state: Mapping[str, torch.Tensor], prefix: str) -> None:
    for key in sorted(state):
        t = state[key]
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise ModelFileError(
                f"{prefix}: weight tensor {key!r} holds {n} NaN or infinite value(s) "
                f"of {t.numel()}; the model is broken: retrain it"
            )
