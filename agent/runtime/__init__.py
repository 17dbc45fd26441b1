"""The running agent: the supervisor, module hosts, the pipeline from devices to MQTT."""

from agent.runtime._agent import Agent
from agent.runtime._cli import add_run_command, serve
from agent.runtime._host import ModuleHost
from agent.runtime._lifecycle import run_until_stopped
from agent.runtime._pipeline import RAW, Outcome, Pipeline, Route, Sink
from agent.runtime._versions import ModuleVersions

__all__ = [
    "RAW",
    "Agent",
    "ModuleHost",
    "ModuleVersions",
    "Outcome",
    "Pipeline",
    "Route",
    "Sink",
    "add_run_command",
    "run_until_stopped",
    "serve",
]
