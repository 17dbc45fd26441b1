"""Field types the config's sections share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is None or path.is_absolute():
        return path
    return (Path(base) / path).resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve)]
