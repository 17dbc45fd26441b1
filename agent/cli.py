"""The `edge-agent` command line."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent._json import parse_json
from agent.check import add_check_command
from agent.commands import add_command_commands
from agent.config import load_config
from agent.control import add_status_command
from agent.demo import add_demo_command
from agent.errors import AgentError
from agent.fleet import add_fleet_command
from agent.reading import Reading
from agent.runtime import add_run_command
from agent.supply import add_supply_commands
from agent.wasm import Limits, ReactorModule, create_engine, run_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or "warning").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except AgentError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C on a command in progress (a `fleet deploy` goes on from its document).
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error, and no traceback.
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Runs signed WebAssembly modules over Modbus and OPC UA readings on IoT "
        "gateways and publishes to MQTT (JSON topics, Sparkplug B); `fleet` drives many "
        "of them over MQTT (groups, desired state, staged rollouts).",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: warning; for `run`, the config's logging.level",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    module = commands.add_parser("module", help="work with Wasm modules").add_subparsers(
        title="module commands", metavar="COMMAND"
    )
    run = module.add_parser(
        "run",
        help="run a module over a file of readings and print what it emits",
        description="Runs a module over readings (one JSON object per line) and prints "
        'every emitted message as one JSON line {"topic": ..., "payload": ...}.',
    )
    run.add_argument("wasm", type=Path, metavar="PATH.wasm")
    run.add_argument("--input", type=Path, required=True, metavar="READINGS.jsonl")
    run.add_argument("--engine", default="auto", choices=["auto", "wasmedge", "wasmtime"])
    run.add_argument("--config", default="{}", metavar="JSON", help="the module's config")
    run.add_argument("--memory-pages", type=int, default=Limits.memory_pages)
    run.add_argument("--deadline-ms", type=int, default=Limits.deadline_ms)
    run.add_argument("--fuel", type=int, default=None, help="instruction budget per call")
    run.add_argument("--cache-dir", type=Path, default=None, help="compiled-module cache")
    run.add_argument(
        "--model",
        action="append",
        default=[],
        type=_model_arg,
        metavar="NAME=PATH",
        help="preload a TFLite model for WASI-NN load_by_name (repeatable)",
    )
    run.set_defaults(handler=_module_run)
    add_supply_commands(commands, module)

    config = commands.add_parser("config", help="check config files").add_subparsers(
        title="config commands", metavar="COMMAND"
    )
    show = config.add_parser("show", help="validate a config file and print it in full")
    show.add_argument("path", type=Path)
    show.set_defaults(handler=_config_show)

    add_status_command(commands)
    add_check_command(commands)
    add_run_command(commands)
    add_demo_command(commands)
    add_command_commands(commands)
    add_fleet_command(commands)
    return parser


def _model_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name, Path(path)


def _module_run(args: argparse.Namespace) -> int:
    try:
        module_config = parse_json(args.config)
    except ValueError as err:
        print(f"edge-agent: --config is not valid JSON: {err}", file=sys.stderr)
        return 2
    if not isinstance(module_config, dict):
        print("edge-agent: --config must be a JSON object", file=sys.stderr)
        return 2
    try:
        wasm = args.wasm.read_bytes()
        readings = list(_read_readings(args.input))
    except (OSError, ValueError) as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return 2
    limits = Limits(args.memory_pages, args.deadline_ms, args.fuel)
    instance_host = None
    if args.model:
        # Imported here: NumPy and LiteRT take 28 MB that runs without models keep.
        from agent.nn import ModelSet, nn_host_functions  # noqa: PLC0415

        models = ModelSet.from_files(dict(args.model))
        instance_host = functools.partial(nn_host_functions, models)
    engine = create_engine(args.engine, cache_dir=args.cache_dir)
    try:
        compiled = engine.compile(wasm, args.wasm.stem)
        if "_start" in compiled.info.exported_functions:
            for message in run_command(compiled, readings, limits=limits):
                _print(message.to_json())
            return 0
        module = ReactorModule(
            compiled,
            module_config,
            limits=limits,
            instance_host=instance_host,
        )
        try:
            for reading in readings:
                for message in module.on_reading(reading):
                    _print(message.to_json())
        finally:
            module.close()
        compiled.close()
    finally:
        engine.close()
    return 0


def _read_readings(path: Path) -> Iterator[Reading]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Reading.from_json(parse_json(line))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from err


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")


def _config_show(args: argparse.Namespace) -> int:
    config = load_config(args.path)
    print(config.model_dump_json(indent=2))
    return 0
