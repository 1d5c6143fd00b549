"""Command-line interface for georaster_cnn: the ``georaster-cnn`` program.

The click group lives in :mod:`georaster_cnn_cli.main`; each subcommand has its
own module. Importing this package is cheap: the library (torch, Dask, GDAL) is
imported only when a command runs, so ``--help`` and ``--version`` are fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("georaster-cnn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
