"""Progress bars for long work (rich), with rate and ETA; silenced globally by ``--quiet``."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar off (``--quiet``) or on."""
    global _quiet
    _quiet = quiet


def notice(message: str) -> None:
    """One line on stderr about something the user should know (shown even with ``--quiet``)."""
    print(f"notice: {message}", file=sys.stderr, flush=True)


@contextmanager
def progress(description: str, total: float | None, unit: str = "it") -> Iterator[Callable[..., None]]:
    """Show one bar; yields ``advance(n=1, **fields)``. Rate is shown in ``unit``/s."""
    if _quiet:
        yield lambda n=1, **_: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="", info="")

        def advance(n: float = 1, info: str | None = None) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            fields = {"rate": f"{speed:,.0f} {unit}/s" if speed else ""}
            if info is not None:
                fields["info"] = info
            bar.update(task, **fields)

        yield advance
