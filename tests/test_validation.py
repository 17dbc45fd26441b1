"""Validated documents: every way a file or a document can be wrong gets a typed error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from agent.errors import ConfigError, PackageError
from agent.validation import StrictModel, read_toml, validated


class _Doc(StrictModel):
    size: int = Field(ge=1)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such register map"),
        (b"[x\n", "not valid TOML"),
        (b"\xff = 1\n", "cannot read register map"),
        # tomllib recurses per level: this raised RecursionError.
        (b"a = " + b"[" * 2000 + b"]" * 2000, "not valid TOML: nested deeper than 32 levels"),
        (b"a = " + b"{b = " * 40 + b"1" + b"}" * 40, "not valid TOML: nested deeper than 32"),
        # Dotted keys nest without recursion in tomllib, but pydantic and JSON follow.
        (b"a" + b".a" * 40 + b" = 1\n", "not valid TOML: nested deeper than 32 levels"),
    ],
    ids=["missing", "syntax", "not UTF-8", "deep arrays", "deep tables", "dotted keys"],
)
def test_unreadable_toml_is_a_typed_error_naming_the_file(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "map.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PackageError, match=f"{path}: {problem}"):
        read_toml(path, "register map", error=PackageError)


def test_a_nul_byte_in_the_path_is_a_typed_error() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_toml(Path("a\0b.toml"), "config file")


def test_validation_errors_name_where_each_key_and_what_was_expected() -> None:
    with pytest.raises(ConfigError) as caught:
        validated(_Doc, {"size": 0, "colour": "red"}, "doc.toml")
    assert str(caught.value) == (
        "doc.toml: size: Input should be greater than or equal to 1 (got 0); colour: unknown key"
    )


def test_a_valid_document_is_frozen() -> None:
    doc = validated(_Doc, {"size": 3}, "doc.toml")
    with pytest.raises(ValueError, match="frozen"):
        doc.size = 4  # type: ignore[misc]


def test_errors_quote_bad_values_briefly() -> None:
    with pytest.raises(ConfigError, match=r"\(got 'xxxx.*\.\.\. \(2002 characters\)\)$"):
        validated(_Doc, {"size": "x" * 2000}, "doc.toml")
