"""Simulated Modbus devices: the demo's pump and the test suite's peers.

A fake where the fake is the product: `SimServer` serves `DeviceImage`s over TCP, RTU
over TCP or a serial port; `PumpDevice` is a pump model behind an image laid out as
`config/devices/pump.toml` describes. `python -m agent.sim.pump --port N` runs one.
"""

from agent.sim._image import DeviceImage, Fault
from agent.sim._pump import FAULTS, FaultKind, PumpDevice, PumpModel
from agent.sim._server import SimServer, Transport

__all__ = [
    "FAULTS",
    "DeviceImage",
    "Fault",
    "FaultKind",
    "PumpDevice",
    "PumpModel",
    "SimServer",
    "Transport",
]
