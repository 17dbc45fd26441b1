"""The codec against register images built independently, from `struct` and byte layouts
written out letter by letter (A the most significant byte), as device manuals show them."""

from __future__ import annotations

import pytest

from agent.modbus import decode, encode
from agent.modbus._codec import to_engineering, to_raw
from tests._registers import image

pytestmark = pytest.mark.arm64

CASES = [
    ("int16", "h", -12345),
    ("uint16", "H", 0xBEEF),
    ("int32", "i", -123456789),
    ("uint32", "I", 0xDEADBEEF),
    ("int64", "q", -1234567890123456789),
    ("uint64", "Q", 0xFEDCBA9876543210),
    ("float32", "f", -1234.5),
    ("float64", "d", 6.02214076e23),
]


@pytest.mark.parametrize("order", ["ABCD", "DCBA", "BADC", "CDAB"])
@pytest.mark.parametrize(("kind", "code", "value"), CASES, ids=[c[0] for c in CASES])
def test_decode_and_encode_match_the_layout(kind: str, code: str, value: float, order: str) -> None:
    words = image(code, value, order)
    assert decode(kind, order, words) == value  # type: ignore[arg-type]
    assert encode(kind, order, value) == words  # type: ignore[arg-type]


def test_orders_differ_on_the_wire() -> None:
    images = {o: tuple(image("I", 0x11223344, o)) for o in ("ABCD", "DCBA", "BADC", "CDAB")}
    assert images == {
        "ABCD": (0x1122, 0x3344),
        "DCBA": (0x4433, 0x2211),
        "BADC": (0x2211, 0x4433),
        "CDAB": (0x3344, 0x1122),
    }
    assert len(set(images.values())) == 4


@pytest.mark.parametrize("bit", range(16))
def test_one_bit_of_a_register(bit: int) -> None:
    assert decode("bit", "ABCD", [1 << bit], bit) is True
    assert decode("bit", "ABCD", [0xFFFF ^ (1 << bit)], bit) is False


def test_bool_from_a_coil() -> None:
    assert decode("bool", "ABCD", [1]) is True
    assert decode("bool", "ABCD", [0]) is False
    assert encode("bool", "ABCD", True) == [1]


@pytest.mark.parametrize(
    ("order", "words"), [("ABCD", [0x502D, 0x3230, 0x3000]), ("BADC", [0x2D50, 0x3032, 0x0030])]
)
def test_strings_pad_with_nul_and_strip_it(order: str, words: list[int]) -> None:
    assert decode("string", order, words) == "P-200"  # type: ignore[arg-type]
    assert encode("string", order, "P-200", 3) == words  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("int16", 40000, "does not fit int16"),
        ("uint16", -1, "does not fit uint16"),
        ("uint32", 1.5, "whole numbers"),
        ("int32", "7", "cannot hold"),
        ("string", 7, "takes a string"),
    ],
)
def test_encode_refuses_what_does_not_fit(kind: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode(kind, "ABCD", value, 2)  # type: ignore[arg-type]


def test_string_longer_than_its_registers() -> None:
    with pytest.raises(ValueError, match="longer than 4"):
        encode("string", "ABCD", "abcde", 2)


def test_scale_and_offset_round_trip() -> None:
    assert to_engineering(612, 0.1, -20.0) == pytest.approx(41.2)
    assert to_raw("int16", 41.2, 0.1, -20.0) == 612
    assert to_raw("float32", 41.2, 0.1, -20.0) == pytest.approx(612.0)
    assert to_engineering(7, 1.0, 0.0) == 7
    assert isinstance(to_engineering(7, 1.0, 0.0), int)


@pytest.mark.parametrize(
    ("kind", "words", "problem"),
    [
        ("float32", [0x41C8], "1 words cannot hold type float32"),
        ("int16", [1, 2], "2 words cannot hold type int16"),
        ("uint16", [0x10000], "int too big"),
        ("int32", [-1, 0], "negative"),
        ("bool", [], "a bool is read from one word, got 0"),
        ("bit", [1, 1], "a bit is read from one word, got 2"),
    ],
)
def test_a_reply_that_cannot_hold_the_type_is_a_value_error(
    kind: str, words: list[int], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        decode(kind, "ABCD", words)  # type: ignore[arg-type]
