"""`edge-agent check`: the report for people (rich) or scripts (`--json`).

Exit codes: 0 no errors (warnings allowed), 1 at least one error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.check._checks import DEFAULT_TIMEOUT_S, CheckResult, run_checks

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK = 0
EXIT_ERRORS = 1

_STYLE = {"ok": "green", "warning": "yellow", "error": "bold red"}


def add_check_command(commands: Any) -> None:
    """Add `check` to the CLI's subcommands (an argparse `_SubParsersAction`)."""
    check = commands.add_parser(
        "check",
        help="validate the config and this node's environment; exits 1 on any error",
        description="Loads the config and checks the engines, directories, keys, the MQTT "
        "broker, the Modbus devices, the registries and the module references, and "
        "prints one line per check: ok, warning or error, and for each problem what to "
        "do. Exit codes: 0 no errors (warnings allowed), 1 errors.",
    )
    check.add_argument("--config", type=Path, required=True, metavar="agent.toml")
    check.add_argument("--json", action="store_true", help="print the results as JSON")
    check.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"for each network check (default {DEFAULT_TIMEOUT_S:g})",
    )
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    results = asyncio.run(run_checks(args.config, args.timeout))
    failed = any(r.verdict == "error" for r in results)
    if args.json:
        doc = {"ok": not failed, "checks": [r.to_json() for r in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from rich.console import Console  # noqa: PLC0415 - `edge-agent run` never needs rich

        render_checks(results, Console(highlight=False, soft_wrap=True))
    return EXIT_ERRORS if failed else EXIT_OK


def render_checks(results: list[CheckResult], console: Console) -> None:
    from rich.text import Text  # noqa: PLC0415

    """One line per check; a problem's fix on the line below it; a count at the end."""
    width = max(len(r.name) for r in results)
    for r in results:
        line = Text()
        line.append(f"{r.verdict:<8}", style=_STYLE[r.verdict])
        line.append(f"{r.name:<{width}}  ", style="bold")
        line.append(r.message)
        console.print(line)
        if r.fix is not None:
            console.print(Text(f"{'':<8}{'':<{width}}  fix: {r.fix}", style="dim"))
    counts = {v: sum(r.verdict == v for r in results) for v in ("ok", "warning", "error")}
    summary = ", ".join(f"{n} {v}{'s' if n != 1 and v != 'ok' else ''}" for v, n in counts.items())
    console.print(Text(summary, style=_STYLE["error" if counts["error"] else "ok"]))
