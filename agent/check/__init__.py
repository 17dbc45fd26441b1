"""`edge-agent check`: validates a node's config and environment, like `iotedge check`.

Engines, directories, keys, the MQTT broker, Modbus devices, registries and module
references, each checked without changing anything, concurrently and with timeouts.
"""

from agent.check._checks import CheckResult, Verdict, run_checks
from agent.check._cli import add_check_command, render_checks

__all__ = ["CheckResult", "Verdict", "add_check_command", "render_checks", "run_checks"]
