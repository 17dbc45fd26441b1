"""The OPC UA adapter: one asyncua client session to one server, in the agent's terms.

The only module that imports asyncua. It opens a session with the device's security,
subscribes to the node map's points (sampling interval, deadband filter) and hands out
each publish response's data changes as one batch of `Sample`s; it reads and writes one
point. asyncua's exceptions become the agent's here and nowhere else. It keeps no
state across sessions and never reconnects: the pool owns the retry loop, so a lost
session is always replaced by a new one with a new subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import get_name_and_doc
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from agent.config import NodeSpec, NodeType, OpcuaDeviceConfig
from agent.errors import OpcuaConnectionError, OpcuaError, OpcuaStatusError, OpcuaTimeout
from agent.reading import Quality

log = logging.getLogger("agent.opcua")

VARIANT_TYPES: dict[NodeType, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32,
    "uint32": ua.VariantType.UInt32,
    "int64": ua.VariantType.Int64,
    "uint64": ua.VariantType.UInt64,
    "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
    "string": ua.VariantType.String,
}
_DEADBANDS = {"absolute": ua.DeadbandType.Absolute, "percent": ua.DeadbandType.Percent}
_MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


@dataclass(frozen=True)
class Sample:
    """One point's value as the server reported it."""

    point: str
    value: Any
    """As asyncua decoded it (bool, int, float, str), or None when the server sent none."""
    quality: Quality = "good"
    reason: str | None = None
    """The status code's name when the quality is not good."""


def _sample(point: str, data: ua.DataValue) -> Sample:
    status = data.StatusCode or ua.StatusCode()
    value = data.Value.Value if data.Value is not None else None
    if status.is_good():
        return Sample(point, value)
    quality: Quality = "uncertain" if status.is_uncertain() else "bad"
    return Sample(point, value, quality, status.name)


def _described(status: ua.StatusCode) -> str:
    """A bad status code's name and meaning, with what to do where the code says it."""
    name, doc = get_name_and_doc(status.value)
    hint = next((h for prefix, h in _HINTS if name.startswith(prefix)), "")
    return f"{name} ({doc.rstrip('.')}){hint}"


_HINTS = (
    ("BadCertificate", ": the server does not accept this client's certificate"),
    ("BadNodeIdUnknown", ": the server has no such node"),
)


@contextlib.contextmanager
def _mapped(where: str, doing: str) -> Iterator[None]:
    """asyncua's and the socket's exceptions as the agent's, naming the device."""
    try:
        yield
    except UaStatusCodeError as err:
        status = ua.StatusCode(err.code)
        raise OpcuaStatusError(where, status.name, f"{doing}: {_described(status)}") from err
    except TimeoutError as err:
        raise OpcuaTimeout(where, f"{doing}: no answer in time") from err
    except OSError as err:  # ConnectionError included
        # asyncio words a refused connect as "Connect call failed (...)": say the errno's.
        reason = os.strerror(err.errno) if err.errno else str(err) or type(err).__name__
        raise OpcuaConnectionError(where, f"{doing}: {reason}") from err
    except UaError as err:
        raise OpcuaError(where, f"{doing}: {err}") from err


class Session:
    """A connected session; `close()` ends it (idempotent). Use `open()` to make one."""

    def __init__(self, config: OpcuaDeviceConfig, client: Client) -> None:
        self.config = config
        self.where = f"device {config.name!r}"
        self._client = client
        self._nodes = {p.name: client.get_node(p.node) for p in config.node_map.points}
        self._points = {node.nodeid: name for name, node in self._nodes.items()}
        self._batches: asyncio.Queue[list[Sample] | OpcuaError] = asyncio.Queue()
        self._pending: list[Sample] = []
        self._subscription: Subscription | None = None
        self._closed = False
        client.connection_lost_callback = self._lost

    @classmethod
    async def open(cls, config: OpcuaDeviceConfig) -> Session:
        """Connect and activate a session with the device's security and user; an
        `OpcuaError` naming the device when that fails (nothing is left open)."""
        where = f"device {config.name!r}"
        client = Client(config.endpoint, timeout=config.timeout_s)
        client.name = client.description = "edge-agent"
        if config.application_uri is not None:
            client.application_uri = config.application_uri
        if config.username is not None:
            client.set_user(config.username)
            client.set_password(config.password or "")
        try:
            with _mapped(where, "cannot load the security files"):
                await _secure(client, config)
            with _mapped(where, f"cannot connect to {config.endpoint}"):
                async with asyncio.timeout(config.timeout_s * 2):
                    await client.connect()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise
        return cls(config, client)

    async def _lost(self, err: Exception) -> None:
        reason = str(err) or type(err).__name__
        self._batches.put_nowait(OpcuaConnectionError(self.where, f"session lost: {reason}"))

    async def subscribe(self) -> dict[str, str]:
        """One subscription with a monitored item per point of the map; returns the
        points the server refused to monitor (an unknown node id, a filter it does not
        support), each with why. `OpcuaStatusError` when it refuses every one."""
        points = self.config.node_map.points
        with _mapped(self.where, "cannot subscribe"):
            interval_ms = self.config.node_map.publishing_interval_s * 1000
            sub = await self._client.create_subscription(interval_ms, self)
            self._subscription = sub
            results = await sub.create_monitored_items(
                [self._request(i, p) for i, p in enumerate(points, start=1)]
            )
        # One bad node id must not cost the others their readings: only when none is
        # left is the subscription a failure (the session is retried, like a lost one).
        refused = {
            point.name: f"cannot monitor {point.name} ({point.node}): {_described(result)}"
            for point, result in zip(points, results, strict=True)
            if isinstance(result, ua.StatusCode)
        }
        if len(refused) == len(points):
            code = next(r for r in results if isinstance(r, ua.StatusCode))
            raise OpcuaStatusError(self.where, code.name, "; ".join(refused.values()))
        return refused

    def _request(self, handle: int, point: NodeSpec) -> ua.MonitoredItemCreateRequest:
        params = ua.MonitoringParameters()
        params.ClientHandle = handle
        params.SamplingInterval = self.config.node_map.sampling_s(point) * 1000
        params.QueueSize = 1
        params.DiscardOldest = True
        if point.deadband is not None:
            params.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=_DEADBANDS[point.deadband_type],
                DeadbandValue=point.deadband,
            )
        item = ua.ReadValueId()
        item.NodeId = self._nodes[point.name].nodeid
        item.AttributeId = AttributeIds.Value
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = params
        return request

    # asyncua's handler interface: it calls these from one task per notification, all
    # the tasks of one publish response queued before any runs, so the batch is complete
    # when the consumer, woken by the first, gets to run.

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        point = self._points.get(node.nodeid)
        if point is None or data.monitored_item.Value is None:
            return
        first = not self._pending
        self._pending.append(_sample(point, data.monitored_item.Value))
        if first:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._batches.put_nowait(batch)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        if not status.Status.is_good():  # the server dropped the subscription
            reason = f"subscription ended: {status.Status.name}"
            self._batches.put_nowait(OpcuaConnectionError(self.where, reason))

    async def batch(self) -> list[Sample]:
        """The next publish response's data changes; `OpcuaConnectionError` once the
        session is lost."""
        got = await self._batches.get()
        if isinstance(got, OpcuaError):
            raise got
        return got

    async def read(self, point: NodeSpec) -> Sample:
        with _mapped(self.where, f"cannot read {point.name}"):
            data = await self._nodes[point.name].read_data_value(raise_on_bad_status=False)
        return _sample(point.name, data)

    async def write(self, point: NodeSpec, value: bool | int | float | str) -> None:
        variant = ua.Variant(value, VARIANT_TYPES[point.type])
        with _mapped(self.where, f"cannot write {point.name} as {point.type}"):
            await self._nodes[point.name].write_value(ua.DataValue(variant))

    async def server_state(self) -> str:
        with _mapped(self.where, "cannot read the server's state"):
            state = await self._client.nodes.server_state.read_value()
        try:
            return ua.ServerState(state).name
        except ValueError:  # a state newer than this asyncua knows
            return str(state)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.connection_lost_callback = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self._client.disconnect()
        except Exception as err:  # the server may be gone: there is nothing to end
            log.debug("%s: disconnect: %r", self.where, err)


async def _secure(client: Client, config: OpcuaDeviceConfig) -> None:
    if config.mode is None or config.security_der is None:
        return
    cert, key, server = config.security_der
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        certificate=cert,
        private_key=key,
        server_certificate=server,
        mode=_MODES[config.mode],
    )


async def probe(config: OpcuaDeviceConfig) -> str:
    """Open a session as the agent would, read the server's state and end it; the
    state's name, or an `OpcuaError` that names the device and why."""
    session = await Session.open(config)
    try:
        return await session.server_state()
    finally:
        await session.close()
