"""Run the simulated pump as an OPC UA server: `python -m agent.sim.opcua_pump --port 4840`.

The same pump model as `python -m agent.sim.pump`, its values as variables under ns=2
(namespace `urn:edge-agent:sim:pump`) laid out as `config/devices/pump-opcua.toml`
describes, served by asyncua's server without security. `Run`, `SpeedSetpoint` and
`TemperatureLimit` are writable and are the model's inputs. Runs until interrupted.

The only module of `agent.sim` that imports asyncua: nothing else in the package
loads it, so the Modbus simulator and the demo pay for it only when they serve OPC UA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server

from agent.sim._pump import PumpModel

log = logging.getLogger(__name__)

NAMESPACE = "urn:edge-agent:sim:pump"
MODEL_NAME = "P-200 pump"

_V = ua.VariantType
_OUTPUTS: dict[str, tuple[ua.VariantType, Callable[[PumpModel], object]]] = {
    "Temperature": (_V.Double, lambda m: m.temperature),
    "Vibration": (_V.Double, lambda m: m.vibration),
    "Pressure": (_V.Double, lambda m: m.pressure),
    "Flow": (_V.Double, lambda m: m.flow),
    "Rpm": (_V.UInt16, lambda m: round(m.rpm)),
    "Running": (_V.Boolean, lambda m: m.running),
    "FaultOverheat": (_V.Boolean, lambda m: m.visible_fault == "overheat"),
    "FaultBearing": (_V.Boolean, lambda m: m.visible_fault == "bearing"),
    "FaultPressure": (_V.Boolean, lambda m: m.visible_fault == "pressure_drop"),
    "Alarm": (_V.Boolean, lambda m: m.visible_fault is not None),
    "Model": (_V.String, lambda m: MODEL_NAME),
    "Runtime": (_V.UInt64, lambda m: int(m.runtime_s)),
}
"""The pump's readings: variable name (`Pump.<name>`), type, and its value from the model."""
_INPUTS: dict[str, ua.VariantType] = {
    "Run": _V.Boolean,
    "SpeedSetpoint": _V.UInt16,
    "TemperatureLimit": _V.Float,
}
"""The writable variables; a client's write reaches the model at the next step."""


class OpcuaPump:
    """A pump model behind an OPC UA server, stepped every `period_s`; `async with`
    serves it. `port=0` picks a free port; `endpoint` names the one in use."""

    def __init__(
        self,
        model: PumpModel | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 4840,
        path: str = "/pump/",
        period_s: float = 0.25,
    ) -> None:
        self.model = model or PumpModel()
        self.host = host
        self.port = port
        self.path = path
        self.period_s = period_s
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self._sent: dict[str, object] = {}
        self._stepper: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-agent simulated pump")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        index = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects
        pump = await objects.add_object(ua.NodeId.from_string(f"ns={index};s=Pump"), "Pump")
        m = self.model
        initial = {
            **{name: (kind, get(m)) for name, (kind, get) in _OUTPUTS.items()},
            "Run": (_V.Boolean, m.running),
            "SpeedSetpoint": (_V.UInt16, round(m.setpoint_rpm)),
            "TemperatureLimit": (_V.Float, m.temperature_limit_c),
        }
        for name, (kind, value) in initial.items():
            nodeid = ua.NodeId.from_string(f"ns={index};s=Pump.{name}")
            node = await pump.add_variable(nodeid, name, value, kind)
            if name in _INPUTS:
                await node.set_writable()
            self._nodes[name] = node
            self._sent[name] = value
        await server.start()
        self._server = server
        if server.bserver is not None:
            self.port = server.bserver.port  # the one picked for port 0
        self._stepper = asyncio.create_task(self._run(), name="simulated OPC UA pump")

    async def stop(self) -> None:
        if self._stepper is not None:
            self._stepper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stepper
            self._stepper = None
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def __aenter__(self) -> OpcuaPump:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        clock = time.monotonic()
        while True:
            await asyncio.sleep(self.period_s)
            now = time.monotonic()
            try:
                await self._step(now - clock)
            except Exception:  # the server goes on serving the last values, visibly stale
                log.exception("simulated OPC UA pump: step failed")
            clock = now

    async def _step(self, seconds: float) -> None:
        assert self._server is not None
        server, m = self._server, self.model
        inputs = {}
        for name in _INPUTS:
            data = server.read_attribute_value(self._nodes[name].nodeid)
            inputs[name] = data.Value.Value if data.Value is not None else None
        m.running = bool(inputs["Run"])
        m.setpoint_rpm = float(inputs["SpeedSetpoint"] or 0)
        m.temperature_limit_c = float(inputs["TemperatureLimit"] or 0.0)
        m.advance(seconds)
        for name, (kind, get) in _OUTPUTS.items():
            value = get(m)
            if value != self._sent[name]:  # an unchanged value is no data change
                self._sent[name] = value
                variant = ua.DataValue(ua.Variant(value, kind))
                await server.write_attribute_value(self._nodes[name].nodeid, variant)


async def serve(host: str, port: int, seed: int | None, faults_per_h: float) -> None:
    async with OpcuaPump(PumpModel(seed, faults_per_h), host=host, port=port) as pump:
        print(f"simulated OPC UA pump: {pump.endpoint}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.sim.opcua_pump", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults-per-hour", type=float, default=6.0)
    args = parser.parse_args(argv)
    # asyncua warns that a server without security has none: that is the point here.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.seed, args.faults_per_hour))


if __name__ == "__main__":
    main()
