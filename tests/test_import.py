"""Importing the package and asking the CLI for help stay light: no torch.

``georaster_cnn`` resolves its public names lazily (PEP 562); these tests run the
imports in fresh interpreters, since this test process has long imported torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import georaster_cnn as gc

INIT = Path(gc.__file__)

# The public names that are also submodules of the package.
SHADOWED = ("evaluate", "predict", "train", "vectorize")


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


def test_submodule_import_does_not_shadow_function() -> None:
    # Importing a submodule binds the package attribute to that module, which would
    # hide the function of the same name; the package keeps the function.
    code = (
        "import types\n"
        + "".join(f"import georaster_cnn.{name}\n" for name in SHADOWED)
        + "import georaster_cnn as gc\n"
        + f"for name in {SHADOWED!r}:\n"
        "    value = getattr(gc, name)\n"
        "    assert callable(value) and not isinstance(value, types.ModuleType), (name, value)\n"
        "    assert value.__module__ == 'georaster_cnn.' + name, value.__module__\n"
        "from georaster_cnn import predict\n"
        "assert not isinstance(predict, types.ModuleType)\n"
        "print('OK')\n"
    )
    assert run_python(code).strip() == "OK"


def test_function_first_then_submodule_import() -> None:
    # The other order: the function is resolved before the submodule is imported again.
    code = (
        "import types, importlib\n"
        "import georaster_cnn as gc\n"
        "first = gc.predict\n"
        "import georaster_cnn.predict\n"
        "module = importlib.import_module('georaster_cnn.predict')\n"
        "assert isinstance(module, types.ModuleType) and module.predict is first\n"
        "assert gc.predict is first\n"
        "print('OK')\n"
    )
    assert run_python(code).strip() == "OK"


@pytest.mark.parametrize("name", SHADOWED)
def test_public_name_is_not_the_submodule(name: str) -> None:
    # In this process the submodules were imported long ago (by other tests, or here).
    __import__(f"georaster_cnn.{name}")
    value = getattr(gc, name)
    assert callable(value) and not isinstance(value, types.ModuleType)
