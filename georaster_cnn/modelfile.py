"""The model file: one self-describing, safe-to-open file.

Format: a `safetensors <https://huggingface.co/docs/safetensors>`_ file. The
tensors are the module's ``state_dict``; the header's string metadata holds
``format`` (``"georaster-cnn-model"``), ``format_version`` and ``card``, a JSON
document with everything needed to rebuild and apply the model: architecture and
hyper-parameters, input band names and training dtype, class names and colours,
per-channel normalisation statistics, patch size, nodata policy and training
provenance. Loading never executes code (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from georaster_cnn._staging import atomic_write
from georaster_cnn.errors import ModelFileError
from georaster_cnn.models import build_model
from georaster_cnn.options import check_output
from georaster_cnn.stats import ChannelStats

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "GeoModel",
    "load_model",
    "save_model",
]

FORMAT = "georaster-cnn-model"
FORMAT_VERSION = 1


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
    """

    module: nn.Module
    arch: str
    hparams: dict[str, Any]
    band_names: tuple[str, ...]
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    stats: ChannelStats
    patch_size: int = 64
    min_valid: float = 0.5
    source_dtype: str = "float32"
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def n_bands(self) -> int:
        return len(self.band_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def checksum(self) -> str:
        """SHA-256 of the weights and card (first 16 hex digits): identifies the model.

        Computed once per model object: a :class:`GeoModel` holds trained weights,
        which nothing changes after it is made.
        """
        # Hash the card and the tensors in key order: the file's header order is not stable.
        h = hashlib.sha256(json.dumps(self.card(), sort_keys=True).encode())
        for k, v in sorted(self.module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

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
        """Serialise to the model-file format (see module docs)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "card": json.dumps(self.card(), sort_keys=True),
        }
        return st_save(state, metadata=meta)

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "<bytes>") -> GeoModel:
        """Rebuild from :meth:`to_bytes` output without executing any code."""
        try:
            header_len = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + header_len])
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            meta = header.get("__metadata__") or {}
            tensors = st_load(raw)
        except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{source}: not a georaster_cnn model file ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise ModelFileError(
                f"{source}: not a georaster_cnn model file (format {meta.get('format')!r}); "
                "train one with `georaster-cnn train`"
            )
        try:
            version = int(meta.get("format_version", "0"))
        except (TypeError, ValueError):
            raise ModelFileError(
                f"{source}: model format version {meta.get('format_version')!r} is not a number; "
                "the file is corrupt"
            ) from None
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{source}: model format version {version} is newer than this georaster_cnn "
                f"supports ({FORMAT_VERSION}); upgrade georaster_cnn"
            )
        try:
            card = json.loads(meta["card"])
            module = build_model(
                card["arch"],
                len(card["bands"]),
                len(card["classes"]),
                card["patch_size"],
                **card["hparams"],
            )
            module.load_state_dict(tensors, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{source}: model file is inconsistent ({exc})") from exc
        module.eval()
        return cls(
            module=module,
            arch=card["arch"],
            hparams=card["hparams"],
            band_names=tuple(card["bands"]),
            class_names=tuple(card["classes"]),
            class_colors=tuple(tuple(c) for c in card["colors"]),
            stats=ChannelStats.from_dict(card["stats"]),
            patch_size=int(card["patch_size"]),
            min_valid=float(card["min_valid"]),
            source_dtype=card.get("source_dtype", "float32"),
            provenance=card.get("provenance", {}),
            format_version=version,
        )


def save_model(model: GeoModel, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file, then rename).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    p = check_output(path, overwrite=overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    raw = model.to_bytes()
    atomic_write(p, lambda f: f.write(raw))
    return p


def load_model(path: str | os.PathLike[str]) -> GeoModel:
    """Read a model file written by :func:`save_model`; never executes code.

    Raises
    ------
    ModelFileError
        Missing, truncated or foreign file, or an unsupported format version.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{p}: cannot read model file ({exc.strerror or exc})") from exc
    return GeoModel.from_bytes(raw, source=str(p))
