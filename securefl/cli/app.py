"""Entry point of the ``securefl`` command: wires the command groups and maps errors to exit codes.

Every command is a thin call into the library. A :class:`~securefl.errors.ConfigError` (bad user
input) is printed as one line on stderr with exit code 2 and no traceback, the parameters it names
rendered as flags (:func:`securefl.cli.flags.render`); typer's own usage errors (an unknown flag, a
value of the wrong type) keep their message and exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from securefl.cli import attack, audit, client, data, demo, federation, server, train
from securefl.cli.flags import render
from securefl.errors import ConfigError

app = typer.Typer(
    name="securefl",
    help="Privacy-first federated learning: FedAvg, differential privacy, secure aggregation, attacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.command("train")(train.train)
app.command("datasets")(data.datasets)
app.add_typer(attack.attack_app, name="attack")
app.command("audit")(audit.audit)
app.add_typer(federation.federation_app, name="federation")
app.command("server")(server.server)
app.command("client")(client.client)
app.add_typer(demo.demo_app, name="demo")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    with _rendered_warnings():
        try:
            app(args=args, prog_name="securefl")  # standalone mode: always ends in SystemExit
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except ConfigError as error:
            Console(stderr=True).print(
                f"[bold red]error:[/] {escape(render(str(error)))}", highlight=False, soft_wrap=True
            )
            return 2
    return 0


def _render_record(record: logging.LogRecord) -> bool:
    """A handler filter: the record's message with the parameters it names rendered as flags."""
    record.msg, record.args = render(record.getMessage()), None
    return True


@contextlib.contextmanager
def _rendered_warnings() -> Iterator[None]:
    """Warnings and logged messages, printed with the parameters they name rendered as flags,
    like errors (the library names field paths, :mod:`securefl.errors`): a filter on the handlers
    that print logs (the root logger's, or logging's last resort when it has none)."""

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        print(f"{category.__name__}: {render(str(message))}", file=sys.stderr)

    handlers = [*logging.getLogger().handlers, logging.lastResort]
    for handler in handlers:
        if handler is not None:
            handler.addFilter(_render_record)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        for handler in handlers:
            if handler is not None:
                handler.removeFilter(_render_record)


if __name__ == "__main__":
    sys.exit(main())
