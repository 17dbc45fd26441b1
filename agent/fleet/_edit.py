"""Changing one module's entry in a retained desired-state document.

`fleet desired set` and the rollout make the same change: one entry replaced, added or
dropped, the others kept, the revision bumped, the document signed. An `Edit` says what a
document should hold, so it can tell whether a retained document holds it already: a
step re-run after a crash publishes nothing new.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.fleet._documents import DesiredDocument, DesiredModule, desired_payload


@dataclass(frozen=True)
class Signer:
    """Signs desired-state documents when a key is given (`--key`)."""

    key_pem: bytes | None = None
    password: bytes | None = None

    @classmethod
    def from_file(cls, path: Path | None) -> Signer:
        """The key at `path`, its password from $EDGE_AGENT_KEY_PASSWORD (as `command
        sign` takes it); no signing without a path."""
        if path is None:
            return cls()
        try:
            key_pem = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read the key {path}: {err}") from err
        password = os.environ.get("EDGE_AGENT_KEY_PASSWORD")
        return cls(key_pem, password.encode() if password else None)


def next_revision(previous: DesiredDocument | None, now: float) -> int:
    """Unix milliseconds, and past the previous document's revision whatever the clock."""
    floor = previous.revision + 1 if previous is not None else 0
    return max(int(now * 1000), floor)


@dataclass(frozen=True)
class Edit:
    """`topic`'s document with `name`'s entry set to `entry` (dropped when None).

    A document that would be left with no entries is cleared (an empty retained
    payload) when there was none before or `clear_if_empty` says it was ours alone.
    """

    topic: str
    name: str
    entry: DesiredModule | None
    clear_if_empty: bool = False

    def result(self, current: DesiredDocument | None) -> tuple[DesiredModule, ...] | None:
        """The entries the document should hold; None: no document at all."""
        old = current.modules if current is not None else ()
        modules = [m for m in old if m.name != self.name or self.entry is not None]
        if self.entry is not None:
            at = next((i for i, m in enumerate(old) if m.name == self.name), None)
            if at is None:
                modules.append(self.entry)
            else:
                modules[at] = self.entry
        if not modules and (current is None or self.clear_if_empty):
            return None
        return tuple(modules)

    def satisfied(self, current: DesiredDocument | None) -> bool:
        return self.result(current) == (current.modules if current is not None else None)

    def payload(self, current: DesiredDocument | None, signer: Signer, now: float) -> bytes:
        """What to publish retained on `topic`: the new document, or b"" to clear it."""
        modules = self.result(current)
        if modules is None:
            return b""
        return desired_payload(
            self.topic,
            next_revision(current, now),
            [entry_dict(m) for m in modules],
            key_pem=signer.key_pem,
            password=signer.password,
        )


def entry_dict(module: DesiredModule) -> dict[str, Any]:
    """An entry as it is written in a document: unset fields left out."""
    return module.model_dump(exclude_none=True)
