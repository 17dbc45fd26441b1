"""Validated documents: the strict model base, TOML reading and readable errors.

Config files, register maps, module manifests and commands are all pydantic models
that refuse unknown keys and are frozen once valid; their errors all read the same way:
one `key.path: what was wrong (got value)` per problem.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from agent._json import MAX_DEPTH, quoted
from agent.errors import AgentError, ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not be ignored); instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_unique(names: Iterable[str], what: str) -> None:
    """A ValueError naming the first of `names` that comes twice (for model validators)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is used twice")
        seen.add(name)


def read_toml(path: Path, what: str, *, error: type[AgentError] = ConfigError) -> dict[str, Any]:
    """The parsed TOML document at `path`; an `error` naming the file otherwise.

    Tables and arrays may nest `MAX_DEPTH` (32) levels deep: tomllib recurses once per
    level of arrays and inline tables, and the document goes on to pydantic and JSON.
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise error(f"{path}: no such {what}") from err
    except tomllib.TOMLDecodeError as err:
        raise error(f"{path}: not valid TOML: {err}") from err
    except RecursionError as err:  # tomllib's own limit is the interpreter's stack
        raise error(f"{path}: not valid TOML: nested deeper than {MAX_DEPTH} levels") from err
    except (OSError, ValueError) as err:  # UnicodeDecodeError, a NUL byte in the path
        raise error(f"{path}: cannot read {what}: {err}") from err
    if _depth(doc) > MAX_DEPTH:
        raise error(f"{path}: not valid TOML: nested deeper than {MAX_DEPTH} levels")
    return doc


def _depth(doc: object) -> int:
    """How deep tables and arrays nest in `doc`, walked without recursion."""
    deepest = 0
    pending = [(doc, 0)]
    while pending:
        node, depth = pending.pop()
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_DEPTH:
            break
        pending.extend((child, depth + 1) for child in children)
    return deepest


def validated(
    model: type[ModelT],
    data: Any,
    where: object,
    *,
    error: type[AgentError] = ConfigError,
    context: dict[str, Any] | None = None,
) -> ModelT:
    """`data` as a `model`, or an `error` that names `where` and every problem."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise error(f"{where}: {format_errors(err)}") from err


def format_errors(err: ValidationError) -> str:
    """One line per problem: `key.path: what was wrong (got: value)`."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
            continue
        got = "" if e["type"] == "missing" else f" (got {quoted(e['input'])})"
        lines.append(f"{where}: {e['msg']}{got}")
    return "; ".join(lines)
