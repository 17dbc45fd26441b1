"""The demo: the whole product on one machine, with a live terminal view.

Only the command is public; `_run` (pump, agent, view), `_setup` (demo key, signed
layouts) and `_view` load when the demo runs.
"""

from agent.demo._command import add_demo_command

__all__ = ["add_demo_command"]
