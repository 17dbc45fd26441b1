"""Building aiomqtt clients from `MqttConfig`, and probing a broker with one CONNECT.

One place knows how the config's protocol, credentials and TLS become client
arguments, so the link, the watcher and `edge-agent check` connect the same way.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any, Self

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.errors import BrokerUnreachable

# MQTT 3.1.1 CONNACK return codes and MQTT 5 reason codes that mean "who are you?".
_AUTH_CODES_V311 = frozenset({4, 5})
_AUTH_CODES_V5 = frozenset({0x86, 0x87, 0x8C})


class _HungUp(aiomqtt.MqttError):
    """The broker closed the connection after the CONNECT, without a CONNACK."""


class _Client(aiomqtt.Client):
    """aiomqtt's client, with two gaps of its connect closed (private to aiomqtt and
    paho, whose majors are pinned):

    - a broker that closes the connection before its CONNACK (not MQTT on that port,
      TLS expected, a refusal without CONNACK) fails the connect at once; aiomqtt
      ignores that disconnect and waits out its whole timeout, then says "timed out";
    - a connect that failed after the TCP connect closes its socket, which aiomqtt
      leaves open for the garbage collector.
    """

    async def __aenter__(self) -> Self:
        try:
            return await super().__aenter__()
        except aiomqtt.MqttReentrantError:
            raise  # connected already, and staying so
        except BaseException:
            self._client._sock_close()
            raise

    def _on_disconnect(self, *args: Any, **kwargs: Any) -> None:
        if not self._connected.done():
            self._connected.set_exception(
                _HungUp("the broker closed the connection before its CONNACK")
            )
            return
        super()._on_disconnect(*args, **kwargs)


def new_client(config: MqttConfig, identifier: str, **extra: Any) -> aiomqtt.Client:
    """A client for the configured broker, protocol, credentials and TLS; `extra` adds
    aiomqtt arguments (will, session, inflight) or overrides defaults (timeout)."""
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
    options.update(extra)
    return _Client(config.host, config.broker_port, **options)


async def probe_broker(config: MqttConfig, timeout_s: float) -> None:
    """Connect once and disconnect; raises `BrokerUnreachable` saying how it failed.

    The client id is a fresh one, never the node's: a broker drops the older of two
    sessions with one id, and the running agent's must survive a check.
    """
    broker = f"{config.host}:{config.broker_port}"
    client = new_client(config, f"edge-agent-check-{uuid.uuid4().hex[:8]}", timeout=timeout_s)
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


def _is_auth_code(rc: int | ReasonCode | None) -> bool:
    if isinstance(rc, ReasonCode):
        return rc.value in _AUTH_CODES_V5
    return rc in _AUTH_CODES_V311
