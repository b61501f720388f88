"""The progress bar every command that trains shows: one bar over the rounds of a run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from securefl.fl.record import RoundRecord

RoundCallback = Callable[[RoundRecord], None]


@contextmanager
def round_progress(
    console: Console, *, rounds: int, status: Callable[[RoundRecord], str]
) -> Iterator[RoundCallback]:
    """A rich bar over ``rounds`` rounds; yields the ``on_round`` callback that advances it and
    shows ``status(record)`` of the round just finished."""
    with rounds_bar(console) as progress:
        task = progress.add_task("rounds", total=rounds, status="")

        def on_round(record: RoundRecord) -> None:
            progress.update(task, advance=1, status=status(record))

        yield on_round


@contextmanager
def rounds_bar(console: Console) -> Iterator[Progress]:
    """The rich progress display of rounds every command shows: "round  m/n  bar  status  time"
    (a task's ``status`` field is its status column)."""
    columns = (
        TextColumn("[bold]round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress
