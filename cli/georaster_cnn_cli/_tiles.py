"""Running ``predict``'s tiles: one after another on this machine, several at once on a cluster.

On the threaded scheduler each tile already keeps every core busy, so tiles run
one after another in this thread. On a distributed cluster a tile alone leaves
workers idle while the client opens it, builds its graph and finishes its file,
so up to :func:`tiles_in_flight` tiles run at once, each in a thread of this
process that writes its output as soon as its blocks are in. Their number is
bounded so that the client's memory is: each tile in flight holds at most its
writer's ``max_in_flight`` finished blocks.

An interruption (Ctrl-C, SIGTERM: raised in the main thread) stops the tiles in
flight at their next finished block; their staged outputs are removed, and the
resume journals of their finished blocks kept, by the library's staging, before
the interruption goes on to the command's edge, with a note naming the outputs
that a rerun continues.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from georaster_cnn.io.staging import output_exists
from georaster_cnn.options import InferenceOptions
from georaster_cnn_cli._common import (
    CLIState,
    error_message,
    escape,
    is_reportable,
    report_error,
    report_selected,
)
from georaster_cnn_cli._inputs import Job, TileResult
from georaster_cnn_cli._progress import DaskProgress, make_progress
from georaster_cnn_cli._stac import open_source
from georaster_cnn_cli._warnings import capture_warnings, report_warnings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from georaster_cnn import GeoModel

__all__ = ["Extra", "TileSettings", "run_tiles", "tiles_in_flight"]

#: Most tiles a cluster computes at once (see :func:`tiles_in_flight`).
MAX_TILES_IN_FLIGHT = 4


@dataclass(frozen=True)
class Extra:
    """One more file made from each class map: ``--vector``, ``--qml``, ``--quicklook``.

    Attributes
    ----------
    what
        Names the output in error messages ("vector output", "QGIS style", ...).
    suffix
        Of the extra file, which lies beside the class map.
    write
        ``write(class map, overwrite)`` -> (file written, short summary or "").
    """

    what: str
    suffix: str
    write: Callable[[Path, bool], tuple[Path, str]]


@dataclass(frozen=True)
class TileSettings:
    """What every tile of one call shares: checked options and the outputs asked for."""

    options: InferenceOptions
    probabilities: bool
    overwrite: bool
    bands: list[int | str] | None = None
    open_options: dict[str, Any] = field(default_factory=dict)
    extras: Sequence[Extra] = ()
    dense: bool | None = None
    resume: bool = True
    stac_item: bool | str = False  # a STAC Item beside each map (a string: the model's name)
    engine: str = "torch"


class _Cancelled(BaseException):
    """Stops a tile's thread once the run is interrupted.

    A ``BaseException`` like ``KeyboardInterrupt``: the tile's error handling does
    not turn it into a failed tile, and the library's staging treats it as an
    interruption (resume state of finished blocks kept, the staged output removed).
    """


def tiles_in_flight(worker_threads: int) -> int:
    """How many tiles run at once on a cluster whose workers have ``worker_threads`` threads.

    Half the worker threads, at least 2 (so that one tile's client-side work
    overlaps another's blocks) and at most :data:`MAX_TILES_IN_FLIGHT` (each tile
    alone already keeps four blocks per worker thread in flight).
    """
    return max(2, min(MAX_TILES_IN_FLIGHT, worker_threads // 2))


def run_tiles(
    state: CLIState,
    plan: Sequence[Job | TileResult],
    model: GeoModel,
    settings: TileSettings,
    *,
    in_flight: int | None = None,
) -> list[TileResult]:
    """Run the jobs under one progress display; the result of every input, in input order.

    ``in_flight`` ``None``: one after another in this thread, on the local
    scheduler (Dask's progress hooks drive the block bar). A number: at most that
    many at once, on the active distributed cluster (a block bar per tile in
    flight, driven by the writer). Either way the tile bar counts finished tiles.
    """
    try:
        with make_progress(state) as progress:
            overall = progress.add_task("tiles", total=sum(isinstance(j, Job) for j in plan))
            if in_flight is not None:
                return _concurrently(state, plan, model, settings, progress, overall, in_flight)
            return _one_after_another(state, plan, model, settings, progress, overall)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: say what a rerun continues
            _note_kept_state(exc, plan)
        raise


def _one_after_another(
    state: CLIState,
    plan: Sequence[Job | TileResult],
    model: GeoModel,
    settings: TileSettings,
    progress: Progress,
    overall: TaskID,
) -> list[TileResult]:
    results: list[TileResult] = []
    chunks = progress.add_task("", total=None, visible=False, stage="blocks")
    for item in plan:
        if isinstance(item, TileResult):
            results.append(item)
            continue
        progress.reset(chunks, total=None, description=escape(item.name), visible=True)
        results.append(_predict_one(state, item, model, settings, progress, chunks))
        progress.advance(overall)
    progress.update(chunks, visible=False)
    return results


def _concurrently(
    state: CLIState,
    plan: Sequence[Job | TileResult],
    model: GeoModel,
    settings: TileSettings,
    progress: Progress,
    overall: TaskID,
    in_flight: int,
) -> list[TileResult]:
    """At most ``in_flight`` tiles at once, each in a pool thread; results in input order."""
    cancel = threading.Event()

    def check() -> None:
        if cancel.is_set():
            raise _Cancelled

    def one(job: Job) -> TileResult:
        check()
        bar = progress.add_task(escape(job.name), total=None, stage="blocks")
        try:
            return _predict_one(state, job, model, settings, progress, bar, check=check)
        finally:
            progress.remove_task(bar)
            progress.advance(overall)

    results: list[TileResult | None] = [r if isinstance(r, TileResult) else None for r in plan]
    # warnings are captured once, here; each tile's thread names its own (report_warnings)
    with capture_warnings(state):
        pool = ThreadPoolExecutor(max(1, in_flight), thread_name_prefix="georaster-cnn-tile")
        futures: dict[int, Future[TileResult]] = {}
        try:
            for i, item in enumerate(plan):
                if isinstance(item, Job):  # a context each: own warnings
                    futures[i] = pool.submit(contextvars.copy_context().run, one, item)
            wait(futures.values())
        except BaseException:
            # Ctrl-C or SIGTERM: no new tile starts, those in flight stop at their next
            # block and clean up before the interruption goes on (a second one stops the
            # waiting here; the threads still stop at their next block)
            cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            # (a future cancelled by shutdown never counts as done for wait: leave it out)
            wait([f for f in futures.values() if not f.cancelled()])
            raise
        pool.shutdown()
        for i, f in futures.items():
            results[i] = f.result()  # a tile's failures are failed results: this never raises
    return [r for r in results if r is not None]


def _note_kept_state(exc: BaseException, plan: Sequence[Job | TileResult]) -> None:
    """Add a note naming the outputs whose finished blocks an interrupted run kept."""
    from georaster_cnn.io.staging import has_resume_state

    kept = [
        str(job.output) for job in plan if isinstance(job, Job) and has_resume_state(job.output)
    ]
    if kept:
        exc.add_note(
            f"finished blocks of {', '.join(kept)} are kept: rerun the same command to "
            "continue (or --no-resume to start afresh)"
        )


def _existing(
    state: CLIState, job: Job, model: GeoModel, settings: TileSettings, t0: float
) -> TileResult:
    """An output that exists: skipped when it is the map these options make, else refused.

    A map of another model, stride, ``--min-valid``, band selection or without the
    asked probabilities is never kept as if it were this run's (:mod:`georaster_cnn.io.reuse`).
    """
    from georaster_cnn.io.reuse import differences

    name = str(job.source)
    opts = settings.options
    try:
        with report_warnings(state, context=name):
            data = _open_tile(job, model, settings)
        differ = differences(
            job.output, model_checksum=model.checksum, stride=opts.stride,
            min_valid=opts.min_valid, probabilities=settings.probabilities,
            bands=[str(b) for b in data["band"].values],
        )  # fmt: skip
    except Exception as exc:
        if not is_reportable(exc):
            raise
        message = error_message(exc, job.source)
        report_error(state, message, context=name)
        return TileResult(name, "failed", job.output, time.perf_counter() - t0, message)
    if not differ:
        return TileResult(name, "skipped", job.output, message="output exists (--overwrite)")
    message = (
        f"{job.output} exists and was made otherwise ({'; '.join(differ)}); "
        "--overwrite replaces it, or choose another --output-dir"
    )
    report_error(state, message, context=name)
    return TileResult(name, "failed", job.output, time.perf_counter() - t0, message)


def _open_tile(job: Job, model: GeoModel, settings: TileSettings) -> Any:
    """The tile's raster (or STAC mosaic) as the settings and the model's bands ask."""
    return open_source(
        job.source,
        bands=settings.bands,
        open_options=settings.open_options,
        model_bands=model.band_names,
    )


def _predict_one(
    state: CLIState,
    job: Job,
    model: GeoModel,
    settings: TileSettings,
    progress: Progress,
    task: TaskID,
    *,
    check: Callable[[], None] | None = None,
) -> TileResult:
    """open -> predict -> write one tile; every failure becomes a failed result, never a raise.

    ``check`` (given on a cluster) is called between the steps and after every
    block; it raises to stop the tile. Without it the tile runs on the local
    scheduler, whose progress hooks drive ``task``.
    """
    import georaster_cnn as gc

    name = str(job.source)
    t0 = time.perf_counter()
    if output_exists(job.output) and not settings.overwrite:
        kept = _existing(state, job, model, settings, t0)
        if kept.status == "failed":
            return kept
        return _add_extras(state, kept, settings.extras, overwrite=False, t0=t0)
    opts = settings.options
    distributed = check is not None
    try:
        with report_warnings(state, context=name):
            data = _open_tile(job, model, settings)
            select = settings.open_options.get("select")
            report_selected(state, data.attrs.get("selected"), select, context=name)
            # the options resolved once for all tiles, passed as they are
            pred = gc.predict(
                data, model, options=opts, dense=settings.dense, engine=settings.engine
            )

            first: list[bool] = []

            def blocks(done: int, total: int) -> None:
                if not first:  # the first report counts the blocks an earlier run finished
                    first.append(True)
                    if done and not state.quiet:
                        state.err.print(
                            Text(f"{name}: resuming: {done} of {total} blocks already done"),
                            soft_wrap=True, highlight=False,
                        )  # fmt: skip
                if distributed:  # locally, Dask's own callbacks drive the bar
                    progress.update(task, completed=done, total=total)
                if check is not None:
                    check()

            if check is not None:
                check()
            # Dask's local callbacks never fire on a cluster; the writer reports blocks there
            with nullcontext() if distributed else DaskProgress(progress, task):
                written = gc.write_prediction(
                    pred,
                    job.output,
                    format=job.format,
                    probabilities=settings.probabilities,
                    overwrite=settings.overwrite,
                    resume=settings.resume,
                    progress=blocks,
                    stac_item=settings.stac_item,
                )
    except Exception as exc:  # one bad tile must not stop the batch
        report_error(state, exc, context=name)
        message = error_message(exc, job.source)
        return TileResult(name, "failed", job.output, time.perf_counter() - t0, message)
    done = TileResult(name, "written", written, time.perf_counter() - t0)
    return _add_extras(state, done, settings.extras, overwrite=settings.overwrite, t0=t0)


def _add_extras(
    state: CLIState,
    result: TileResult,
    extras: Sequence[Extra],
    *,
    overwrite: bool,
    t0: float,
) -> TileResult:
    """Make the tile's extra outputs from its class map, each unless it exists.

    An extra file that exists is kept without ``--overwrite``; a missing one is
    made even when the class map itself was skipped. Each extra is tried; any
    failure fails the tile (the class map and the other extras stay).
    """
    if result.output is None or not extras:
        return result
    made, notes, failures = False, [result.message], []
    for extra in extras:
        out = result.output.with_suffix(extra.suffix)
        if output_exists(out) and not overwrite:
            notes.append(f"{out.name} exists (--overwrite)")
            continue
        try:
            with report_warnings(state, context=result.input):
                written, summary = extra.write(result.output, overwrite)
        except Exception as exc:  # that tile's failure; the class map itself stays
            message = f"{extra.what} {out}: {error_message(exc, out)}"
            report_error(state, message, context=result.input)
            failures.append(message)
            continue
        made = True
        notes.append(f"+ {written.name} ({summary})" if summary else f"+ {written.name}")
    seconds = time.perf_counter() - t0
    if failures:
        return replace(result, status="failed", seconds=seconds, message=_join(*failures))
    if not made:
        return replace(result, message=_join(*notes))
    return replace(result, status="written", seconds=seconds, message=_join(*notes))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
