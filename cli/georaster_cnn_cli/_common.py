"""Plumbing shared by the commands: state, errors in the CLI's words, small helpers.

Nothing here imports the library at module level, so ``--help`` stays fast; the
library's exception classes are looked up only when an exception is being
classified (by which time the library has been imported by whoever raised it).
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from georaster_cnn import GeoModel
    from georaster_cnn_cli._events import EventStream

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "CLIError",
    "CLIState",
    "class_counts_table",
    "error_message",
    "escape",
    "exit_status",
    "fail",
    "flag_wording",
    "format_metrics",
    "format_number",
    "get_state",
    "is_reportable",
    "kv_table",
    "plural",
    "report_device",
    "report_error",
    "report_selected",
    "scale_summary",
    "strip_path",
    "usage_errors",
]

#: Some of the work failed (e.g. one tile of a batch); the rest was done.
EXIT_FAILED = 1
#: Nothing was done: bad usage, an unusable model, a refused overwrite.
EXIT_USAGE = 2


# --------------------------------------------------------------------------- state


@dataclass
class CLIState:
    """Per-invocation settings and consoles, kept in ``click.Context.obj``.

    Attributes
    ----------
    verbosity
        ``-1`` under ``-q``, else the number of ``-v`` flags.
    out, err
        Rich consoles on stdout (results: tables, model cards) and stderr
        (progress, log records, warnings, errors).
    events
        Under ``--progress jsonl``: where progress, warnings and errors go as JSON
        lines (:mod:`georaster_cnn_cli._events`); ``err`` then turns its lines into
        events too.
    """

    verbosity: int = 0
    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))
    events: EventStream | None = None

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


def get_state(ctx: click.Context) -> CLIState:
    """The :class:`CLIState` of this invocation (a default one if the group did not run)."""
    state = ctx.find_object(CLIState)
    if state is None:
        state = ctx.ensure_object(CLIState)
    return state


# --------------------------------------------------------------------------- library words -> flags

#: Library keywords that a command-line option sets under the same name
#: (``min_valid`` -> ``--min-valid``), read from the commands' own click options by
#: :func:`learn_flags` (``main`` calls it once the commands exist): a new option is
#: known here without a table to keep.
_KEYWORDS: list[str] = []
# Not inside a path, a longer name or a flag: min_valid, not /data/min_valid or --min-valid.
_START = r"(?<![\w./-])"
# The library names a device as "device 'cuda'".
_DEVICE = re.compile(_START + r"device '([\w:]+)'")
# "--overwrite (--overwrite)" and "--label-column / --label-column" say it twice.
_TWICE = re.compile(r"(--[\w-]+)(?: \(\1\)| / \1)")


def learn_flags(group: click.Group) -> list[str]:
    """Learn the keywords the options of ``group``'s commands set: ``--min-valid`` -> ``min_valid``.

    Every long option of every command counts (``--no-...`` forms excepted), so a
    library message that names ``keyword=`` is worded as the option whenever one
    exists. Returns the keywords, sorted.
    """
    names = {
        opt[2:].replace("-", "_")
        for command in group.commands.values()
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--")
    }
    _KEYWORDS[:] = sorted(names)
    _patterns.cache_clear()
    return list(_KEYWORDS)


@functools.cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """``(keyword=value, bare keyword)`` patterns of the learned keywords."""
    names = "|".join(sorted(_KEYWORDS, key=len, reverse=True)) or r"(?!x)x"
    # Recognisable without ``=`` too: no English word or attribute name looks like them.
    bare = [k for k in _KEYWORDS if "_" in k and k != "class_names"]
    bare_names = "|".join(sorted(bare, key=len, reverse=True)) or r"(?!x)x"
    keyword = re.compile(
        _START + rf"(?P<name>{names})="
        r"(?:(?P<boolean>True|False)\b"  # flags: overwrite=True
        r"|\[(?P<items>[^\]]*)\]"  # lists: bands=[1, 2] or bands=[...]
        r"|\{(?P<mapping>[^}]*)\}"  # mappings: select={'time': VALUE}
        r"|(?P<q>['\"])(?P<quoted>[^'\"]*)(?P=q)"  # strings: device='cpu' ...
        r"(?:(?P<more>\s+or\s+)(?P<q2>['\"])(?P<other>[^'\"]*)(?P=q2))?"  # ... or 'auto'
        r"|(?P<plain>[\w.:-]*\w))?"  # plain values: stride=64, stack=DIM; or nothing: stride=
    )
    return keyword, re.compile(_START + rf"({bare_names})(?![\w=]|\.\w|/)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unquote(text: str) -> str:
    return text.strip().strip("'\"")


def _keyword_as_flag(m: re.Match[str]) -> str:
    boolean, items, mapping, quoted, plain = m.group(
        "boolean", "items", "mapping", "quoted", "plain"
    )
    flag = _flag(m["name"])
    if boolean is not None:
        return flag if boolean == "True" else f"--no-{flag[2:]}"
    if items is not None:
        values = [_unquote(v) for v in items.split(",") if _unquote(v)]
        return flag if values in ([], ["..."]) else f"{flag} {','.join(values)}"
    if mapping is not None:
        pairs = [p.split(":", 1) for p in mapping.split(",") if ":" in p]
        return " ".join(f"{flag} {_unquote(k)}={_unquote(v)}" for k, v in pairs) or flag
    if quoted is not None:
        return f"{flag} {quoted}" + (f"{m['more']}{m['other']}" if m["more"] else "")
    return f"{flag} {plain}" if plain else flag


def flag_wording(message: str) -> str:
    """A library message in the CLI's words: Python keywords become the options that set them.

    The library names its keywords (``bands=[...]``, ``overwrite=True``,
    ``device='cpu'``, ``device 'cuda'``, ``select={DIM: VALUE}``, ``stride=``,
    ``min_valid``); a command-line user knows the options (``--bands``,
    ``--overwrite``, ``--device cpu``, ``--device cuda``, ``--select DIM=VALUE``,
    ``--stride``, ``--min-valid``).
    Keywords without an option of the same name (``crs=``) are left as they are;
    the options are those :func:`learn_flags` read from the commands.

    Examples
    --------
    >>> flag_wording("Select bands with bands=[...].")
    'Select bands with --bands.'
    >>> flag_wording("pass overwrite=True to replace it; or use device='cpu' or 'auto'")
    'pass --overwrite to replace it; or use --device cpu or auto'
    >>> flag_wording("choose one with select={'time': VALUE} or stack='time'")
    'choose one with --select time=VALUE or --stack time'
    """
    keyword, bare = _patterns()
    text = keyword.sub(_keyword_as_flag, message)
    text = _DEVICE.sub(r"--device \1", text)
    text = bare.sub(lambda m: _flag(m.group(1)), text)
    return _TWICE.sub(r"\1", text)


# --------------------------------------------------------------------------- errors


class CLIError(click.ClickException):
    """A failure the CLI reports as one ``error: ...`` line, with exit status 2 (nothing done).

    Raise it ``from`` the underlying exception: under ``-v`` the traceback of the
    whole chain is shown.
    """

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        """Fallback when raised outside the group (the group prints it itself)."""
        click.echo(f"error: {self.format_message()}", file=file, err=True)


def _library_error(name: str) -> type[BaseException] | None:
    errors = sys.modules.get("georaster_cnn.errors")
    found = getattr(errors, name, None)
    return found if isinstance(found, type) else None


def _is_library_error(exc: BaseException) -> bool:
    root = _library_error("GeorasterCNNError")
    return root is not None and isinstance(exc, root)


def is_reportable(exc: BaseException) -> bool:
    """Whether ``exc`` is an expected failure (library error or OSError), not a bug."""
    if isinstance(exc, BrokenPipeError):
        return False  # click's own handling of a closed pipe is right
    return isinstance(exc, OSError) or _is_library_error(exc)


def exit_status(exc: BaseException) -> int:
    """2 for a refused overwrite (nothing was written), else 1."""
    refused = _library_error("OutputExistsError")
    return EXIT_USAGE if refused is not None and isinstance(exc, refused) else EXIT_FAILED


def strip_path(message: str, path: str | os.PathLike[str] | None) -> str:
    """``message`` on one line, without a leading ``<path>: `` that the caller prints anyway.

    Library messages name the file they are about; when the CLI prints the file
    itself (``error: <input>: <message>``) the repetition is removed.
    """
    msg = " ".join(message.split())
    if path is not None:
        p = Path(path)
        prefixes = {os.fspath(path), str(p), os.fspath(p.absolute()), os.fspath(p.resolve())}
        for prefix in sorted(prefixes, key=len, reverse=True):
            if msg.startswith(prefix + ": "):
                return msg[len(prefix) + 2 :]
    return msg


def error_message(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """One line describing ``exc``, in the CLI's words (see :func:`strip_path`, :func:`flag_wording`).

    Unexpected errors name their type.
    """
    msg = strip_path(str(exc), path) or type(exc).__name__
    if _is_library_error(exc):
        return flag_wording(msg)
    if not is_reportable(exc) and not isinstance(exc, click.ClickException):
        msg = f"{type(exc).__name__}: {msg}"  # an unexpected error: say what kind
    return msg


def report_error(
    state: CLIState, exc: BaseException | str, *, context: str | os.PathLike[str] | None = None
) -> None:
    """Print ``error: [<context>: ]<message>`` on stderr; the traceback too under ``-v``."""
    msg = error_message(exc, context) if isinstance(exc, BaseException) else " ".join(exc.split())
    if state.events is not None:
        fields: dict[str, Any] = {"input": None if context is None else os.fspath(context)}
        if isinstance(exc, BaseException) and state.verbosity >= 1:
            fields["traceback"] = "".join(traceback.format_exception(exc))
        state.events.emit("error", message=msg, **fields)
        return
    line = f"{os.fspath(context)}: {msg}" if context is not None else msg
    state.err.print(
        Text.assemble(("error:", "bold red"), " ", line), soft_wrap=True, highlight=False
    )
    if isinstance(exc, BaseException) and state.verbosity >= 1:
        tb = "".join(traceback.format_exception(exc))
        state.err.print(Text(tb.rstrip()), soft_wrap=True, highlight=False)


def report_device(state: CLIState, device: Any) -> Any:
    """Resolve ``--device`` and say which device runs the model ("CUDA NVIDIA H200 (cuda:0)", "CPU").

    A ``device`` event under ``--progress jsonl``, else an info line (``-v``). A
    device that is unknown or unavailable stops the command (exit status 2).
    Returns the resolved :class:`torch.device`, for the command to pass on (resolved once).
    """
    import logging

    import georaster_cnn as gc

    with usage_errors():
        resolved = gc.resolve_device(device)
        name = gc.device_name(resolved)
    if state.events is not None:
        state.events.emit("device", device=str(resolved), name=name)
    else:
        logging.getLogger("georaster_cnn_cli").info("device: %s", name)
    return resolved


def fail(message: str) -> NoReturn:
    """Stop the command with one ``error:`` line and exit status 2."""
    raise CLIError(message)


@contextmanager
def usage_errors() -> Iterator[None]:
    """Options and outputs checked by the library inside the block: a refusal stops with exit 2.

    Commands check every option once, up front, by calling the library's own checks
    (:mod:`georaster_cnn.options`), so a bad value fails once instead of on every tile;
    and they ask :func:`georaster_cnn.io.staging.check_output` before slow work about an
    output the library would refuse to replace only when it writes it, at the end.
    """
    import georaster_cnn as gc

    try:
        yield
    except (gc.InputError, gc.OutputExistsError) as exc:
        raise CLIError(error_message(exc)) from exc


def report_selected(
    state: CLIState,
    selected: Mapping[str, Any] | None,
    select: Mapping[str, Any] | None,
    *,
    context: str | os.PathLike[str],
) -> None:
    """One stderr line (unless ``-q``) of the values ``--select`` picked from an input.

    ``selected`` is the opened array's ``attrs["selected"]`` (dimension -> value
    picked), ``select`` what was asked for: ``cube.nc: --select time=2020-07-01 ->
    2020-07-01T12:00:00``.
    """
    if state.quiet or not select or not selected:
        return
    picks = ", ".join(
        f"--select {dim}={select[dim]} -> {selected[dim]}" for dim in select if dim in selected
    )
    if picks:
        state.err.print(Text(f"{os.fspath(context)}: {picks}"), soft_wrap=True, highlight=False)


def scale_summary(provenance: Mapping[str, Any]) -> str:
    """One line on where the windows came from, time reading against computing, and resumption."""
    parts = []
    store = provenance.get("window_store")
    if store:
        how = "streamed from" if provenance.get("streamed") else "read from"
        parts.append(f"windows {how} {store}")
    timing = provenance.get("timing")
    if isinstance(timing, Mapping) and "computing_s" in timing:
        parts.append(
            f"{format_number(timing.get('reading_s'))} s reading windows, "
            f"{format_number(timing.get('computing_s'))} s computing"
        )
    resumed = provenance.get("resumed")
    if isinstance(resumed, Mapping):
        parts.append(f"resumed after epoch {resumed.get('after_epoch')}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- text


def plural(n: int, word: str) -> str:
    """``"1 tile"``, ``"3 tiles"``, ``"2 classes"``."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def format_number(value: Any, digits: int = 3) -> str:
    """``0.812`` for a finite number, ``n/a`` for anything else."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "n/a"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """``loss 0.512 acc 0.801 val_loss 0.601 val_acc 0.774`` (missing ones left out)."""
    names = (
        ("loss", "loss"),
        ("accuracy", "acc"),
        ("val_loss", "val_loss"),
        ("val_accuracy", "val_acc"),
    )
    return " ".join(
        f"{short} {format_number(metrics[key])}" for key, short in names if key in metrics
    )


def kv_table(title: str) -> Table:
    """A two-column key/value grid with a bold, left-aligned title (model cards, reports)."""
    table = Table.grid(padding=(0, 2))
    table.title = title
    table.title_justify = "left"
    table.title_style = "bold"
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    return table


#: Rows of the per-class table: provenance key -> column heading.
_COUNT_COLUMNS = {
    "train": "train",
    "validation": "validation",
    "dropped_in_buffer": "dropped in buffer",
}


def class_counts_table(model: GeoModel) -> Table | None:
    """Per-class training / validation (/ dropped in buffer) counts, or None if not recorded.

    From the model's ``provenance["windows_per_class"]`` (rasters) or
    ``["chips_per_class"]`` (chip sets): ``{"train": {name: n}, "validation": ...}``;
    one row per class in the model's order, then the totals.
    """
    provenance = model.provenance or {}
    unit = "windows" if "windows_per_class" in provenance else "chips"
    counts = provenance.get(f"{unit}_per_class")
    if not isinstance(counts, Mapping) or not counts:
        return None
    columns = [k for k in _COUNT_COLUMNS if isinstance(counts.get(k), Mapping)]
    names = list(dict.fromkeys([*model.class_names, *(n for k in columns for n in counts[k])]))
    table = Table(title=f"Training {unit} per class", title_justify="left")
    table.add_column("class")
    for k in columns:
        table.add_column(_COUNT_COLUMNS[k], justify="right")
    for name in names:
        table.add_row(Text(str(name)), *(f"{int(counts[k].get(name, 0)):,}" for k in columns))
    totals = [f"{sum(int(v) for v in counts[k].values()):,}" for k in columns]
    table.add_row(Text("all", style="bold"), *totals)
    return table
