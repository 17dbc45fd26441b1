"""The desired-state contract's entries: present with a ref, or absent with nothing else."""

from __future__ import annotations

import json
import re

import pytest

from agent.errors import DesiredStateError
from agent.fleet import parse_desired

TOPIC = "edge/group/pumps/desired"
REF = "registry.test:5000/edge/scale:1.1"


def document(*modules: dict[str, object]) -> bytes:
    return json.dumps({"revision": 1, "modules": list(modules)}).encode()


def test_an_absent_entry_is_its_name_alone() -> None:
    parsed = parse_desired(TOPIC, document({"name": "scale", "absent": True}), None)
    assert parsed is not None
    (entry,) = parsed.modules
    assert (entry.name, entry.ref, entry.absent) == ("scale", None, True)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "scale"}, "module 'scale': give ref (or absent: true to remove it)"),
        (
            {"name": "scale", "absent": True, "ref": REF},
            "module 'scale': an absent entry has no ref, digest or config",
        ),
        (
            {"name": "scale", "absent": True, "config": {}},
            "module 'scale': an absent entry has no ref, digest or config",
        ),
        ({"name": "scale", "absent": False, "ref": REF}, "modules.0.absent: Input should be True"),
    ],
)
def test_a_malformed_entry_is_refused_saying_what_an_entry_holds(
    entry: dict[str, object], message: str
) -> None:
    with pytest.raises(DesiredStateError, match=re.escape(message)):
        parse_desired(TOPIC, document(entry), None)
