"""Polling Modbus devices (TCP, RTU, RTU over TCP) through declarative register maps."""

from agent.modbus._codec import RawValue, decode, encode
from agent.modbus._plan import ReadBlock, plan_reads
from agent.modbus._pool import DevicePool, OnReading
from agent.modbus._probe import probe_device

__all__ = [
    "DevicePool",
    "OnReading",
    "RawValue",
    "ReadBlock",
    "decode",
    "encode",
    "plan_reads",
    "probe_device",
]
