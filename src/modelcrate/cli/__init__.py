"""The ``modelcrate`` command. Each command parses options, calls the Python API, renders.

Errors from modelcrate become one line on stderr and the error's exit code
(1, or 2 for usage errors); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from modelcrate.cli import (
    aliases,
    crates,
    deploy,
    diff,
    optimizing,
    predict,
    registry,
    reuse,
    rollouts,
    serving,
    trust,
    webhooks,
)
from modelcrate.cli.output import errors
from modelcrate.errors import ModelcrateError

app = typer.Typer(
    name="modelcrate",
    help="Package, publish and reuse neural-network models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Package, publish and reuse neural-network models."""


crates.register(app)
registry.register(app)
aliases.register(app)
predict.register(app)
serving.register(app)
optimizing.register(app)
trust.register(app)
reuse.register(app)
deploy.register(app)
diff.register(app)
webhooks.register(app)
rollouts.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="modelcrate")  # standalone: usage errors exit 2 by themselves
    except ModelcrateError as exc:
        if debug:
            raise
        errors.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
