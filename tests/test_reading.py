"""Readings from the JSON-lines form (`module run --input`): every bad field is named,
and nothing the reading document cannot carry (NaN, infinity, a non-string unit) gets in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.reading import Reading

GOOD: dict[str, Any] = {
    "device": "pump-1",
    "ts": 1764118800.5,
    "seq": 3,
    "values": {"t": {"value": 21.5, "unit": "degC"}, "on": {"value": True}},
    "series": {"v": {"type": "f32", "unit": "g", "data": [0.5, -1.0]}},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(GOOD))
    *parents, key = path.split(".")
    target = doc
    for part in parents:
        target = target[part]
    target[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be a JSON object"),
        ({"ts": 1, "seq": 0}, "needs 'device'"),
        (with_("ts", float("nan")), "'ts' must be a finite number"),
        (with_("ts", float("inf")), "'ts' must be a finite number"),
        (with_("ts", True), "'ts' must be a finite number"),
        (with_("seq", -1), "'seq' must be a non-negative integer"),
        (with_("values.t.value", float("nan")), r"values.t.value must be a finite number"),
        (with_("values.t.unit", 5), "values.t.unit must be a string, got 5"),
        (with_("values.t.quality", "fine"), "values.t.quality must be one of"),
        (with_("series.v.unit", ["g"]), r"series.v.unit must be a string"),
        (with_("series.v.type", "f16"), "series.v: series type 'f16'"),
        # Each of these raised OverflowError or TypeError, not ValueError.
        (json.loads('{"device": "p", "ts": 1' + "0" * 400 + ', "seq": 0}'), "'ts' must be"),
        (with_("series.v.type", ["f32"]), r"series.v.type must be a string, got \['f32'\]"),
        (with_("series.v.type", {}), "series.v.type must be a string"),
        (with_("values.t.quality", ["good"]), "values.t.quality must be one of"),
        (with_("series.v.quality", {"a": 1}), "series.v.quality must be one of"),
        (with_("values.t.value", 10**400), "values.t.value must be a finite number"),
        (with_("series.v.data", [10**400]), "series.v: "),
        # Lone surrogates: valid JSON escapes, but no UTF-8 for the guest.
        (with_("device", "\ud800"), "device is not valid Unicode"),
        (with_("values.t.unit", "\udfff"), "values.t.unit is not valid Unicode"),
    ],
)
def test_bad_fields_are_named(doc: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reading.from_json(doc)


def test_errors_quote_bad_input_briefly() -> None:
    with pytest.raises(ValueError, match=r"type: .xxxx.*\.\.\. \(100\d characters\)$"):
        Reading.from_json(with_("seq", "x" * 1000))


def test_integer_series_survive_the_round_trip() -> None:
    """`to_json_line` wrote samples as floats, which `from_json` refuses for i16 and
    friends: a journal of integer series could not be read back."""
    doc = with_("series.v.type", "i16")
    doc["series"]["v"]["data"] = [1, -2]
    reading = Reading.from_json(doc)
    assert Reading.from_json(json.loads(reading.to_json_line())) == reading
