"""The demo: the whole product on one machine, with a live terminal view."""

from agent.demo._view import DemoView

__all__ = ["DemoView"]
