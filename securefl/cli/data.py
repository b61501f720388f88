"""``securefl datasets``: the data-set registry as a table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from securefl.cli.flags import render
from securefl.data import DATASETS


def datasets() -> None:
    """List the data sets securefl can load, with size, shape and task."""
    table = Table(title="securefl data sets", show_lines=False)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("task", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("size", no_wrap=True)
    table.add_column("source", no_wrap=True)
    for info in DATASETS.values():
        task = f"{info.num_outputs} classes" if info.task == "classification" else "regression"
        table.add_row(
            info.name,
            task,
            "×".join(str(d) for d in info.input_shape),
            info.size,
            "data dir" if info.needs_data_dir else "bundled",
        )
    console = Console()
    console.print(table)
    for info in DATASETS.values():
        console.print(f"[bold]{info.name}[/]: {render(info.description)}", highlight=False)
