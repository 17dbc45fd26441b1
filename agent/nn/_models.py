"""Models preloaded for modules by name, as WasmEdge's `nn-preload` does.

Each file is read once, bounded in size and checked to be a usable TFLite model when
the set is made, so a bad path or a corrupt file is reported at start, naming the file,
and not when a module first asks for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from agent.errors import ModelError
from agent.nn._litert import LiteRTModel

DEFAULT_MAX_MODEL_BYTES = 64 * 1024 * 1024
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelSet(Mapping[str, LiteRTModel]):
    """Named, checked TFLite models; immutable, shared by every instance that uses them."""

    def __init__(self, models: Mapping[str, LiteRTModel] | None = None) -> None:
        self._models = dict(models or {})

    @classmethod
    def from_files(
        cls, paths: Mapping[str, Path], *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES
    ) -> ModelSet:
        """Read and check each `name -> path.tflite`; raise `ModelError` naming the file."""
        models = {}
        for name, path in paths.items():
            if not MODEL_NAME.match(name):
                raise ModelError(
                    f"model name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
                )
            try:
                with path.open("rb") as f:
                    content = f.read(max_bytes + 1)
            except OSError as err:
                raise ModelError(f"model {name!r}: cannot read {path}: {err.strerror}") from err
            if len(content) > max_bytes:
                raise ModelError(f"model {name!r}: {path} is larger than {max_bytes} bytes")
            models[name] = LiteRTModel(content, name)
        return cls(models)

    def __getitem__(self, name: str) -> LiteRTModel:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)
