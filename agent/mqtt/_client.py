"""Building aiomqtt clients from `MqttConfig`, and probing brokers with one CONNECT each.

One place knows how the config's protocol, credentials and TLS become client
arguments, so the link, the watcher, the Sparkplug session and `edge-agent check`
connect the same way.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Sequence
from typing import Any, Self

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.errors import BrokerUnreachable
from agent.mqtt._endpoints import describe

# MQTT 3.1.1 CONNACK return codes and MQTT 5 reason codes that mean "who are you?".
_AUTH_CODES_V311 = frozenset({4, 5})
_AUTH_CODES_V5 = frozenset({0x86, 0x87, 0x8C})


class SubscriptionRefused(aiomqtt.MqttError):
    """The broker's SUBACK refused a filter: an ACL, or a filter it cannot serve (NATS
    refuses topics with a `.`, so Sparkplug's `spBv1.0/...`)."""


class _HungUp(aiomqtt.MqttError):
    """The broker closed the connection after the CONNECT, without a CONNACK."""


class _Client(aiomqtt.Client):
    """aiomqtt's client, with three gaps closed (private to aiomqtt and paho, whose
    majors are pinned):

    - a broker that closes the connection before its CONNACK (not MQTT on that port,
      TLS expected, a refusal without CONNACK) fails the connect at once; aiomqtt
      ignores that disconnect and waits out its whole timeout, then says "timed out";
    - one that closes it right after its CONNACK fails the connect too: aiomqtt
      replaces the lost connection's error with a fresh future once connected, so the
      client would say connected with no connection, and asyncio would log "Future
      exception was never retrieved" (a cluster's broker node does this as it dies);
    - a connect that failed after the TCP connect closes its socket, which aiomqtt
      leaves open for the garbage collector.
    """

    async def __aenter__(self) -> Self:
        try:
            await super().__aenter__()
            if not self._client.is_connected():
                raise _HungUp("the broker closed the connection right after its CONNACK")
        except aiomqtt.MqttReentrantError:
            raise  # connected already, and staying so
        except BaseException:
            self._client._sock_close()
            raise
        return self

    def _on_disconnect(self, *args: Any, **kwargs: Any) -> None:
        if not self._connected.done():
            self._connected.set_exception(
                _HungUp("the broker closed the connection before its CONNACK")
            )
            return
        super()._on_disconnect(*args, **kwargs)
        lost = self._disconnected
        if lost.done() and not lost.cancelled():
            # Marked retrieved: whoever awaits it still gets the error, and when aiomqtt
            # drops it (lost while connecting) asyncio has nothing to log.
            lost.exception()


def new_client(
    config: MqttConfig,
    identifier: str,
    *,
    endpoint: tuple[str, int] | None = None,
    clean: bool = False,
    **extra: Any,
) -> aiomqtt.Client:
    """A client for `endpoint` (the first of `config.endpoints` unless given) with the
    configured protocol, credentials and TLS. `clean` starts without the broker's session
    for this id, for a client whose own store is what survives it; `extra` adds aiomqtt
    arguments (will, inflight) or overrides defaults (timeout)."""
    v5 = config.protocol == "5"
    options: dict[str, Any] = {
        "identifier": identifier,
        "protocol": aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        "username": config.username,
        "password": config.secret,
        "keepalive": config.keepalive,
        "tls_context": config.tls.context if config.tls is not None else None,
        "timeout": config.connect_timeout_s,
    }
    if clean:
        options["clean_session"] = None if v5 else True
        options["clean_start"] = True if v5 else MQTT_CLEAN_START_FIRST_ONLY
    options.update(extra)
    host, port = endpoint or config.endpoints[0]
    return _Client(host, port, **options)


async def probe_brokers(
    config: MqttConfig, timeout_s: float
) -> list[tuple[str, BrokerUnreachable | None]]:
    """Every endpoint at once: `host:port` and how it failed (None: it accepted)."""

    async def probe(endpoint: tuple[str, int]) -> BrokerUnreachable | None:
        try:
            await probe_broker(config, timeout_s, endpoint=endpoint)
        except BrokerUnreachable as err:
            return err
        return None

    results = await asyncio.gather(*(probe(e) for e in config.endpoints))
    return [(describe(e), r) for e, r in zip(config.endpoints, results, strict=True)]


async def probe_broker(
    config: MqttConfig, timeout_s: float, *, endpoint: tuple[str, int] | None = None
) -> None:
    """Connect once to `endpoint` (the first unless given) and disconnect; raises
    `BrokerUnreachable` saying how it failed.

    The client id is a fresh one, never the node's: a broker drops the older of two
    sessions with one id, and the running agent's must survive a check.
    """
    endpoint = endpoint or config.endpoints[0]
    broker = describe(endpoint)
    client = new_client(
        config, f"edge-agent-check-{uuid.uuid4().hex[:8]}", endpoint=endpoint, timeout=timeout_s
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                pass
    except TimeoutError as err:
        raise BrokerUnreachable(broker, "timeout", f"no CONNACK within {timeout_s:g} s") from err
    except _HungUp as err:
        raise BrokerUnreachable(broker, "refused", str(err)) from err
    except aiomqtt.MqttCodeError as err:
        kind = "auth" if _is_auth_code(err.rc) else "refused"
        raise BrokerUnreachable(broker, kind, f"refused the connection: {err}") from err
    except aiomqtt.MqttError as err:
        # aiomqtt raises the socket's OSError as text `from None`; the cause is the context.
        cause = err.__context__
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            raise BrokerUnreachable(broker, "tls", f"TLS handshake failed: {cause}") from err
        if isinstance(cause, ConnectionRefusedError):
            raise BrokerUnreachable(broker, "unreachable", "connection refused") from err
        if isinstance(cause, TimeoutError) or "timed out" in str(err):
            raise BrokerUnreachable(broker, "timeout", f"no answer within {timeout_s:g} s") from err
        raise BrokerUnreachable(broker, "unreachable", str(err) or type(err).__name__) from err


async def subscribe(client: aiomqtt.Client, filters: Sequence[str], qos: int) -> None:
    """Subscribe to `filters`; raises `SubscriptionRefused`, naming them, for those the
    broker refused, which would otherwise never deliver a message and never say why."""
    granted = await client.subscribe([(f, qos) for f in filters])
    failed = refused(filters, granted)
    if failed:
        raise SubscriptionRefused(f"the broker refused the subscription to {', '.join(failed)}")


def refused(filters: Sequence[str], granted: Sequence[int | ReasonCode]) -> list[str]:
    """The filters a SUBACK refused: 0x80 in MQTT 3.1.1, a reason code of 0x80 or more in
    MQTT 5; all of them when it does not answer each (a broken broker)."""
    if len(granted) != len(filters):
        return list(filters)
    return [
        f
        for f, code in zip(filters, granted, strict=True)
        if (code.is_failure if isinstance(code, ReasonCode) else code >= 0x80)
    ]


def _is_auth_code(rc: int | ReasonCode | None) -> bool:
    if isinstance(rc, ReasonCode):
        return rc.value in _AUTH_CODES_V5
    return rc in _AUTH_CODES_V311
