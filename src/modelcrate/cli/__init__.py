"""The ``modelcrate`` command. Each command parses options, calls the Python API, renders.

Errors from modelcrate become one line on stderr and the error's exit code
(1, or 2 for usage errors); ``--debug`` shows the traceback instead. Only the module that
defines the command being run is imported (``COMMANDS``); ``--help`` and unknown commands
get every one.
"""

from __future__ import annotations

import importlib
import sys

import click
from rich.markup import escape

from modelcrate.cli.output import errors
from modelcrate.errors import ModelcrateError

MODULES = (  # every module that registers commands
    "crates",
    "registry",
    "aliases",
    "predict",
    "serving",
    "optimizing",
    "trust",
    "reuse",
    "deploy",
    "diff",
    "webhooks",
    "rollouts",
)
COMMANDS = {  # command (or command group) -> the module whose register() adds it
    **dict.fromkeys(("pack", "inspect"), "crates"),
    **dict.fromkeys(
        ("publish", "list", "show", "pull", "verify", "delete", "gc", "backup", "restore"),
        "registry",
    ),
    **dict.fromkeys(("du", "push"), "registry"),
    **dict.fromkeys(("alias", "rollback"), "aliases"),
    "predict": "predict",
    **dict.fromkeys(("serve", "ui", "bench"), "serving"),
    **dict.fromkeys(("optimize", "compare", "convert", "eval"), "optimizing"),
    **dict.fromkeys(("keys", "policy", "sign", "encrypt", "audit"), "trust"),
    **dict.fromkeys(("finetune", "features", "layers", "pipeline", "ensemble", "lineage"), "reuse"),
    "export": "deploy",
    "diff": "diff",
    "webhooks": "webhooks",
    "rollout": "rollouts",
}


def build(command: str | None = None) -> click.Group:
    """The CLI with just ``command`` (from the module that defines it), or with every
    command when ``command`` is None or unknown."""
    group = click.Group(
        "modelcrate",
        help="Package, publish and reuse neural-network models.",
        params=[click.Option(["--debug"], is_flag=True, help="Show tracebacks on errors.")],
        callback=lambda debug: None,  # main() reads --debug itself
        context_settings={"show_default": True},
    )
    for module in [COMMANDS[command]] if command in COMMANDS else MODULES:
        importlib.import_module(f"modelcrate.cli.{module}").register(group)
    if command in COMMANDS:
        group.commands = {command: group.commands[command]}
    return group


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    # The first word that is not an option names the command (--debug is the only root one).
    command = next((a for a in args if not a.startswith("-")), None)
    try:
        build(command).main(args, prog_name="modelcrate")  # usage errors exit 2 by themselves
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
