"""How the CLI shows things: Rich tables on a terminal, JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# Human output goes to stdout; progress and errors to stderr, so --json stays parseable.
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
