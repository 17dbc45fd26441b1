"""A rollout's arithmetic: wave sizes from `1,10%,50%,100%`, and names from a reference.

Pure functions, so the CLI can refuse bad input before it touches the broker.
"""

from __future__ import annotations

import math
import re

from agent.config import NAME_PATTERN
from agent.errors import AgentError, RolloutError
from agent.supply import parse_reference

_STEP = re.compile(r"^(\d+)(%?)$")


def parse_waves(spec: str) -> tuple[tuple[int, bool], ...]:
    """`1,10%,50%,100%` as (number, is_percentage) steps, cumulative and growing, the
    last 100%; RolloutError naming the bad step otherwise."""
    expected = "expected cumulative counts or percentages such as 1,10%,50%,100%"
    steps = []
    for text in spec.split(","):
        match = _STEP.match(text.strip())
        if match is None:
            raise RolloutError(f"--waves {spec!r}: {text.strip()!r} is not a step; {expected}")
        number, percent = int(match[1]), bool(match[2])
        if number == 0 or (percent and number > 100):
            raise RolloutError(
                f"--waves {spec!r}: {text.strip()!r} is out of range; a count is at least 1, "
                "a percentage 1% to 100%"
            )
        steps.append((number, percent))
    if steps[-1] != (100, True):
        raise RolloutError(f"--waves {spec!r}: the last wave must be 100% (every member)")
    return tuple(steps)


def wave_sizes(spec: str, members: int) -> tuple[int, ...]:
    """The cumulative number of members reached after each wave; a wave that would add
    nobody is left out (`1,10%,50%,100%` over 20: 1, 2, 10, 20)."""
    sizes: list[int] = []
    for number, percent in parse_waves(spec):
        size = min(members, math.ceil(members * number / 100) if percent else number)
        if sizes and size < sizes[-1]:
            raise RolloutError(
                f"--waves {spec!r}: over {members} members the waves reach "
                f"{', '.join(map(str, [*sizes, size]))}; each must reach at least as many "
                "as the one before"
            )
        if size > (sizes[-1] if sizes else 0):
            sizes.append(size)
    return tuple(sizes)


def module_name(ref: str) -> str:
    """The last component of the reference's repository: `host:5000/edge/scale:1.1` ->
    `scale`; RolloutError when that is not a module name."""
    name = repository(ref).rpartition("/")[2]
    if not re.match(NAME_PATTERN, name):
        raise RolloutError(f"{ref!r}: {name!r} is not a module name; give one with --module")
    return name


def repository(ref: str) -> str:
    """`host[:port]/repo` of a registry reference, without tag or digest."""
    try:
        parsed = parse_reference(ref)
    except AgentError as err:
        raise RolloutError(str(err)) from err
    if parsed.registry is None:
        raise RolloutError(f"{ref!r}: a rollout names a registry reference, not a local layout")
    return f"{parsed.registry}/{parsed.repository}"
