"""Lazy public names of a package (PEP 562): imported from their module on first access.

The one home of the mechanism behind ``georaster_cnn``'s and
``georaster_cnn.cluster``'s public names: a package lists ``name -> module`` once,
and importing the package imports none of those modules (so ``import georaster_cnn``
loads neither torch nor Dask).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``table``'s names lazily.

    Parameters
    ----------
    package
        The package's ``__name__``.
    table
        Public name -> module that defines it, relative to ``package``
        (``"io.reader"`` for ``georaster_cnn.io.reader``).
    namespace
        The package's ``globals()``: a name is kept there once imported.
    """

    def __getattr__(name: str) -> Any:
        try:
            module = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
