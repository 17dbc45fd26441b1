"""`edge-agent demo` on the command line; the demo itself loads only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent.parent / "config" / "demo.toml"


def add_demo_command(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole product on one machine: a simulated pump, the agent, a live view",
        description="Signs the bundled modules with a demo key (made on first run), starts "
        "a simulated pump and the embedded broker, runs the agent and shows what reaches "
        "the broker. Ctrl-C stops it.",
    )
    demo.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="demo.toml")
    demo.add_argument("--seconds", type=float, default=None, help="stop after this long")
    demo.add_argument(
        "--plain", action="store_true", help="one line per message instead of the live view"
    )
    demo.add_argument(
        "--sparkplug",
        action="store_true",
        help="the agent also speaks Sparkplug B (group demo); the view shows its messages",
    )
    demo.add_argument(
        "--opcua",
        action="store_true",
        help="serve the pump over OPC UA instead of Modbus TCP, on the same port",
    )
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    # Imported here: the demo's view, pump and signing stay out of every other command.
    from agent.demo._run import demo  # noqa: PLC0415

    return demo(args)
