"""Guest ABI version 1 (see modules/README.md), on top of any engine.

This module owns the contract with guest modules: how a reading is laid out in guest
memory, what `edge.emit` and `edge.log` accept, and which faults are the module's.
It knows no engine: it speaks `Engine`/`Instance` only, so both engines behave alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from agent import errors
from agent.reading import Reading
from agent.topics import matches_any, topic_error
from agent.wasm._api import (
    CompiledModule,
    GuestMemory,
    HostFunction,
    Instance,
    Limits,
    WasiSpec,
)
from agent.wasm.rewrite import DEFAULT_MAX_DEPTH, RESET_EXPORT

ABI_VERSION = 1
_LOG_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
_MAX_LOG_BYTES = 4096
_KNOWN_TOPICS = 64
"""Checked topics remembered per module; most modules emit to one or two, always."""
_REACTOR_EXPORTS = ("edge_abi_version", "edge_alloc", "edge_configure", "edge_on_reading")
_NN_MODULE = "wasi_ephemeral_nn"


@dataclass(frozen=True)
class Emitted:
    """One message a module emitted; `topic` is relative to the node's prefix."""

    topic: str
    payload: bytes

    def to_json(self) -> dict[str, Any]:
        """The `module run` line: the payload as JSON when it is JSON, else as text."""
        try:
            payload: Any = json.loads(self.payload)
        except ValueError:
            payload = self.payload.decode("utf-8", "replace")
        return {"topic": self.topic, "payload": payload}


def encode_reading(reading: Reading) -> tuple[bytes, bytes]:
    """The reading document and its binary buffer, as `edge_on_reading` takes them.

    Called for every reading of every module, so the text is written directly rather
    than through dicts and `json` (3 us instead of 7 for a typical reading), and a
    single series (the common waveform case) travels without a copy. Values are
    finite: the device pool and `Reading.from_json` see to that.
    """
    parts = [
        '{"device":',
        _quote(reading.device),
        ',"ts":',
        _scalar(reading.ts),
        ',"seq":',
        str(reading.seq),
        ',"values":{',
    ]
    sep = ""
    for name, v in reading.values.items():
        parts += (sep, _quote(name), ':{"value":', _scalar(v.value))
        if v.unit is not None:
            parts += (',"unit":', _quote(v.unit))
        parts += (',"quality":', _quote(v.quality), "}")
        sep = ","
    parts.append("}")
    blob = b""
    if reading.series:
        parts.append(',"series":{')
        chunks: list[bytes] = []
        size = 0
        sep = ""
        for name, s in reading.series.items():
            pad = -size % 8
            if pad:
                chunks.append(b"\0" * pad)
                size += pad
            parts += (sep, _quote(name), f':{{"offset":{size},"count":{s.count},"type":')
            parts.append(_quote(s.dtype))
            if s.unit is not None:
                parts += (',"unit":', _quote(s.unit))
            parts += (',"quality":', _quote(s.quality), "}")
            sep = ","
            chunks.append(s.data)
            size += len(s.data)
        parts.append("}")
        blob = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    parts.append("}")
    return "".join(parts).encode(), blob


def _scalar(value: float | int | bool | str) -> str:
    """A value as JSON, as `json.dumps` writes it."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _quote(value)
    return repr(value)


def check_imports(compiled: CompiledModule, host: Sequence[HostFunction]) -> None:
    """Refuse a module importing what the agent does not give it, before it runs."""
    provided = {(f.module, f.name) for f in host}
    for module, name in sorted(compiled.info.imports):
        if module == "wasi_snapshot_preview1" or (module, name) in provided:
            continue
        if module == _NN_MODULE:
            raise errors.MissingImport(
                compiled.name,
                f"imports {module}.{name} (WASI-NN), which is only given to a module "
                "with models: preload one (`--model NAME=PATH`, or `models` in its config)",
            )
        raise errors.MissingImport(
            compiled.name,
            f"imports {module}.{name}, which the agent does not provide "
            f"(it provides WASI preview 1 and {sorted(f'{m}.{n}' for m, n in provided)})",
        )


class _Output:
    """Collects a module's stdout/stderr and logs it line by line under its name."""

    def __init__(self, logger: logging.Logger, capture_stdout: bool = False) -> None:
        self._log = logger
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._capture = capture_stdout
        self.stdout_lines: list[bytes] = []

    def __call__(self, stream: str, data: bytes) -> None:
        *lines, self._partial[stream] = (self._partial[stream] + data).split(b"\n")
        for line in lines:
            self._line(stream, line)

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._line(stream, rest)
            self._partial[stream] = b""

    def _line(self, stream: str, line: bytes) -> None:
        if stream == "stdout" and self._capture:
            self.stdout_lines.append(line)
            return
        level = logging.INFO if stream == "stdout" else logging.WARNING
        self._log.log(level, "%s: %s", stream, line.decode("utf-8", "replace"))


class ReactorModule:
    """An instance of a reactor module that turns readings into messages.

    A fault ends the call with a typed `ModuleError` and discards the instance, whose
    memory may be inconsistent; the next reading starts a fresh one. A non-zero return
    code is the module's own clean refusal and keeps the instance.
    """

    def __init__(
        self,
        compiled: CompiledModule,
        config: Mapping[str, Any] | None = None,
        *,
        limits: Limits | None = None,
        wasi: WasiSpec | None = None,
        emit_topics: Sequence[str] | None = None,
        owns_compiled: bool = False,
        instance_host: Callable[[], Sequence[HostFunction]] | None = None,
    ) -> None:
        self.name = compiled.name
        self._compiled = compiled
        self._owns_compiled = owns_compiled
        self._config = json.dumps(dict(config or {}), separators=(",", ":")).encode()
        self._limits = limits or Limits()
        self._emit_topics = tuple(emit_topics) if emit_topics is not None else None
        self._log = logging.getLogger(f"agent.module.{self.name}")
        self._output = _Output(self._log)
        self._wasi = WasiSpec(
            args=(wasi or WasiSpec()).args,
            env=(wasi or WasiSpec()).env,
            dirs=(wasi or WasiSpec()).dirs,
            output=self._output,
        )
        self._host = (
            HostFunction("edge", "emit", 4, True, self._emit),
            HostFunction("edge", "log", 3, False, self._log_line),
        )
        missing = [e for e in _REACTOR_EXPORTS if e not in compiled.info.exported_functions]
        if missing:
            raise errors.InvalidModule(
                self.name, f"is not an ABI v{ABI_VERSION} reactor: it does not export {missing}"
            )
        # Host functions with state that must die with each instance (WASI-NN's graphs).
        self._instance_host = instance_host or tuple
        check_imports(compiled, (*self._host, *self._instance_host()))
        self._pending: list[Emitted] = []
        self._topics: dict[bytes, str] = {}  # topics already checked, as the module spells them
        self._instance: Instance | None = None
        self._buffer = (0, 0)
        self._closed = False
        self.restart()

    def restart(self) -> None:
        """Start a fresh instance: initialise, check the ABI version, configure."""
        self._drop()
        self._closed = False
        host = (*self._host, *self._instance_host())
        instance = self._compiled.instantiate(host, self._wasi, self._limits)
        self._instance = instance
        self._buffer = (0, 0)  # (pointer, size) of the input buffer from edge_alloc
        try:
            if "_initialize" in self._compiled.info.exported_functions:
                self._call("_initialize")
            version = self._call("edge_abi_version")
            if version != ABI_VERSION:
                raise errors.InvalidModule(
                    self.name, f"speaks guest ABI v{version}; this agent speaks v{ABI_VERSION}"
                )
            self._invoke("edge_configure", self._config, b"")
        except BaseException:
            self._drop()
            raise

    def on_reading(self, reading: Reading) -> list[Emitted]:
        doc, blob = encode_reading(reading)
        return self._invoke("edge_on_reading", doc, blob)

    def _invoke(self, function: str, doc: bytes, blob: bytes) -> list[Emitted]:
        if self._closed:
            raise errors.ModuleError(self.name, "module is closed")
        if self._instance is None:
            self.restart()
        instance = self._instance
        assert instance is not None
        bin_at = len(doc) + (-len(doc) % 8)
        total = bin_at + len(blob)
        ptr, capacity = self._buffer
        if total > capacity:
            ptr = self._call("edge_alloc", total)
            if not ptr:
                raise errors.MemoryLimitExceeded(self.name, f"edge_alloc({total}) returned 0")
            self._buffer = (ptr, total)
        instance.memory.write(ptr, doc)
        if blob:
            instance.memory.write(ptr + bin_at, blob)
        self._pending = []
        args = (
            (ptr, len(doc))
            if function == "edge_configure"
            else (ptr, len(doc), ptr + bin_at, len(blob))
        )
        code = self._call(function, *args)
        if code:
            raise errors.CallFailed(
                self.name, function, code - (1 << 32) if code >= 1 << 31 else code
            )
        return self._pending

    def _call(self, function: str, *args: int) -> int:
        instance = self._instance
        assert instance is not None
        try:
            return instance.call(function, *args) or 0
        except errors.ModuleTrap as err:
            cause = _trap_cause(instance, err)
            if cause is None and self._at_memory_cap(instance):
                cause = errors.MemoryLimitExceeded(
                    self.name,
                    f"trapped with its memory at the cap of {self._limits.memory_pages} pages",
                )
            self._drop()
            if cause is not None:
                raise cause from err
            raise
        except errors.ModuleError:
            self._drop()
            raise
        finally:
            self._output.flush()

    def _at_memory_cap(self, instance: Instance) -> bool:
        # malloc reports failure when memory.grow is refused; the module then traps.
        # Within two pages of the cap, the cap is the likely cause.
        return instance.memory.pages() + 2 >= self._limits.memory_pages

    def _emit(
        self, memory: GuestMemory, topic_ptr: int, topic_len: int, ptr: int, length: int
    ) -> int:
        if length > self._limits.max_emit_bytes:
            raise errors.EmitRejected(
                self.name,
                f"emitted {length} bytes; the limit is {self._limits.max_emit_bytes}",
            )
        try:
            raw_topic = memory.read(topic_ptr, topic_len)
            payload = memory.read(ptr, length)
        except IndexError as err:
            raise errors.EmitRejected(
                self.name, f"emit with a bad topic or payload: {err}"
            ) from err
        topic = self._topics.get(raw_topic)
        if topic is None:
            topic = self._checked_topic(raw_topic)
            if len(self._topics) < _KNOWN_TOPICS:
                self._topics[raw_topic] = topic
        self._pending.append(Emitted(topic, payload))
        return 0

    def _checked_topic(self, raw: bytes) -> str:
        """The topic a module emits to, once it is known to be valid and allowed."""
        try:
            topic = raw.decode()
        except UnicodeDecodeError as err:
            raise errors.EmitRejected(self.name, f"emit with a bad topic: {err}") from err
        problem = topic_error(topic)
        if problem:
            raise errors.EmitRejected(self.name, f"emit topic {topic!r} {problem}")
        if self._emit_topics is not None and not matches_any(topic, self._emit_topics):
            raise errors.EmitRejected(
                self.name, f"may not emit to {topic!r} (allowed: {list(self._emit_topics)})"
            )
        return topic

    def _log_line(self, memory: GuestMemory, level: int, ptr: int, length: int) -> None:
        try:
            text = memory.read(ptr, min(length, _MAX_LOG_BYTES)).decode("utf-8", "replace")
        except IndexError:
            text = f"<log line at {ptr}+{length} is outside memory>"
        self._log.log(_LOG_LEVELS[min(max(level, 0), 3)], "%s", text)

    def _drop(self) -> None:
        if self._instance is not None:
            self._instance.close()
            self._instance = None

    def close(self) -> None:
        """Close the instance, and the compiled module too when this object owns it."""
        self._drop()
        self._closed = True
        if self._owns_compiled:
            self._compiled.close()


def _trap_cause(instance: Instance, err: errors.ModuleTrap) -> errors.ModuleError | None:
    """The real cause of a plain trap when the stack guard (see `_stackguard`) fired."""
    if type(err) is not errors.ModuleTrap:
        return None
    try:
        depth = instance.call(RESET_EXPORT)
    except errors.ModuleError:
        return None
    if depth is not None and depth > DEFAULT_MAX_DEPTH:
        return errors.StackExhausted(err.module, f"recursed deeper than {DEFAULT_MAX_DEPTH} calls")
    return None


def run_command(
    compiled: CompiledModule,
    readings: Iterable[Reading],
    *,
    limits: Limits | None = None,
    wasi: WasiSpec | None = None,
    topic: str = "out",
) -> list[Emitted]:
    """Run a WASI command module once over `readings`: one line each on stdin."""
    if "_start" not in compiled.info.exported_functions:
        raise errors.InvalidModule(compiled.name, "is not a WASI command: it exports no _start")
    check_imports(compiled, ())
    output = _Output(logging.getLogger(f"agent.module.{compiled.name}"), capture_stdout=True)
    base = wasi or WasiSpec()
    spec = WasiSpec(
        args=base.args,
        env=base.env,
        dirs=base.dirs,
        stdin=b"".join(r.to_json_line() for r in readings),
        output=output,
    )
    instance = compiled.instantiate((), spec, limits or Limits())
    try:
        instance.call("_start")
    except errors.ModuleExit as err:
        if err.code != 0:
            raise
    except errors.ModuleTrap as err:
        cause = _trap_cause(instance, err)
        if cause is not None:
            raise cause from err
        raise
    finally:
        output.flush()
        instance.close()
    return [Emitted(topic, line) for line in output.stdout_lines if line]
