"""`edge-agent fleet`: the operator's tool, from any machine that reaches the broker.

This module owns the argument parser, how the tool reaches the broker (an agent config's
`[mqtt]` section, or `--broker`), `fleet status` and `fleet desired`; the rollout
commands are in `_deploy`. Every command reads what it needs in one retained read.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent._json import parse_json
from agent.config import MqttConfig
from agent.errors import BrokerUnreachable, DesiredStateError
from agent.fleet import _deploy
from agent.fleet._documents import (
    DesiredDocument,
    DesiredModule,
    desired_topic,
    report_topic,
    status_topic,
)
from agent.fleet._edit import Edit, Signer
from agent.fleet._exits import EXIT_BROKER_UNREACHABLE, EXIT_NOT_OK, EXIT_NOTHING_THERE, EXIT_OK
from agent.fleet._status import render, rows
from agent.fleet._view import FleetView
from agent.mqtt import BrokerSession
from agent.validation import read_toml, validated

Handler = Callable[[argparse.Namespace, MqttConfig], Coroutine[Any, Any, int]]


def add_fleet_command(commands: Any) -> None:
    """Add `fleet` to the CLI's subcommands (an argparse `_SubParsersAction`)."""
    fleet = commands.add_parser(
        "fleet",
        help="a fleet's status, desired state and staged rollouts, over the broker",
        description="Reads the nodes' retained status and reports, edits the retained "
        "desired-state documents of groups and nodes, and rolls a module version out in "
        "waves. Exit code 3: the broker cannot be reached.",
    )
    fleet.add_argument(
        "--config",
        type=Path,
        metavar="AGENT.toml",
        help="reach the broker as this agent config's [mqtt] section says (hosts, "
        "credentials, TLS, topic prefix)",
    )
    fleet.add_argument(
        "--broker",
        action="append",
        metavar="HOST:PORT",
        help="a plain broker; repeat for the nodes of a cluster (default: localhost:1883)",
    )
    fleet.add_argument("--prefix", help="the topic prefix (default: the config's, or edge)")
    fleet.add_argument("--protocol", choices=["3.1.1", "5"], help="MQTT version (default: 5)")
    fleet.add_argument(
        "--key",
        type=Path,
        metavar="SIGNING.pem",
        help="sign desired-state documents with this key (password: $EDGE_AGENT_KEY_PASSWORD)",
    )
    fleet.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="broker answers (default 10)"
    )
    sub = fleet.add_subparsers(title="fleet commands", metavar="COMMAND")

    status = sub.add_parser(
        "status",
        help="every node's status in one table",
        description="One row per node from its retained status and report. Exit codes: 0 "
        "every node listed is online, healthy and converged; 1 one is not; 3 broker "
        "unreachable; 4 no node found.",
    )
    status.add_argument("--group", help="only the nodes whose report lists this group")
    status.add_argument("--json", action="store_true", help="a JSON list of objects")
    status.set_defaults(handler=_command(_status))

    desired = sub.add_parser("desired", help="a group's or node's desired state").add_subparsers(
        title="desired commands", metavar="COMMAND"
    )
    show = desired.add_parser("show", help="print the retained document (exit 4: none)")
    edit = desired.add_parser(
        "set",
        help="add, replace or remove one module entry",
        description="Replaces (or adds) the entry named --module and publishes the document "
        "retained with the next revision, signed with --key; --absent says the module must "
        "not run (nodes remove it); --remove drops an entry (nodes leave the module as it is).",
    )
    clear = desired.add_parser("clear", help="publish an empty retained payload")
    for parser in (show, edit, clear):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--group")
        target.add_argument("--node")
    entry = edit.add_mutually_exclusive_group(required=True)
    entry.add_argument("--module", metavar="NAME")
    entry.add_argument("--absent", metavar="NAME", help="the module must not run: removed")
    entry.add_argument("--remove", metavar="NAME", help="drop this module's entry")
    edit.add_argument("--ref", help="the registry reference (with --module)")
    edit.add_argument("--digest", help="pin the version: sha256:...")
    edit.add_argument(
        "--config",
        dest="module_config",
        metavar="JSON",
        help="replaces the module's config table: a JSON object",
    )
    show.set_defaults(handler=_command(_desired_show))
    edit.set_defaults(handler=_command(_desired_set))
    clear.set_defaults(handler=_command(_desired_clear))

    _deploy.add_rollout_commands(sub, _command)


def mqtt_config(args: argparse.Namespace) -> MqttConfig:
    """The broker as the options say: the config file's `[mqtt]`, `--broker` over its hosts."""
    raw: dict[str, Any] = {}
    where, context = "--broker", None
    if args.config is not None:
        section = read_toml(args.config, "config file").get("mqtt", {})
        raw = dict(section) if isinstance(section, dict) else {"(mqtt)": section}
        where, context = f"{args.config}: [mqtt]", {"base_dir": args.config.parent}
        raw.pop("embedded", None)  # the tool is a client of that broker, never runs one
    if args.broker:
        raw.pop("host", None)
        raw["hosts"] = args.broker
    if args.prefix is not None:
        raw["topic_prefix"] = args.prefix
    if args.protocol is not None:
        raw["protocol"] = args.protocol
    return validated(MqttConfig, raw, where, context=context)


def _command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """A handler as `edge-agent` calls it: broker options read, the loop run, an
    unreachable broker its own exit code."""

    def run(args: argparse.Namespace) -> int:
        config = mqtt_config(args)
        try:
            return asyncio.run(handler(args, config))
        except BrokerUnreachable as err:
            print(f"edge-agent: broker {err}", file=sys.stderr)
            return EXIT_BROKER_UNREACHABLE

    return run


async def _status(args: argparse.Namespace, config: MqttConfig) -> int:
    prefix = config.topic_prefix
    async with BrokerSession(config, timeout_s=args.timeout) as session:
        retained = await session.read_retained(
            [status_topic(prefix, "+"), report_topic(prefix, "+")]
        )
    view = FleetView(prefix)
    for item in retained.items():
        view.update(*item)
    table = rows(view, args.group)
    if args.json:
        sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in table], indent=2) + "\n")
    elif table:
        print(render(table, time.time()))
    if not table:
        where = f" in group {args.group!r}" if args.group else ""
        print(f"edge-agent: no node found{where} on {session.broker}", file=sys.stderr)
        return EXIT_NOTHING_THERE
    return EXIT_OK if all(r.ok for r in table) else EXIT_NOT_OK


async def _desired_show(args: argparse.Namespace, config: MqttConfig) -> int:
    topic = _target(args, config)
    async with BrokerSession(config, timeout_s=args.timeout) as session:
        payload = (await session.read_retained([topic])).get(topic)
    view = FleetView(config.topic_prefix)
    if payload is None:
        print(f"edge-agent: no desired-state document on {topic}", file=sys.stderr)
        return EXIT_NOTHING_THERE
    view.update(topic, payload)
    view.desired(topic)  # raises what is wrong with it
    sys.stdout.write(json.dumps(parse_json(payload), indent=2) + "\n")
    return EXIT_OK


async def _desired_set(args: argparse.Namespace, config: MqttConfig) -> int:
    topic = _target(args, config)
    if args.module is not None:
        if args.ref is None:
            raise DesiredStateError("--module needs --ref: the registry reference to run")
        fields: dict[str, Any] = {"name": args.module, "ref": args.ref, "digest": args.digest}
        if args.module_config is not None:
            try:
                fields["config"] = parse_json(args.module_config)
            except ValueError as err:
                raise DesiredStateError(f"--config is not JSON: {err}") from err
        module = validated(DesiredModule, fields, "--module", error=DesiredStateError)
        edit = Edit(topic, module.name, module)
    elif args.absent is not None:
        if (args.ref, args.digest, args.module_config) != (None, None, None):
            raise DesiredStateError("--absent takes no --ref, --digest or --config")
        fields = {"name": args.absent, "absent": True}
        module = validated(DesiredModule, fields, "--absent", error=DesiredStateError)
        edit = Edit(topic, module.name, module)
    else:
        edit = Edit(topic, args.remove, None)
    async with BrokerSession(config, timeout_s=args.timeout) as session:
        view = FleetView(config.topic_prefix)
        for item in (await session.read_retained([topic])).items():
            view.update(*item)
        current = view.desired(topic)
        if args.remove is not None and all(m.name != args.remove for m in _modules(current)):
            print(f"edge-agent: {topic} has no entry {args.remove!r}", file=sys.stderr)
            return EXIT_NOTHING_THERE
        if edit.satisfied(current):
            _deploy.say(f"{topic}: unchanged")
            return EXIT_OK
        payload = edit.payload(current, Signer.from_file(args.key), time.time())
        await session.publish(topic, payload)
    view.update(topic, payload)
    document = view.desired(topic)
    names = ", ".join(m.name for m in _modules(document)) or "no modules"
    _deploy.say(f"{topic}: revision {document.revision if document else '-'}: {names}")
    return EXIT_OK


async def _desired_clear(args: argparse.Namespace, config: MqttConfig) -> int:
    topic = _target(args, config)
    async with BrokerSession(config, timeout_s=args.timeout) as session:
        await session.publish(topic, b"")
    _deploy.say(f"{topic}: cleared")
    return EXIT_OK


def _target(args: argparse.Namespace, config: MqttConfig) -> str:
    return desired_topic(config.topic_prefix, node=args.node, group=args.group)


def _modules(document: DesiredDocument | None) -> tuple[DesiredModule, ...]:
    return document.modules if document is not None else ()
