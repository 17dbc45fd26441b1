"""Module outputs as edge node metrics: every scalar of a module's JSON message, under
`<topic>/<device>/<key>/<key>...`, as NDATA.

Owns the catalog of those metrics. Sparkplug wants every metric in the NBIRTH, with
its alias, before any NDATA uses it; module outputs are only known once emitted, so a
new one is added to the catalog (kept in `<state_dir>/sparkplug/metrics.json`, so that
its alias stays the same across restarts and stored NDATA keeps its meaning) and the
session sends the births again before the first NDATA that uses it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent._atomic import write_bytes
from agent.sparkplug._payload import MetricDef, Scalar, datatype_of_value

log = logging.getLogger(__name__)

MAX_METRICS = 10_000
"""Node metrics at most: a module that names a new topic for every message must not
grow the births without bound."""
_METADATA = frozenset({"device", "seq", "ts", "unit", "quality"})
"""Keys that say what a value is about, not values: left out."""


class Catalog:
    """The node's module-output metrics, by name; aliases from `first_alias` on."""

    def __init__(self, path: Path, first_alias: int) -> None:
        self._path = path
        self._next = first_alias
        self._metrics: dict[str, MetricDef] = {}
        self.values: dict[str, Scalar] = {}
        self._full_warned = False
        self._load()

    def __iter__(self) -> Iterator[MetricDef]:
        return iter(self._metrics.values())

    def __contains__(self, name: str) -> bool:
        return name in self._metrics

    def add(self, new: dict[str, int]) -> None:
        """Give each new name (with its datatype) an alias, and keep the catalog on disk."""
        for name, datatype in new.items():
            if len(self._metrics) >= MAX_METRICS:
                if not self._full_warned:
                    self._full_warned = True
                    log.warning("Sparkplug: %d node metrics already, no more", MAX_METRICS)
                return
            self._metrics[name] = MetricDef(name, self._next, datatype)
            self._next += 1
        doc = [[m.name, m.alias, m.datatype] for m in self._metrics.values()]
        write_bytes(self._path, json.dumps(doc).encode())

    def get(self, name: str) -> MetricDef | None:
        return self._metrics.get(name)

    def _load(self) -> None:
        try:
            doc = json.loads(self._path.read_text())
            metrics = [MetricDef(str(n), int(a), int(t)) for n, a, t in doc]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError) as err:
            log.warning("Sparkplug: %s unreadable (%s); starting a new catalog", self._path, err)
            return
        for m in metrics:
            if m.alias >= self._next:  # below: taken by a device added since
                self._metrics[m.name] = m
        self._next = max([self._next, *(m.alias + 1 for m in self._metrics.values())])


def outputs(topic: str, payload: bytes) -> dict[str, Scalar]:
    """The metrics in one module message: nothing unless it is a JSON object."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    device = doc.get("device")
    prefix = f"{topic}/{device}" if isinstance(device, str) and device else topic
    return dict(_leaves(prefix, doc))


def _leaves(prefix: str, doc: dict[str, Any]) -> Iterator[tuple[str, Scalar]]:
    for key, value in doc.items():
        if key in _METADATA or not isinstance(key, str) or "/" in key:
            continue
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            yield from _leaves(name, value)
        elif isinstance(value, bool | str) or (
            isinstance(value, int | float) and math.isfinite(value)
        ):
            yield name, value


def typed(values: dict[str, Scalar], catalog: Catalog) -> tuple[dict[str, int], dict[str, Scalar]]:
    """(the new metrics with their datatypes, the values whose type fits their metric)."""
    new: dict[str, int] = {}
    fitting: dict[str, Scalar] = {}
    for name, value in values.items():
        datatype = datatype_of_value(value)
        known = catalog.get(name)
        if known is None:
            new[name] = datatype
        elif known.datatype != datatype:
            continue  # a metric keeps its type for good; a value of another is left out
        fitting[name] = value
    return new, fitting
