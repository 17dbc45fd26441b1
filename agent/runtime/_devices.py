"""All of the agent's devices behind one face: the Modbus pool and the OPC UA pool.

The agent starts, stops, asks the status of and writes to `Devices`; which protocol a
device speaks is the config's business and each pool's, not the runtime's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.modbus import DevicePool, OnReading, RawValue
from agent.status import DeviceStatus

if TYPE_CHECKING:
    from agent.opcua import OpcuaPool


class Devices:
    """The Modbus and OPC UA devices of one config, running while entered (`async with`)."""

    def __init__(self, modbus: DevicePool, opcua: OpcuaPool | None) -> None:
        self.modbus = modbus
        self.opcua = opcua
        """None without OPC UA devices: asyncua (about 20 MB) is then never loaded."""

    @classmethod
    def create(
        cls, config: AgentConfig, on_reading: OnReading, *, seqs: Mapping[str, int]
    ) -> Devices:
        """Both pools; `seqs` gives each device's first sequence number (the journal's)."""
        opcua = None
        if config.opcua_devices:
            from agent.opcua import OpcuaPool  # noqa: PLC0415 (asyncua only where used)

            opcua = OpcuaPool.create(config.opcua_devices, on_reading, seqs=seqs)
        return cls(DevicePool.create(config.modbus_devices, on_reading, seqs=seqs), opcua)

    async def __aenter__(self) -> Devices:
        await self.modbus.__aenter__()
        try:
            if self.opcua is not None:
                await self.opcua.__aenter__()
        except BaseException:
            await self.modbus.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.opcua is not None:
                await self.opcua.close()
        finally:
            await self.modbus.close()

    def status(self) -> tuple[DeviceStatus, ...]:
        return self.modbus.status() + (() if self.opcua is None else self.opcua.status())

    async def write(self, device: str, point: str, value: RawValue) -> RawValue:
        """Write to a Modbus register or an OPC UA point and read it back; see
        `DevicePool.write` and `OpcuaPool.write`."""
        if self.opcua is not None and device in self.opcua:
            return await self.opcua.write(device, point, value)
        return await self.modbus.write(device, point, value)
