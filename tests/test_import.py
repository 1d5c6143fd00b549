"""Importing the package and asking the CLI for help stay light: no torch.

``georaster_cnn`` resolves its public names lazily (PEP 562); these tests run the
imports in fresh interpreters, since this test process has long imported torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import georaster_cnn as gc

INIT = Path(gc.__file__)


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout (fails on a non-zero exit)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_does_not_load_torch() -> None:
    out = run_python(
        "import sys, georaster_cnn; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    assert out.strip() == "[]"


def test_version_without_torch() -> None:
    out = run_python(
        "import sys, georaster_cnn as gc; print(gc.__version__); print('torch' in sys.modules)"
    )
    version, torch_loaded = out.split()
    assert version == gc.__version__
    assert torch_loaded == "False"


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["predict", "--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["info", "--help"],
        ["inspect", "--help"],
        ["vectorize", "--help"],
        ["export", "--help"],
    ],
    ids=" ".join,
)
def test_cli_help_does_not_load_torch(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from georaster_cnn_cli.main import cli\n"
        "try:\n"
        f"    cli.main({args!r}, prog_name='georaster-cnn')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('TORCH_LOADED', 'torch' in sys.modules)\n"
    )
    out = run_python(code)
    assert out.splitlines()[-1] == "TORCH_LOADED False"
    assert "georaster-cnn" in out or "Usage:" in out


def test_every_public_name_resolves() -> None:
    for name in gc.__all__:
        assert getattr(gc, name) is not None, name
    assert set(gc.__all__) <= set(dir(gc))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = gc.no_such_name  # type: ignore[attr-defined]
    assert not hasattr(gc, "no_such_name")


def _type_checking_imports() -> dict[str, str]:
    """Name -> submodule, as imported under ``if TYPE_CHECKING:`` in ``__init__.py``."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                prefix = "georaster_cnn."
                assert imp.module.startswith(prefix), imp.module
                for alias in imp.names:
                    found[alias.asname or alias.name] = imp.module.removeprefix(prefix)
    return found


def test_lazy_table_type_checking_imports_and_all_agree() -> None:
    table = gc._LAZY
    assert _type_checking_imports() == table
    assert sorted(gc.__all__) == sorted(["__version__", *table])
    assert len(gc.__all__) == len(set(gc.__all__))


def test_importing_every_module_keeps_public_names_intact() -> None:
    # No module is named like a public function (tests/test_layers.py), so importing
    # every module of the package, in any order, binds no package attribute over a
    # public name.
    code = (
        "import importlib, pkgutil, types\n"
        "import georaster_cnn as gc\n"
        "for info in pkgutil.walk_packages(gc.__path__, 'georaster_cnn.'):\n"
        "    importlib.import_module(info.name)\n"
        "for name in gc.__all__:\n"
        "    value = getattr(gc, name)\n"
        "    assert not isinstance(value, types.ModuleType), (name, value)\n"
        "print('OK')\n"
    )
    assert run_python(code).strip() == "OK"


@pytest.mark.parametrize("package", ["georaster_cnn", "georaster_cnn.cluster"])
def test_lazy_packages_name_what_they_have(package: str) -> None:
    import importlib

    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mod.nope  # noqa: B018
