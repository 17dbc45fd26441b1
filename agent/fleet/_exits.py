"""The exit codes of `edge-agent fleet`, one table for every subcommand's --help."""

EXIT_OK = 0
"""Every node listed is fine; the rollout is done; the document was published."""
EXIT_NOT_OK = 1
"""A node is offline, unhealthy or not converged; the rollout halted; a bad input."""
EXIT_BROKER_UNREACHABLE = 3
EXIT_NOTHING_THERE = 4
"""No node found, no document or no rollout on that topic."""
EXIT_ABORTED = 5
EXIT_ACTIVE = 6
"""The rollout is still under way (or was interrupted: `rollout resume` drives it on)."""
