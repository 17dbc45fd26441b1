"""`edge-agent status` for people: the snapshot as rich sections and tables.

Only this module imports rich. Times are shown as ages relative to `now` so an operator
reads "3 s ago", not a Unix timestamp.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.status import StatusSnapshot

_GOOD = {"online", "running", "connected"}
_BAD = {"offline", "failed", "disconnected"}


def render_status(snapshot: StatusSnapshot, console: Console, *, now: float | None = None) -> None:
    now = time.time() if now is None else now
    console.print(_agent(snapshot))
    console.print(_mqtt(snapshot))
    if snapshot.sparkplug is not None:
        console.print(_sparkplug(snapshot))
    console.print(_devices(snapshot, now))
    console.print(_modules(snapshot))
    console.print(_models(snapshot))
    health = snapshot.health
    if health.healthy:
        console.print(Text("healthy", style="bold green"))
    else:
        console.print(Text("unhealthy:", style="bold red"))
        for reason in health.reasons:
            console.print(Text(f"  - {reason}", style="red"))


def _agent(snapshot: StatusSnapshot) -> Panel:
    a = snapshot.agent
    grid = Table.grid(padding=(0, 2))
    grid.add_row("node", a.node_id)
    grid.add_row("version", a.version)
    grid.add_row("uptime", _duration(a.uptime_s))
    grid.add_row("engine", f"{a.engine.name} {a.engine.version} ({a.engine.mode})")
    grid.add_row("pid", str(a.pid))
    if snapshot.journal is not None:
        j = snapshot.journal
        grid.add_row("journal", f"{j.depth} readings not yet taken by every module")
        if j.dropped:
            grid.add_row("", Text(f"{j.dropped} dropped by its bounds", style="yellow"))
    return Panel(grid, title="agent", title_align="left")


def _mqtt(snapshot: StatusSnapshot) -> Panel:
    m = snapshot.mqtt
    if m is None:
        return Panel(Text("not configured", style="dim"), title="MQTT", title_align="left")
    grid = Table.grid(padding=(0, 2))
    grid.add_row("broker", m.broker)
    grid.add_row("state", _state("connected" if m.connected else "disconnected"))
    oldest = "-" if m.oldest_age_s is None else _duration(m.oldest_age_s)
    grid.add_row("outbox", f"{m.outbox_depth} waiting, oldest {oldest}")
    grid.add_row("dropped", str(m.dropped))
    failovers = f" ({m.failovers} to another broker node)" if m.failovers else ""
    grid.add_row("reconnects", f"{m.reconnects}{failovers}")
    if m.last_error:
        grid.add_row("last error", m.last_error)
    return Panel(grid, title="MQTT", title_align="left")


def _sparkplug(snapshot: StatusSnapshot) -> Panel:
    s = snapshot.sparkplug
    assert s is not None
    grid = Table.grid(padding=(0, 2))
    grid.add_row("state", _state("connected" if s.connected else "disconnected"))
    grid.add_row("births", f"{s.births} (bdSeq {s.bd_seq})")
    grid.add_row("commands refused", str(s.commands_refused))
    if s.last_error:
        grid.add_row("last error", s.last_error)
    return Panel(grid, title="Sparkplug B", title_align="left")


def _devices(snapshot: StatusSnapshot, now: float) -> Table | Text:
    if not snapshot.devices:
        return Text("devices: none configured", style="dim")
    table = Table(title="devices", title_justify="left")
    for column in ("name", "state", "last poll", "every", "polls", "errors", "last error"):
        table.add_column(column)
    for d in snapshot.devices:
        last = "never" if d.last_poll is None else f"{_duration(now - d.last_poll)} ago"
        table.add_row(
            d.name,
            _state(d.state),
            last,
            _duration(d.poll_interval_s),
            str(d.polls),
            str(d.errors),
            d.last_error or "",
        )
    return table


def _modules(snapshot: StatusSnapshot) -> Table | Text:
    if not snapshot.modules:
        return Text("modules: none", style="dim")
    table = Table(title="modules", title_justify="left")
    columns = ("name", "version", "digest", "state", "calls", "errors", "p50", "p99", "memory")
    for column in (*columns, "fuel"):
        table.add_column(column)
    for m in snapshot.modules:
        table.add_row(
            m.name,
            m.version or "-",
            _short_digest(m.digest),
            _state(m.state),
            str(m.invocations),
            str(m.errors),
            _ms(m.p50_ms),
            _ms(m.p99_ms),
            "-" if m.memory_pages is None else f"{m.memory_pages * 64} KiB",
            "-" if m.fuel_used is None else f"{m.fuel_used:,}",
        )
    return table


def _models(snapshot: StatusSnapshot) -> Table | Text:
    if not snapshot.models:
        return Text("models: none", style="dim")
    table = Table(title="models", title_justify="left")
    for column in ("name", "size", "digest"):
        table.add_column(column)
    for m in snapshot.models:
        table.add_row(m.name, f"{m.size / 1024:.1f} KiB", _short_digest(m.digest))
    return table


def _state(state: str) -> Text:
    style = "green" if state in _GOOD else "red" if state in _BAD else "yellow"
    return Text(state, style=style)


def _short_digest(digest: str | None) -> str:
    if digest is None:
        return "-"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest[:19]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s"
