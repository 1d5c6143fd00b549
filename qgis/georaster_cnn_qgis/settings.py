"""Which georaster-cnn executable the algorithms run, and the dialog that sets it.

One setting, held by Processing (Settings > Options > Processing > Providers >
georaster-cnn), whose default is the executable recorded at install time in the
plugin folder's ``georaster_cnn.json`` (written by ``georaster-cnn qgis install``).
The plugin menu's settings dialog edits the same setting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from qgis.core import QgsProcessingException
from qgis.PyQt.QtGui import QIcon

#: Processing setting holding the executable's path.
EXECUTABLE_SETTING = "GEORASTER_CNN_EXECUTABLE"
#: File in the plugin folder written at install time.
RECORD = Path(__file__).with_name("georaster_cnn.json")
#: Where to set the executable, said in every message about it.
WHERE = (
    "set it in Processing > Options > Providers > georaster-cnn (or Plugins > georaster-cnn > "
    "georaster-cnn settings), or run `georaster-cnn qgis install` again from the environment "
    "that has georaster-cnn"
)


def icon() -> QIcon:
    return QIcon(str(Path(__file__).with_name("icon.svg")))


def _record() -> dict:
    try:
        return json.loads(RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def recorded_executable() -> str:
    """The executable recorded at install, else ``georaster-cnn`` on PATH, else ""."""
    recorded = _record().get("executable") or ""
    return recorded or shutil.which("georaster-cnn") or ""


def docs_path() -> str:
    """The docs page recorded at install (docs/qgis.md of the sources), or ""."""
    docs = _record().get("docs") or ""
    return docs if docs and os.path.isfile(docs) else ""


def configured_executable() -> str:
    """The executable set in Processing's options (the recorded one unless changed)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:  # Processing not loaded: only the record is known
        return recorded_executable()
    value = ProcessingConfig.getSetting(EXECUTABLE_SETTING)
    return str(value).strip() if value else recorded_executable()


def executable() -> str:
    """The executable to run, checked to exist; a clear error saying how to fix it if not."""
    exe = configured_executable()
    if not exe:
        raise QgsProcessingException(f"no georaster-cnn executable is set; {WHERE}.")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise QgsProcessingException(
            f"georaster-cnn executable not found: {exe} is not an executable file; {WHERE}."
        )
    return exe


def check_executable(exe: str) -> tuple[bool, str]:
    """``(works, what it said)``: runs ``exe --version``."""
    if not exe or not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        return False, f"{exe or '(empty)'} is not an executable file"
    from .runner import child_environment

    try:
        run = subprocess.run(
            [exe, "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_environment(),
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{exe} does not run: {exc}"
    said = (run.stdout or run.stderr).strip()
    if run.returncode != 0 or "georaster-cnn" not in run.stdout:
        tail = said.splitlines()[-1] if said else "no output"
        return False, f"{exe} --version failed (exit status {run.returncode}): {tail}"
    return True, said


def settings_dialog(parent=None):
    """A small dialog: the executable's path, Browse, Check (runs --version), OK saves."""
    from qgis.PyQt.QtWidgets import (
        QDialog,
        QDialogButtonBox,
        QFileDialog,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QPushButton,
        QVBoxLayout,
    )

    dialog = QDialog(parent)
    dialog.setWindowTitle("georaster-cnn settings")
    dialog.setWindowIcon(icon())
    layout = QVBoxLayout(dialog)
    layout.addWidget(
        QLabel(
            "The georaster-cnn executable the Processing algorithms run\n"
            "(recorded by `georaster-cnn qgis install`; any environment's will do):"
        )
    )
    row = QHBoxLayout()
    edit = QLineEdit(configured_executable())
    edit.setMinimumWidth(420)
    browse = QPushButton("Browse…")
    row.addWidget(edit)
    row.addWidget(browse)
    layout.addLayout(row)
    status = QLabel("")
    status.setWordWrap(True)
    layout.addWidget(status)
    buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
    check = buttons.addButton("Check", QDialogButtonBox.ActionRole)
    layout.addWidget(buttons)

    def pick() -> None:
        path, _ = QFileDialog.getOpenFileName(dialog, "georaster-cnn executable", edit.text())
        if path:
            edit.setText(path)

    def run_check() -> None:
        ok, said = check_executable(edit.text().strip())
        status.setText(("works: " if ok else "does not work: ") + said)

    def save() -> None:
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.setSettingValue(EXECUTABLE_SETTING, edit.text().strip())
        dialog.accept()

    browse.clicked.connect(pick)
    check.clicked.connect(run_check)
    buttons.accepted.connect(save)
    buttons.rejected.connect(dialog.reject)
    return dialog
