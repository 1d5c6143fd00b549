"""``georaster-cnn qgis install`` and ``qgis zip``: the plugin's files, where they go, what is recorded.

No QGIS needed here (tests/test_qgis.py runs the installed plugin in a real QGIS):
the profile's plugin folder, the recorded executable, ``[PythonPlugins]`` in
QGIS3.ini edited without losing a line, ``QGIS_CUSTOM_CONFIG_PATH``, the zip, and
the plugin's files inside a wheel built by ``pip wheel``.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from georaster_cnn_cli.main import cli
from georaster_cnn_cli.qgis import PLUGIN_NAME, RECORD, plugin_source

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "qgis" / PLUGIN_NAME
#: Files the plugin is made of (QGIS plugin layout: metadata, classFactory, provider,
#: one module per algorithm, an icon).
EXPECTED = {
    "metadata.txt", "icon.svg", "__init__.py", "plugin.py", "provider.py", "algorithm.py",
    "classify.py", "train.py", "evaluate.py", "vectorize.py", "inspect.py", "runner.py",
    "layers.py", "settings.py",
}  # fmt: skip


#: Not copied for a wheel build.
_NOT_SOURCE = (
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "benchmarks", "sample_data", "tests",
)  # fmt: skip


def run(*args: str | Path, env: dict[str, str | None] | None = None) -> Result:
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A georaster-cnn that runs this checkout's CLI with this interpreter."""
    path = tmp_path_factory.mktemp("bin") / "georaster-cnn"
    path.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={REPO}:{REPO / 'cli'} exec {sys.executable} -c "
        '"from georaster_cnn_cli.main import cli; cli(prog_name=\'georaster-cnn\')" "$@"\n'
    )
    path.chmod(0o755)
    return path


def test_plugin_layout_and_metadata() -> None:
    assert plugin_source() == PLUGIN
    assert {p.name for p in PLUGIN.iterdir()} >= EXPECTED
    meta = (PLUGIN / "metadata.txt").read_text()
    assert "hasProcessingProvider=yes" in meta.splitlines()
    assert "qgisMinimumVersion=3.22" in meta.splitlines()
    # the plugin never imports torch or the library: QGIS's Python needs neither
    imported = set()
    for module in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert "qgis" in imported and "processing" in imported
    assert not imported & {"torch", "georaster_cnn", "georaster_cnn_cli", "numpy", "rasterio"}


def test_install_copies_records_and_enables_keeping_the_ini(
    tmp_path: Path, executable: Path
) -> None:
    profile = tmp_path / "profile"
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    before = (
        "[General]\nlocale\\userLocale=en_GB\n\n[PythonPlugins]\nprocessing=true\n"
        "georaster_cnn_qgis=false\n\n[Processing]\nConfiguration\\X=@Variant(\\0\\0\\0\\x7f)\n"
    )
    ini.write_text(before)
    (profile / "python" / "plugins" / PLUGIN_NAME).mkdir(parents=True)
    (profile / "python" / "plugins" / PLUGIN_NAME / "stale.py").write_text("old copy")
    result = run("qgis", "install", "--profile-dir", profile, "--executable", executable)
    assert result.exit_code == 0, result.output
    target = profile / "python" / "plugins" / PLUGIN_NAME
    assert {p.name for p in target.iterdir()} >= EXPECTED
    assert not (target / "stale.py").exists()  # an older copy is replaced, not merged
    record = json.loads((target / RECORD).read_text())
    assert record["executable"] == str(executable)
    after = ini.read_text()
    assert after == before.replace("georaster_cnn_qgis=false", "georaster_cnn_qgis=true")
    assert [p.name for p in target.parent.iterdir()] == [PLUGIN_NAME]  # no staging left


def test_install_adds_the_section_and_honours_qgis_custom_config_path(
    tmp_path: Path, executable: Path
) -> None:
    root = tmp_path / "custom"
    (root / "profiles").mkdir(parents=True)
    (root / "profiles" / "profiles.ini").write_text("[core]\ndefaultProfile=work\n")
    env = {"QGIS_CUSTOM_CONFIG_PATH": str(root)}
    assert run("qgis", "install", "--executable", executable, env=env).exit_code == 0
    profile = root / "profiles" / "work"
    assert (profile / "python" / "plugins" / PLUGIN_NAME / "metadata.txt").is_file()
    assert (
        profile / "QGIS" / "QGIS3.ini"
    ).read_text() == "[PythonPlugins]\ngeoraster_cnn_qgis=true\n"


def test_install_records_this_environments_executable_by_default(tmp_path: Path) -> None:
    here = Path(sysconfig.get_path("scripts")) / "georaster-cnn"
    if not here.is_file():
        pytest.skip(f"this environment has no {here} (the package is not installed)")
    assert run("qgis", "install", "--profile-dir", tmp_path).exit_code == 0
    record = json.loads((tmp_path / "python/plugins" / PLUGIN_NAME / RECORD).read_text())
    assert record["executable"] == str(here.absolute())


def test_a_broken_executable_is_refused_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "georaster-cnn"
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    broken.chmod(0o755)
    result = run("qgis", "install", "--profile-dir", tmp_path / "p", "--executable", broken)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {broken} --version failed (exit status 1): "
        "ModuleNotFoundError: No module named torch"
    )
    assert not (tmp_path / "p").exists()
    missing = run("qgis", "install", "--executable", tmp_path / "none", "--profile-dir", tmp_path)
    assert missing.exit_code == 2 and "no such executable file" in missing.stderr


def test_zip_holds_the_plugin_folder_and_the_record(tmp_path: Path, executable: Path) -> None:
    out = tmp_path / "plugin.zip"
    assert run("qgis", "zip", "-o", out, "--executable", executable).exit_code == 0
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        record = json.loads(z.read(f"{PLUGIN_NAME}/{RECORD}"))
    assert {f"{PLUGIN_NAME}/{name}" for name in EXPECTED} <= names
    assert all(n.startswith(f"{PLUGIN_NAME}/") and "__pycache__" not in n for n in names)
    assert record["executable"] == str(executable)
    again = run("qgis", "zip", "-o", out, "--executable", executable)
    assert again.exit_code == 2 and "--overwrite" in again.stderr  # no silent replacement


def test_a_wheel_carries_the_plugin_files(tmp_path: Path) -> None:
    """After a non-editable ``pip install .`` the plugin is found: it is in the wheel."""
    pytest.importorskip("setuptools", reason="building a wheel offline needs setuptools")
    # built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("georaster_cnn-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"{PLUGIN_NAME}/{name}" for name in EXPECTED} <= names
    assert "georaster_cnn_cli/qgis.py" in names
    assert not any(n.startswith("qgis/") for n in names)  # nothing shadows QGIS's qgis
