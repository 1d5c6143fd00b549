"""Where a command's Dask work runs: ``--scheduler`` / ``--scheduler-file`` made into a session."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from georaster_cnn_cli._common import CLIError, CLIState, error_message

if TYPE_CHECKING:
    from georaster_cnn.cluster import ClusterSession

__all__ = ["DEFAULT_SCHEDULER", "SchedulerChoice", "check_scheduler", "cluster_session"]

#: The scheduler when neither option is given, for one input or many: on this
#: project's 2-core benchmark machine a local cluster adds process start-up and
#: transfer costs without a measured gain (see docs/cli.md).
DEFAULT_SCHEDULER = "threads"


@dataclass(frozen=True)
class SchedulerChoice:
    """``--scheduler`` and ``--scheduler-file`` as given (``None``: not given)."""

    scheduler: str | None = None
    scheduler_file: Path | None = None

    @property
    def resolved(self) -> str | None:
        """The scheduler to use: the one given, else the default unless a file names one."""
        if self.scheduler is None and self.scheduler_file is None:
            return DEFAULT_SCHEDULER
        return self.scheduler


def _flags(message: str) -> str:
    return message.replace("scheduler_file=", "--scheduler-file ").replace(
        "scheduler=", "--scheduler "
    )


def check_scheduler(choice: SchedulerChoice) -> None:
    """Check the options before slow work; a bad one stops with one ``error:`` line, exit 2."""
    from georaster_cnn.cluster import parse_scheduler
    from georaster_cnn.errors import InputError

    try:
        parse_scheduler(choice.resolved, scheduler_file=choice.scheduler_file)
    except InputError as exc:
        raise CLIError(_flags(error_message(exc))) from exc


@contextmanager
def cluster_session(state: CLIState, choice: SchedulerChoice) -> Iterator[ClusterSession]:
    """Compute everything inside the block on the chosen scheduler.

    A local cluster is started here and closed on exit; a scheduler address or
    file is connected here (an unreachable one stops with exit 2). The dashboard
    link, when there is one, is printed on stderr (not under ``-q``).
    """
    from georaster_cnn.cluster import use_scheduler
    from georaster_cnn.errors import InputError

    check_scheduler(choice)
    # importing distributed set its loggers to INFO; hold them to the other libraries'
    # level that -v/-q chose (root's), restored by the CLI's logging set-up on exit
    logging.getLogger("distributed").setLevel(logging.getLogger().level)
    with ExitStack() as stack:
        try:  # connecting can fail too: an unreachable address or a stale file
            session = stack.enter_context(
                use_scheduler(choice.resolved, scheduler_file=choice.scheduler_file)
            )
        except InputError as exc:
            raise CLIError(_flags(error_message(exc))) from exc
        if session.dashboard_link and not state.quiet:
            state.err.print(
                f"dashboard ({session.scheduler}): {session.dashboard_link}",
                soft_wrap=True,
                highlight=False,
            )
        yield session
