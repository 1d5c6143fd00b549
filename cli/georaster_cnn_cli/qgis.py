"""``georaster-cnn qgis``: put the QGIS Processing plugin into a QGIS profile, or into a zip.

The plugin (``qgis/georaster_cnn_qgis`` in the repository, the package
``georaster_cnn_qgis`` in an installed wheel) imports neither torch nor the library:
it runs this environment's ``georaster-cnn`` executable, whose absolute path is
recorded here, in the plugin folder's :data:`RECORD` file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import BinaryIO

import click

from georaster_cnn_cli import __version__
from georaster_cnn_cli._common import fail, get_state, usage_errors
from georaster_cnn_cli._options import overwrite_option

__all__ = ["PLUGIN_NAME", "RECORD", "plugin_source", "qgis"]

#: The plugin's folder name in a profile's python/plugins, and its key in [PythonPlugins].
PLUGIN_NAME = "georaster_cnn_qgis"
#: File in the plugin folder recording the executable it runs (read by the plugin).
RECORD = "georaster_cnn.json"
#: What a copy of the plugin leaves out.
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", RECORD)


def plugin_source() -> Path:
    """The plugin folder: the repository's ``qgis/georaster_cnn_qgis`` in a checkout,
    else the installed package ``georaster_cnn_qgis`` (found, not imported)."""
    checkout = Path(__file__).resolve().parents[2] / "qgis" / PLUGIN_NAME
    if (checkout / "metadata.txt").is_file():
        return checkout
    spec = importlib.util.find_spec(PLUGIN_NAME)
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent
        if (folder / "metadata.txt").is_file():
            return folder
    fail(
        f"the QGIS plugin files ({PLUGIN_NAME}) are not installed with georaster-cnn in "
        f"{sys.prefix}; reinstall georaster-cnn (pip install --force-reinstall georaster-cnn)"
    )


def this_executable() -> Path:
    """The ``georaster-cnn`` script of the environment running this command."""
    scripts = Path(sysconfig.get_path("scripts"))
    for name in ("georaster-cnn", "georaster-cnn.exe"):
        if (scripts / name).is_file():
            return (scripts / name).absolute()
    found = shutil.which("georaster-cnn")
    if found is None:
        fail(
            f"found no georaster-cnn executable in {scripts} nor on PATH; install the package "
            "(pip install georaster-cnn) or name one with --executable"
        )
    return Path(found).absolute()


def _checked_executable(path: Path) -> Path:
    """``path`` made absolute, after checking that ``path --version`` runs."""
    exe = path.expanduser().absolute()
    if not exe.is_file() or not os.access(exe, os.X_OK):
        fail(f"--executable {exe}: no such executable file")
    try:
        run = subprocess.run(
            [str(exe), "--version"], capture_output=True, text=True, timeout=120, check=False
        )
    except OSError as exc:
        fail(f"--executable {exe} does not run: {exc}")
    if run.returncode != 0 or "georaster-cnn" not in run.stdout:
        said = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        fail(f"{exe} --version failed (exit status {run.returncode}): {said[0]}")
    return exe


def default_profile_dir() -> Path:
    """The profile QGIS starts with: ``QGIS_CUSTOM_CONFIG_PATH`` or the platform's
    settings folder, ``profiles/<default profile>`` (``profiles.ini``, else ``default``)."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        root = Path(custom)
    elif sys.platform == "win32":
        root = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "QGIS/QGIS3"
    elif sys.platform == "darwin":
        root = Path.home() / "Library/Application Support/QGIS/QGIS3"
    else:
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
        root = Path(data) / "QGIS/QGIS3"
    profiles = root / "profiles"
    name = _ini_value(profiles / "profiles.ini", "core", "defaultProfile") or "default"
    return profiles / name


def _ini_value(path: Path, section: str, key: str) -> str | None:
    """One value of a QSettings ini file, read line by line (QSettings escapes aside)."""
    if not path.is_file():
        return None
    current = None
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line:
            k, v = line.split("=", 1)
            if k.strip() == key:
                return v.strip()
    return None


def enable_in_ini(ini: Path, section: str, key: str, value: str) -> None:
    """Set ``key=value`` in ``[section]`` of a QSettings ini file, keeping every other line.

    QSettings' own escapes (``\\``-separated keys, ``@Variant``) are left as they are:
    the file is edited as text, not parsed and rewritten.
    """
    from georaster_cnn.io.staging import atomic_write

    lines = ini.read_text(encoding="utf-8").splitlines() if ini.is_file() else []
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{section}]"), None)
    if start is None:
        lines += ([""] if lines and lines[-1].strip() else []) + [f"[{section}]", f"{key}={value}"]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")),
            len(lines),
        )
        at = next(
            (i for i in range(start + 1, end) if lines[i].split("=", 1)[0].strip() == key), None
        )
        if at is None:
            while end > start + 1 and not lines[end - 1].strip():
                end -= 1  # before the blank lines that end the section
            lines.insert(end, f"{key}={value}")
        else:
            lines[at] = f"{key}={value}"
    ini.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    atomic_write(ini, lambda f: f.write(text.encode("utf-8")))


def _record(executable: Path) -> str:
    """The plugin's record: the executable it runs; the docs page when this is a checkout."""
    record: dict[str, str] = {"executable": str(executable), "version": __version__}
    docs = Path(__file__).resolve().parents[2] / "docs" / "qgis.md"
    if docs.is_file():
        record["docs"] = str(docs)  # the algorithms' help links to it
    return json.dumps(record, indent=2) + "\n"


@click.group("qgis", short_help="Install the QGIS Processing plugin (toolbox, Model Builder).")
def qgis() -> None:
    """The QGIS Processing provider "georaster-cnn": train, classify, evaluate, vectorize
    and inspect from QGIS's toolbox, Model Builder and qgis_process.

    The plugin runs this environment's georaster-cnn executable (its path is
    recorded at install), so QGIS's own Python needs no torch. docs/qgis.md has
    the details.
    """


@qgis.command("install", short_help="Copy the plugin into a QGIS profile and enable it.")
@click.option(
    "--profile-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="The QGIS profile folder (holding QGIS/QGIS3.ini and python/plugins). [default: "
    "the default profile under $QGIS_CUSTOM_CONFIG_PATH, else the user's QGIS3 settings "
    "folder, e.g. ~/.local/share/QGIS/QGIS3/profiles/default]",
)
@click.option(
    "--executable",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="The georaster-cnn the plugin runs. [default: this environment's]",
)
@click.pass_context
def install(ctx: click.Context, profile_dir: Path | None, executable: Path | None) -> None:
    """Copy the plugin into a QGIS profile, record the georaster-cnn it runs, enable it.

    The plugin folder goes to DIR/python/plugins/georaster_cnn_qgis (an older copy
    is replaced), and [PythonPlugins] georaster_cnn_qgis=true is set in
    DIR/QGIS/QGIS3.ini, so that QGIS and qgis_process load it without a click.
    Restart QGIS afterwards.

    \b
    Examples:
      georaster-cnn qgis install
      georaster-cnn qgis install --profile-dir ~/.local/share/QGIS/QGIS3/profiles/work
    """
    state = get_state(ctx)
    exe = _checked_executable(executable if executable is not None else this_executable())
    profile = (profile_dir or default_profile_dir()).expanduser().absolute()
    plugins = profile / "python" / "plugins"
    target = plugins / PLUGIN_NAME
    with usage_errors():
        plugins.mkdir(parents=True, exist_ok=True)
        staging = plugins / f".{PLUGIN_NAME}.installing-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(plugin_source(), staging, ignore=_IGNORED)
            (staging / RECORD).write_text(_record(exe), encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        enable_in_ini(profile / "QGIS" / "QGIS3.ini", "PythonPlugins", PLUGIN_NAME, "true")
    if not state.quiet:
        state.out.print(
            f"installed the QGIS plugin in {target}\n"
            f"enabled in {profile / 'QGIS' / 'QGIS3.ini'}; it runs {exe}\n"
            "restart QGIS: the algorithms are in the Processing toolbox under georaster-cnn",
            highlight=False,
            soft_wrap=True,
        )


@qgis.command("zip", short_help="Write the plugin as a zip for QGIS's 'Install from ZIP'.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.zip",
    help="The zip file to write.",
)
@click.option(
    "--executable",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="The georaster-cnn the plugin runs. [default: this environment's]",
)
@overwrite_option("Replace FILE.zip if it exists.")
@click.pass_context
def zip_cmd(ctx: click.Context, output: Path, executable: Path | None, overwrite: bool) -> None:
    """Write the plugin as FILE.zip, for Plugins > Manage and Install Plugins > Install from ZIP.

    The zip records this environment's georaster-cnn (or --executable); on
    another machine, set the path in the plugin's settings (Plugins >
    georaster-cnn > Settings) or in Processing's options.

    \b
    Example:
      georaster-cnn qgis zip -o georaster_cnn_qgis.zip
    """
    from georaster_cnn.io.staging import atomic_write, check_output

    state = get_state(ctx)
    exe = _checked_executable(executable if executable is not None else this_executable())
    if output.suffix.lower() != ".zip":
        fail(f"-o {output}: QGIS installs plugins from .zip files; name it *.zip")
    with usage_errors():
        check_output(output, overwrite=overwrite)
    source = plugin_source()
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and p.name != RECORD
    )

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, f"{PLUGIN_NAME}/{p.relative_to(source).as_posix()}")
            z.writestr(f"{PLUGIN_NAME}/{RECORD}", _record(exe))

    with usage_errors():
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(output, write, overwrite=overwrite)
    if not state.quiet:
        state.out.print(f"wrote {output} ({len(files) + 1} files); it runs {exe}", highlight=False)
