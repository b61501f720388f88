"""``securefl datasets``: the data-set registry as a table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from securefl.data import DATASETS


def datasets() -> None:
    """List the data sets securefl can load, with size, shape and task."""
    table = Table(title="securefl data sets")
    table.add_column("name", no_wrap=True, style="bold")
    for column in ("task", "shape", "outputs", "size", "needs --data-dir"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", ratio=1)
    for info in DATASETS.values():
        table.add_row(
            info.name,
            info.task,
            "×".join(str(d) for d in info.input_shape),
            str(info.num_outputs),
            info.size,
            "yes" if info.needs_data_dir else "no",
            info.description,
        )
    Console().print(table)
