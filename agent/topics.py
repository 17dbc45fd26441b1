"""MQTT topics: which names are valid, and which filters match or cover them.

One implementation for every part that reasons about topics: a module's emits (the guest
ABI), its manifest's `capabilities.emit` against local policy (supply), the routes' QoS
(config), subscriptions (mqtt) and what the outbox accepts. Filters follow MQTT: `+`
stands for one whole level, `#` for the rest of the topic and only as its last level.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_TOPIC_BYTES = 128
"""Longest topic, relative to the node's root, a module may emit to or declare."""
_MQTT_MAX_BYTES = 65535


def name_error(topic: str) -> str | None:
    """Why `topic` cannot be published to in MQTT, or None when it can."""
    if not topic or len(topic.encode()) > _MQTT_MAX_BYTES:
        return f"must be 1 to {_MQTT_MAX_BYTES} bytes"
    if any(c in topic for c in "+#\0"):
        return "must not contain '+', '#' or NUL"
    return None


def topic_error(topic: str) -> str | None:
    """Why `topic` is not a valid topic relative to the node's root, or None when it is."""
    problem = _levels_error(topic)
    if problem is None and any(c in topic for c in "+#\0"):
        return "must not contain '+', '#' or NUL"
    return problem


def filter_error(topic_filter: str) -> str | None:
    """Why `topic_filter` is not a valid filter relative to the root, or None when it is."""
    problem = _levels_error(topic_filter)
    if problem is not None:
        return problem
    if "\0" in topic_filter:
        return "must not contain NUL"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if level not in ("+", "#") and ("+" in level or "#" in level):
            return f"level {level!r}: '+' and '#' stand for whole levels only"
        if level == "#" and i != len(levels) - 1:
            return "'#' may only be the last level"
    return None


def matches(topic: str, topic_filter: str) -> bool:
    """Whether the concrete `topic` is matched by `topic_filter`."""
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or part not in ("+", levels[i]):
            return False
    return len(parts) == len(levels)


def matches_any(topic: str, filters: Iterable[str]) -> bool:
    return any(matches(topic, f) for f in filters)


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic `requested` matches is also matched by `allowed`."""
    a, r = allowed.split("/"), requested.split("/")
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(r) or r[i] == "#" or (level != "+" and level != r[i]):
            return False
    return len(r) == len(a)


def _levels_error(topic: str) -> str | None:
    if not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"must be 1 to {MAX_TOPIC_BYTES} bytes"
    if topic.startswith("/") or topic.endswith("/") or "//" in topic:
        return "must not start or end with '/' or contain an empty level"
    return None
