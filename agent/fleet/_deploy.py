"""`fleet deploy` and `fleet rollout status|resume|abort`: starting, showing and driving a
staged rollout from its retained document.

Each command reads the group's rollout document and the fleet in one retained read, then
hands the `Rollout` to the driver; a rollout is never driven from anything but its
document, so another process on another machine can take it over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from agent.config import MqttConfig
from agent.errors import BrokerUnreachable, RolloutError
from agent.fleet._documents import desired_topic, rollout_topic
from agent.fleet._driver import STALE_AFTER_S, drive, watched_topics
from agent.fleet._edit import Signer
from agent.fleet._exits import (
    EXIT_ABORTED,
    EXIT_ACTIVE,
    EXIT_BROKER_UNREACHABLE,
    EXIT_NOT_OK,
    EXIT_NOTHING_THERE,
    EXIT_OK,
)
from agent.fleet._progress import RolloutDocument, parse_rollout
from agent.fleet._rollout import Rollout, RolloutPlan
from agent.fleet._view import FleetView
from agent.fleet._waves import module_name, wave_sizes
from agent.mqtt import BrokerSession

RECONNECT_PAUSE_S = 1.0
RECONNECT_FOR_S = 120.0

EXIT_CODES = (
    f"Exit codes: {EXIT_OK} done, {EXIT_NOT_OK} halted (or bad input), "
    f"{EXIT_BROKER_UNREACHABLE} broker unreachable, "
    f"{EXIT_NOTHING_THERE} no rollout for the group, {EXIT_ABORTED} aborted, "
    f"{EXIT_ACTIVE} still under way."
)


def add_rollout_commands(sub: Any, command: Callable[[Any], Callable[..., int]]) -> None:
    """Add `deploy` and `rollout` to `fleet`'s subcommands; `command` wraps a handler."""
    deploy = sub.add_parser(
        "deploy",
        help="roll a module version out to a group in waves",
        description="Publishes node documents with the version wave by wave, waits for each "
        "wave to converge and stay healthy for the soak time, halts and puts the wave back "
        "when failures pass --max-failures, and ends with the group document. Progress is "
        f"retained on <prefix>/group/<g>/rollout. {EXIT_CODES}",
    )
    deploy.add_argument("ref", metavar="REF", help="e.g. registry:5000/edge/scale:1.1.0")
    deploy.add_argument("--group", required=True)
    deploy.add_argument("--module", help="the module name (default: REF's last path part)")
    deploy.add_argument(
        "--waves",
        default="1,10%,50%,100%",
        help="cumulative counts or percentages of the members (default 1,10%%,50%%,100%%)",
    )
    deploy.add_argument("--soak", type=float, default=60.0, metavar="S", help="default 60")
    deploy.add_argument("--max-failures", type=int, default=0, metavar="N", help="default 0")
    deploy.add_argument("--wave-timeout", type=float, default=300.0, metavar="S")
    deploy.add_argument(
        "--detach", action="store_true", help="write the rollout and exit: `resume` drives it"
    )
    deploy.set_defaults(handler=command(_deploy))

    rollout = sub.add_parser("rollout", help="a group's rollout").add_subparsers(
        title="rollout commands", metavar="COMMAND"
    )
    for name, handler, text in (
        ("status", _status, "show the rollout document"),
        ("resume", _resume, "drive an interrupted rollout on from its document"),
        ("abort", _abort, "stop and put back every node the rollout changed"),
    ):
        parser = rollout.add_parser(name, help=text, description=f"{text}. {EXIT_CODES}")
        parser.add_argument("--group", required=True)
        parser.set_defaults(handler=command(handler))
        if name == "status":
            parser.add_argument("--json", action="store_true", help="the document as JSON")
        if name == "resume":
            parser.add_argument(
                "--force", action="store_true", help="take over from a driver that looks alive"
            )


def say(line: str) -> None:
    print(line, flush=True)


def exit_code(doc: RolloutDocument) -> int:
    if doc.active:
        return EXIT_ACTIVE
    return {"done": EXIT_OK, "halted": EXIT_NOT_OK, "aborted": EXIT_ABORTED}[doc.phase]


async def _deploy(args: argparse.Namespace, config: MqttConfig) -> int:
    if args.max_failures < 0 or args.soak < 0 or args.wave_timeout <= 0:
        raise RolloutError("--max-failures and --soak are at least 0, --wave-timeout above 0")
    plan = RolloutPlan(
        group=args.group,
        module=args.module or module_name(args.ref),
        ref=args.ref,
        wave_spec=args.waves,
        soak_s=args.soak,
        max_failures=args.max_failures,
        wave_timeout_s=args.wave_timeout,
    )
    wave_sizes(plan.wave_spec, 1)  # a bad spec is refused before the broker is asked
    prefix = config.topic_prefix
    async with BrokerSession(config, timeout_s=args.timeout) as session:
        view = await _read(session, prefix, args.group)
        existing = _document(view, prefix, args.group)
        if existing is not None and existing.active:
            raise RolloutError(
                f"group {args.group!r} has rollout {existing.id} ({existing.module} "
                f"{existing.ref}) {existing.phase}: `fleet rollout resume` or `abort` it first"
            )
        members = view.members(args.group)
        if not members:
            groups = sorted({g for n in view.nodes.values() if n.report for g in n.report.groups})
            raise RolloutError(
                f"no node reports group {args.group!r} on {session.broker} "
                f"({len(view.nodes)} nodes seen; groups: {', '.join(groups) or 'none'})"
            )
        view.desired(desired_topic(prefix, group=args.group))  # refuse a broken group document
        rollout = Rollout.start(plan, members, prefix, now=time.time())
        doc = rollout.doc
        say(
            f"rollout {doc.id}: {doc.module} {doc.ref} to group {doc.group}, "
            f"{len(members)} nodes in waves of {', '.join(map(str, doc.waves))}"
        )
        if args.detach:
            doc.heartbeat = 0.0  # no driver yet: `resume` needs no --force
            await session.publish(rollout_topic(prefix, doc.group), doc.payload())
            say(f"detached: `edge-agent fleet rollout resume --group {doc.group}` drives it")
            return EXIT_OK
        return exit_code(await _drive_on(session, rollout, config, args))


async def _status(args: argparse.Namespace, config: MqttConfig) -> int:
    topic = rollout_topic(config.topic_prefix, args.group)
    async with BrokerSession(config, timeout_s=args.timeout) as session:
        payload = (await session.read_retained([topic])).get(topic)
    if payload is None:
        print(f"edge-agent: no rollout on {topic}", file=sys.stderr)
        return EXIT_NOTHING_THERE
    doc = parse_rollout(topic, payload)
    if args.json:
        sys.stdout.write(json.dumps(doc.model_dump(mode="json"), indent=2) + "\n")
    else:
        print(describe(doc, time.time()))
    return exit_code(doc)


async def _resume(args: argparse.Namespace, config: MqttConfig) -> int:
    return await _take_over(args, config, abort=False)


async def _abort(args: argparse.Namespace, config: MqttConfig) -> int:
    return await _take_over(args, config, abort=True)


async def _take_over(args: argparse.Namespace, config: MqttConfig, *, abort: bool) -> int:
    """Become the rollout's driver: to go on with it, or to put everything back."""
    prefix = config.topic_prefix
    async with BrokerSession(config, timeout_s=args.timeout) as session:
        view = await _read(session, prefix, args.group)
        doc = _document(view, prefix, args.group)
        if doc is None:
            print(f"edge-agent: no rollout on {rollout_topic(prefix, args.group)}", file=sys.stderr)
            return EXIT_NOTHING_THERE
        rollout = Rollout(doc, prefix)
        age = time.time() - doc.heartbeat
        if abort:
            rollout.abort()
        elif not doc.active:
            raise RolloutError(f"rollout {doc.id} is {doc.phase}: nothing to resume")
        elif age < STALE_AFTER_S and not args.force:
            raise RolloutError(
                f"rollout {doc.id} is driven by {doc.owner} (heartbeat {age:.0f} s ago); "
                "--force takes it over"
            )
        doc.take(time.time())
        say(f"rollout {doc.id}: {'aborting' if abort else 'resuming'} ({describe_phase(doc)})")
        return exit_code(await _drive_on(session, rollout, config, args))


async def _drive_on(
    session: BrokerSession, rollout: Rollout, config: MqttConfig, args: argparse.Namespace
) -> RolloutDocument:
    """Drive the rollout; when the broker goes away, connect again (any endpoint) and go
    on from the document in hand, for up to `RECONNECT_FOR_S` without a broker."""
    signer = Signer.from_file(args.key)
    async with contextlib.AsyncExitStack() as stack:
        while True:
            try:
                return await drive(session, rollout, signer, say=say)
            except BrokerUnreachable as err:
                say(f"  lost the broker ({err}); connecting again")
                lost = time.monotonic()
            while True:
                await asyncio.sleep(RECONNECT_PAUSE_S)
                try:
                    session = await stack.enter_async_context(
                        BrokerSession(config, timeout_s=args.timeout)
                    )
                    break
                except BrokerUnreachable:
                    if time.monotonic() - lost > RECONNECT_FOR_S:
                        raise


async def _read(session: BrokerSession, prefix: str, group: str) -> FleetView:
    view = FleetView(prefix)
    for item in (await session.read_retained(watched_topics(prefix, group))).items():
        view.update(*item)
    return view


def _document(view: FleetView, prefix: str, group: str) -> RolloutDocument | None:
    payload = view.rollouts.get(group)
    return parse_rollout(rollout_topic(prefix, group), payload) if payload else None


def describe_phase(doc: RolloutDocument) -> str:
    if doc.phase in ("deploying", "soaking", "halting"):
        return f"{doc.phase} wave {doc.wave + 1}/{len(doc.waves)}"
    return doc.phase


def describe(doc: RolloutDocument, now: float) -> str:
    """The document for people: what, where it stands, each wave's nodes, why it failed."""
    lines = [
        f"rollout {doc.id}: {doc.module} {doc.ref} to group {doc.group}",
        f"  phase: {describe_phase(doc)}"
        + (f", soak ends in {doc.soak_until - now:.0f} s" if doc.soak_until else ""),
        f"  digest: {doc.digest or 'not yet known'}",
        f"  failures: {doc.failures} (at most {doc.max_failures} allowed)",
        f"  waves: {doc.wave_spec} -> {', '.join(map(str, doc.waves))} "
        f"(soak {doc.soak_s:g} s, timeout {doc.wave_timeout_s:g} s)",
        f"  driver: {doc.owner}, "
        + (f"heartbeat {now - doc.heartbeat:.0f} s ago" if doc.heartbeat else "not started"),
    ]
    for wave in range(len(doc.waves)):
        cells = [
            f"{n} {p.state}" + (f" ({p.reason})" if p.reason else "")
            for n in doc.wave_nodes(wave)
            for p in (doc.nodes[n],)
        ]
        lines.append(f"  wave {wave + 1}: " + "; ".join(cells))
    lines += [f"  - {reason}" for reason in doc.reasons]
    return "\n".join(lines)
