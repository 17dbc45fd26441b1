"""The demo: the whole product on one machine, with a live terminal view."""

from agent.demo._run import add_demo_command, run_demo
from agent.demo._setup import prepare
from agent.demo._view import DemoView

__all__ = ["DemoView", "add_demo_command", "prepare", "run_demo"]
