"""`edge-agent command sign`: prints a signed command for `mosquitto_pub -m`.

The key is a PEM ECDSA P-256 private key (`openssl ecparam -name prime256v1 -genkey`
or PKCS#8); an encrypted one takes its password from $EDGE_AGENT_KEY_PASSWORD.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path
from typing import Any

from agent._json import parse_json
from agent.commands._signing import sign_request
from agent.errors import ConfigError


def add_command_commands(commands: Any) -> None:
    """Add `command sign` to the CLI's subcommands (an argparse `_SubParsersAction`)."""
    group = commands.add_parser("command", help="MQTT commands").add_subparsers(
        title="command commands", metavar="COMMAND"
    )
    sign = group.add_parser(
        "sign",
        help="sign a command for a node that requires signatures",
        description="Prints the request JSON with ts, nonce and sig added, for the topic "
        "it will be published on (the signature covers the topic).",
    )
    sign.add_argument("--key", type=Path, required=True, metavar="KEY.pem")
    sign.add_argument("--topic", required=True, help="e.g. edge/gateway-17/cmd/module.list")
    sign.add_argument(
        "--args", type=_json_object, default={}, metavar="JSON", help="the command's args"
    )
    sign.add_argument("--id", default=None, help="request id (default: a new UUID)")
    sign.set_defaults(handler=_sign)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = parse_json(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected a JSON object such as {"name": "scale"}')
    return value


def _sign(args: argparse.Namespace) -> int:
    try:
        key_pem = args.key.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the key {args.key}: {err}") from err
    password = os.environ.get("EDGE_AGENT_KEY_PASSWORD")
    request = {"id": args.id or str(uuid.uuid4()), "args": args.args}
    signed = sign_request(
        key_pem, args.topic, request, password=password.encode() if password else None
    )
    print(json.dumps(signed, separators=(",", ":")))
    return 0
