"""Whether a device's connection can be opened: a TCP connect, or opening the serial port.

For `edge-agent check`: it opens and closes, sends no request, and needs no pymodbus,
so the reason it reports is the operating system's (refused, no route, no such port,
permission denied) rather than a library's "cannot connect".
"""

from __future__ import annotations

import asyncio
import errno
import os

from agent.config import DeviceConfig
from agent.errors import ModbusConnectionError, ModbusTimeout


async def probe_device(device: DeviceConfig, timeout_s: float) -> None:
    """Open and close the device's connection; `ModbusTimeout` or `ModbusConnectionError`
    naming the device when that fails."""
    where = f"device {device.name!r}"
    if device.serial is not None:
        _open_serial(device.serial.port, where)
        return
    host, port = device.host or "", device.port
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError as err:
        raise ModbusTimeout(
            where, f"no TCP connection to {host}:{port} within {timeout_s:g} s"
        ) from err
    except OSError as err:
        # asyncio words a refused connect as "Connect call failed (...)": say the errno's.
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise ModbusConnectionError(where, f"cannot connect to {host}:{port}: {reason}") from err
    writer.close()
    await writer.wait_closed()


def _open_serial(port: str, where: str) -> None:
    # Non-blocking, no controlling tty: opening must neither wait for carrier nor
    # make the port this process's terminal.
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as err:
        hint = {
            errno.ENOENT: "no such serial port",
            errno.EACCES: "permission denied (the agent's user needs the group dialout)",
            errno.EBUSY: "the port is in use",
        }.get(err.errno or 0, err.strerror or str(err))
        raise ModbusConnectionError(where, f"cannot open {port}: {hint}") from err
    os.close(fd)
