"""The running agent: module hosts, the pipeline from devices to the outbox."""

from agent.runtime._host import ModuleHost, ModuleStats
from agent.runtime._pipeline import Outcome, Pipeline, Route, Sink

__all__ = ["ModuleHost", "ModuleStats", "Outcome", "Pipeline", "Route", "Sink"]
