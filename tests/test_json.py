"""JSON from outside: the nesting bound is measured before parsing, strings do not
count, and every refusal is a ValueError."""

from __future__ import annotations

import pytest

from agent._json import MAX_DEPTH, nesting, parse_json, quoted


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [{"b": []}]}', 4),
        ('["[[[[", "]]]", "{"]', 1),
        ('["\\"[[[", {"k\\\\": ["\\\\"]}]', 3),
        ("[]" * 1000, 1),
        ("[" * 50, 50),
    ],
)
def test_nesting_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert nesting(text) == depth


def test_deep_documents_are_refused_before_parsing() -> None:
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(at_limit.encode()) == parse_json(at_limit)
    with pytest.raises(ValueError, match="nested 33 levels deep; the limit is 32"):
        parse_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(ValueError, match="nested 100000 levels deep"):
        parse_json(b"[" * 100_000)


def test_utf16_cannot_hide_brackets_in_strings() -> None:
    # U+225B is the bytes 22 5B in UTF-16-BE: a quote and a bracket to a byte scanner.
    doc = '["\u225b", ' + "[" * 40 + "]" * 40 + "]"
    with pytest.raises(ValueError, match="nested 41 levels deep"):
        parse_json(doc.encode("utf-16-be"))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    with pytest.raises(ValueError, match=f"{constant} is not a JSON number"):
        parse_json(f'{{"a": {constant}}}')


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff\xfe\x00", "codec can't decode"),
        (b"{", "Expecting property name"),
        (b'"\\x"', "Invalid \\\\escape"),
        (b"1" * 5000, "Exceeds the limit"),
    ],
)
def test_bad_json_is_a_value_error(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_json(data)


def test_quoted_cuts_long_input_short() -> None:
    assert quoted("abc") == "'abc'"
    assert quoted("x" * 500, 10) == "'xxxxxxxxx... (502 characters)"
