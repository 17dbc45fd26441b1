"""The simulated pump over OPC UA: the agent's OPC UA devices subscribe to it through
the shipped node map, write its settings and read them back; the command line serves
it to any client; and the rest of `agent.sim` does not load asyncua.

Nothing is mocked: the server is asyncua's, the client the agent's pool or asyncua's.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from asyncua import Client

from agent.config import OpcuaDeviceConfig, load_node_map, load_register_map
from agent.opcua import OpcuaPool
from agent.sim import PumpModel
from agent.sim.opcua_pump import MODEL_NAME, OpcuaPump

from .brokers import until
from .conftest import REPO
from .test_opcua import Collected

pytestmark = pytest.mark.opcua

DEVICES = REPO / "config" / "devices"


def test_the_node_map_names_the_modbus_pumps_points() -> None:
    node_map = load_node_map(DEVICES / "pump-opcua.toml")
    register_map = load_register_map(DEVICES / "pump.toml")
    registers = {r.name: r.unit for g in register_map.groups for r in g.registers}
    assert {p.name: p.unit for p in node_map.points} == registers


def test_the_agent_subscribes_to_the_pump_and_writes_its_setpoint() -> None:
    async def scenario() -> None:
        model = PumpModel(seed=3, fault_rate_per_h=0)
        async with OpcuaPump(model, port=0, period_s=0.05) as pump:
            config = OpcuaDeviceConfig.model_validate(
                {
                    "name": "pump-1",
                    "transport": "opcua",
                    "endpoint": pump.endpoint,
                    "map": str(DEVICES / "pump-opcua.toml"),
                }
            )
            got = Collected()
            async with OpcuaPool.create([config], got) as pool:
                await until(lambda: len(got.readings) >= 1, 10)
                first = got.readings[0].values
                assert len(first) == 15  # the first publish: every point's current value
                assert first["model"].value == MODEL_NAME
                assert first["speed_setpoint"].value == 1450
                assert first["temperature"].unit == "degC"
                assert 55 < float(first["temperature"].value) < 65
                assert await pool.write("pump-1", "speed_setpoint", 1200) == 1200
                await until(lambda: model.setpoint_rpm == 1200.0, 5)
                assert await pool.write("pump-1", "run", False) is False
                await until(lambda: not model.running, 5)
                # The pump runs down: a later publish says so.
                await until(lambda: False in got.of("running"), 10)

    asyncio.run(scenario())


def test_the_command_prints_its_endpoint_and_serves_the_pump() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.sim.opcua_pump", "--port", "0", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )

    async def read(endpoint: str) -> tuple[str, float, float]:
        async with Client(endpoint) as client:
            name = await client.get_node("ns=2;s=Pump.Model").read_value()
            temperature = client.get_node("ns=2;s=Pump.Temperature")
            before = await temperature.read_value()
            await asyncio.sleep(0.6)  # two of the pump's steps
            return name, before, await temperature.read_value()

    with server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert line.startswith("simulated OPC UA pump: opc.tcp://127.0.0.1:")
            name, before, after = asyncio.run(read(line.split()[-1]))
            assert name == MODEL_NAME
            assert before != after  # the model moves on
        finally:
            server.terminate()


def test_the_modbus_simulator_does_not_load_asyncua() -> None:
    code = "import sys, agent.sim; print('asyncua' in {m.split('.')[0] for m in sys.modules})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
