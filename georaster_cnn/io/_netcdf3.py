"""Truncated classic netCDF files: find them from the header, before the library reads zeros.

The netCDF C library reads the missing bytes of a truncated netCDF-3 (CDF-1, CDF-2
or CDF-5) file as zeros instead of failing. The header says where each variable's
data lies, so :func:`_check_classic_size` compares the end of the data it
describes with the file's size.
"""

from __future__ import annotations

import struct
from pathlib import Path

import xarray as xr

from georaster_cnn.errors import ReadError


def _check_classic_size(path: Path, ds: xr.Dataset) -> None:
    """Reject a truncated netCDF-3 file: the C library reads the missing bytes as zeros."""
    try:
        need = _classic_data_end(path)
    except (OSError, ValueError, struct.error):
        need = None  # not a header this parser understands: leave it to the library
    size = path.stat().st_size
    if need is not None and size < need:
        ds.close()
        raise ReadError(
            f"{path}: not a readable netCDF file (truncated: {size} bytes, its header says "
            f"the data ends at byte {need})"
        )


_NC_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}


def _classic_data_end(path: Path) -> int | None:
    """Where the data of a netCDF-3 (CDF-1/2/5) file ends, from its header; None if not one."""
    with path.open("rb") as f:
        head = f.read(1 << 20)
    if head[:3] != b"CDF" or head[3] not in (1, 2, 5):
        return None
    version = head[3]
    big = version == 5  # CDF-5: 64-bit counts
    pos = 4

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, head, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def count() -> int:
        return take(">Q" if big else ">I")

    def skip_name() -> None:
        nonlocal pos
        n = count()
        pos += (n + 3) // 4 * 4

    def skip_attrs() -> None:
        nonlocal pos
        take(">I")  # tag: NC_ATTRIBUTE or ABSENT
        for _ in range(count()):
            skip_name()
            size = _NC_TYPE_SIZE[take(">I")]
            n = count()  # before `pos +=`: count() moves pos
            pos += (n * size + 3) // 4 * 4

    numrecs = count()
    take(">I")  # NC_DIMENSION or ABSENT
    dims = []
    for _ in range(count()):
        skip_name()
        dims.append(count())
    skip_attrs()
    take(">I")  # NC_VARIABLE or ABSENT
    ends, rec_vars = [], []
    for _ in range(count()):
        skip_name()
        dimids = [count() for _ in range(count())]
        skip_attrs()
        take(">I")  # nc_type
        vsize = count() if big else take(">I")
        begin = take(">Q" if version in (2, 5) else ">I")
        if vsize in (0xFFFFFFFF, 0):
            return None  # > 4 GiB variables: vsize is not exact, skip the check
        if dimids and dims[dimids[0]] == 0:
            rec_vars.append((begin, vsize))
        else:
            ends.append(begin + vsize)
    if rec_vars and numrecs not in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        recsize = sum(v for _, v in rec_vars) if len(rec_vars) > 1 else rec_vars[0][1]
        ends += [b + (numrecs - 1) * recsize + v for b, v in rec_vars if numrecs > 0]
    return max(ends, default=None)
