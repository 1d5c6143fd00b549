"""Whether a class map on disk is the one a run would write: keep it, or refuse to touch it.

A batch rerun skips the outputs that exist (without ``overwrite``). That is right
only when the existing map was made by the same model with the same options; a
map of another stride, model or band selection kept as "skipped" is a wrong map
that looks right. :func:`differences` compares what a class map records about
itself (:func:`~georaster_cnn.io.classmap.prediction_attrs`, written as GeoTIFF tags
or Zarr/netCDF attributes) with what a run asks for.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from georaster_cnn.errors import GeorasterCNNError
from georaster_cnn.io.classmap import open_class_map

__all__ = ["differences"]


def differences(
    path: str | os.PathLike[str],
    *,
    model_checksum: str,
    stride: int,
    min_valid: float,
    probabilities: bool,
    bands: Sequence[str] | None = None,
) -> list[str]:
    """What differs between the class map at ``path`` and the one these options make.

    Parameters
    ----------
    path
        An existing output.
    model_checksum, stride, min_valid, probabilities
        What the run asks for (the model's :attr:`~georaster_cnn.GeoModel.checksum`). A
        map with probabilities serves a run that does not ask for them.
    bands
        The input bands the run classifies, by name; ``None``: not compared.

    Returns
    -------
    list of str
        One phrase per difference (``"stride 64, asked 8"``); empty when the map is the
        one the run would write. A file that is not a readable class map, or one that
        does not record an option, differs too (it cannot be shown to be the same).
    """
    try:
        found = open_class_map(path, what="Check")
    except (GeorasterCNNError, OSError) as exc:
        return [f"it is not a class map this toolkit can read ({exc})"]
    attrs = found.attrs
    out: list[str] = []
    recorded = attrs.get("model_checksum", "")
    if recorded != model_checksum:
        out.append(f"model {recorded or 'unrecorded'}, asked {model_checksum}")
    if str(attrs.get("stride", "")) != str(stride):
        out.append(f"stride {attrs.get('stride') or 'unrecorded'}, asked {stride}")
    try:
        same_valid = math.isclose(float(attrs.get("min_valid", "nan")), min_valid)
    except ValueError:
        same_valid = False
    if not same_valid:
        out.append(f"min_valid {attrs.get('min_valid') or 'unrecorded'}, asked {min_valid:g}")
    if probabilities and not found.has_probabilities:  # more than asked is no harm
        out.append("without probabilities, asked with")
    if bands is not None:
        try:
            recorded_bands = [str(b) for b in json.loads(attrs.get("bands", ""))]
        except (ValueError, TypeError):
            recorded_bands = []
        if recorded_bands != [str(b) for b in bands]:
            shown = ", ".join(recorded_bands) or "unrecorded"
            out.append(f"bands {shown}, asked {', '.join(map(str, bands))}")
    return out
