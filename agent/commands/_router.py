"""The command router: MQTT command messages in, response messages out, transport-free.

The MQTT adapter subscribes to `subscriptions()`, hands every message to `handle()` and
publishes the `Reply` it gets back (to the MQTT 5 response topic with its correlation
data when the request had one, else to `<command topic>/response`). Checks run cheapest
first and a refused command never reaches a handler: size, rate, JSON shape, allow list,
signature, duplicate id, replay (nonce), then the arguments. The JSON is bounded before
it is parsed: at most 32 levels of arrays and objects (`agent._json.MAX_DEPTH`), and no
NaN or Infinity. A duplicate id gets the first answer again; refusals are not cached, so
a refused id can be retried.

Responses: `{"id", "node", "status": "ok", "data", "error": null}` or
`{"id", "node", "status": "error", "data": null, "error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from agent._json import parse_json
from agent._ratelimit import TokenBucket
from agent.commands._responses import ResponseCache
from agent.commands._signing import CommandVerifier, load_public_keys
from agent.commands._table import COMMANDS, ArgsT, Command
from agent.config import CommandsConfig
from agent.errors import AgentError, CommandRejected, ConfigError
from agent.validation import format_errors

log = logging.getLogger(__name__)

Handler = Callable[[ArgsT], Awaitable[Any]]
"""Does the command; returns JSON-ready data (or a pydantic model); raises AgentError."""

REQUEST_FIELDS = frozenset({"id", "args", "ts", "nonce", "sig"})
MAX_ID_LENGTH = 128


@dataclass(frozen=True)
class Reply:
    topic: str
    payload: bytes
    correlation: bytes | None
    """MQTT 5 correlation data to send back unchanged; None for MQTT 3 requests."""


class CommandRouter:
    """Routes `<prefix>/<node>/cmd/<name>`, `<prefix>/group/<group>/cmd/<name>` for each
    of the node's groups and `<prefix>/fleet/cmd/<name>` to handlers."""

    def __init__(
        self,
        config: CommandsConfig,
        *,
        prefix: str,
        node_id: str,
        groups: tuple[str, ...] = (),
        verifier: CommandVerifier | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        unknown = sorted(set(config.allow or ()) - COMMANDS.keys())
        if unknown:
            raise ConfigError(
                f"commands.allow: unknown command(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(COMMANDS))}"
            )
        if config.require_signature and verifier is None:
            verifier = CommandVerifier(load_public_keys(config.trusted_keys), config.max_skew_s)
        self._config = config
        self._node = node_id
        self._roots = {
            f"{prefix}/{node_id}/cmd/",
            f"{prefix}/fleet/cmd/",
            *(f"{prefix}/group/{group}/cmd/" for group in groups),
        }
        self._verifier = verifier if config.require_signature else None
        self._bucket = bucket or TokenBucket(config.rate_per_s, config.burst)
        self._cache = ResponseCache(config.dedupe_size)
        self._handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {}

    def register(self, command: Command[ArgsT], handler: Handler[ArgsT]) -> None:
        if COMMANDS.get(command.name) is not command:
            raise ValueError(f"{command.name!r} is not in the command table")
        self._handlers[command.name] = handler

    def subscriptions(self) -> list[str]:
        """Topic filters to subscribe to; `+` keeps our own `/response` topics out."""
        return [f"{root}+" for root in sorted(self._roots)]

    async def handle(
        self,
        topic: str,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> Reply | None:
        """Answer one message; None when `topic` is not a command topic of this node."""
        name = self._command_name(topic)
        if name is None:
            return None
        reply_to = response_topic or f"{topic}/response"
        request_id: Any = None
        try:
            request = self._parse(payload)
            request_id = request["id"]
            body = await self._run(topic, name, request)
        except CommandRejected as err:
            log.warning("command %s (id %r) refused: %s", topic, request_id, err.reason)
            body = self._error(request_id, err.code, err.reason)
        return Reply(reply_to, body, correlation)

    def _command_name(self, topic: str) -> str | None:
        for root in self._roots:
            if topic.startswith(root):
                name = topic[len(root) :]
                return name if name and "/" not in name else None
        return None

    def _parse(self, payload: bytes) -> dict[str, Any]:
        limit = self._config.max_payload_bytes
        if len(payload) > limit:
            raise CommandRejected("too_large", f"{len(payload)} bytes; the limit is {limit}")
        if not self._bucket.take():
            raise CommandRejected("rate_limited", "too many commands; try again later")
        try:
            request = parse_json(payload)
        except ValueError as err:  # also: nested too deep, NaN, not UTF-8
            raise CommandRejected("malformed", f"not JSON: {err}") from err
        if not isinstance(request, dict):
            raise CommandRejected("malformed", 'expected a JSON object {"id": ..., "args": {...}}')
        request_id = request.get("id")
        if not _valid_id(request_id):
            raise CommandRejected(
                "malformed",
                f"'id' must be a string of 1 to {MAX_ID_LENGTH} characters or an integer",
            )
        extra = sorted(request.keys() - REQUEST_FIELDS)
        if extra:
            raise CommandRejected(
                "malformed",
                f"unknown field(s) {', '.join(extra)}; expected id, args, ts, nonce, sig",
            )
        if not isinstance(request.get("args", {}), dict):
            raise CommandRejected("malformed", "'args' must be a JSON object")
        return request

    async def _run(self, topic: str, name: str, request: dict[str, Any]) -> bytes:
        command = COMMANDS.get(name)
        if command is None:
            raise CommandRejected(
                "unknown_command", f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}"
            )
        allow = self._config.allow
        if allow is not None and name not in allow:
            raise CommandRejected("unauthorized", f"{name!r} is not allowed on this node")
        verifier = self._verifier
        signed = None if verifier is None else verifier.authenticate(topic, request)
        key = (name, request["id"])
        earlier = self._cache.get(key)
        if earlier is not None:
            log.info("command %s id %r is a duplicate: answering again", topic, request["id"])
            return await earlier
        if verifier is not None and signed is not None:
            verifier.claim_nonce(*signed)
        future = self._cache.claim(key)
        try:
            body = await self._dispatch(command, request)
        except BaseException:
            # Cancelled (the agent is stopping): a re-sent request may run it later.
            self._cache.forget(key)
            future.cancel()
            raise
        future.set_result(body)
        return body

    async def _dispatch(self, command: Command[Any], request: dict[str, Any]) -> bytes:
        request_id = request["id"]
        try:
            args = command.args.model_validate(request.get("args", {}))
        except ValidationError as err:
            return self._error(request_id, "invalid_args", format_errors(err))
        handler = self._handlers.get(command.name)
        if handler is None:
            return self._error(request_id, "unavailable", f"{command.name!r} is not available")
        try:
            data = await handler(args)
        except AgentError as err:
            log.warning("command %s (id %r) failed: %s", command.name, request_id, err)
            return self._error(request_id, "failed", str(err))
        except Exception:
            log.exception("command %s (id %r) crashed", command.name, request_id)
            return self._error(request_id, "internal", "the handler failed; see the agent's log")
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        try:
            return self._envelope(request_id, "ok", data, None)
        except (TypeError, ValueError):
            log.exception(
                "command %s (id %r) returned data that is not JSON", command.name, request_id
            )
            return self._error(request_id, "internal", "the handler's answer is not JSON")

    def _error(self, request_id: Any, code: str, message: str) -> bytes:
        return self._envelope(request_id, "error", None, {"code": code, "message": message})

    def _envelope(self, request_id: Any, status: str, data: Any, error: Any) -> bytes:
        doc = {"id": request_id, "node": self._node, "status": status, "data": data, "error": error}
        return json.dumps(doc, separators=(",", ":")).encode()


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH
