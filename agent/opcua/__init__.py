"""OPC UA devices: subscriptions to a server's variables through declarative node maps.

Readings, status and writes look like the Modbus pool's, so the rest of the agent does
not tell the two apart. Only `agent.opcua._session` imports asyncua.
"""

from agent.opcua._points import PointValue
from agent.opcua._pool import OnReading, OpcuaPool
from agent.opcua._session import probe

__all__ = ["OnReading", "OpcuaPool", "PointValue", "probe"]
