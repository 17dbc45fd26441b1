"""The WasmEdge engine adapter, on our own ctypes binding.

A compiled module is a parsed and validated AST (with native code when AOT-compiled),
shared by its instances (`_instance`); each instance is a VM of its own. AOT code is
compiled with stop checks of our own where the library can run them, cached by the
module's digest, the library's version and the flavour of code.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agent import errors
from agent.wasm._api import CompiledModule, HostFunction, Limits, ModuleInfo, WasiSpec
from agent.wasm.engines._cache import CompileCache, cache_key
from agent.wasm.engines.wasmedge import _ffi, _handles
from agent.wasm.engines.wasmedge._instance import Instance, Prepared
from agent.wasm.engines.wasmedge._watchdog import Watchdog
from agent.wasm.rewrite import GUARD_VERSION, Uncheckable, guarded, memory_minimum

log = logging.getLogger(__name__)

_THREADS_PROPOSAL = {(0, 17): 16}
"""`WasmEdge_Proposal_Threads` (our stop checks load atomically) by release, as the enum
is renumbered between releases; elsewhere AOT code keeps WasmEdge's own checks."""


class WasmEdgeEngine:
    """WasmEdge through libwasmedge: AOT where the library has the compiler."""

    def __init__(self, path: Path, *, cache_dir: Path | None = None, aot: bool = True) -> None:
        self.lib = _ffi.load(path)
        self._aot = aot and self.lib.has_compiler
        version = (self.lib.version.major, self.lib.version.minor)
        self._threads = _THREADS_PROPOSAL.get(version) if self._aot else None
        self._cache = CompileCache(cache_dir) if cache_dir else None
        self.watchdog = Watchdog()

    @property
    def name(self) -> str:
        return "wasmedge"

    @property
    def version(self) -> str:
        return str(self.lib.version)

    @property
    def mode(self) -> str:
        return "aot" if self._aot else "interpreter"

    def configure(
        self, limits: Limits | None = None, *, metered: bool = False, stop_checked: bool = False
    ) -> _handles.Configure:
        """A configure context for this engine's mode, with the instance's limits.

        Cost measuring (fuel) slows AOT code about twofold, so it is on only for
        instances with a fuel limit; AOT code for them is compiled with metering.
        Code with our own stop checks needs atomics and no interruptible code.
        """
        conf = _handles.Configure(self.lib)
        if metered:
            conf.meter()
        if self._aot:
            conf.aot(interruptible=not stop_checked)
        else:
            conf.interpret()
        if stop_checked and self._threads is not None:
            conf.add_proposal(self._threads)
        if limits is not None:
            conf.cap_memory(limits.memory_pages)
        return conf

    def compile(self, wasm: bytes, name: str) -> CompiledModule:
        return WasmEdgeModule(self, wasm, self.prepare(wasm, name, metered=False), name)

    def prepare(self, wasm: bytes, name: str, *, metered: bool) -> Prepared:
        """A parsed, validated AST: AOT-compiled (and metered, if asked) where we can."""
        if self._aot:
            code, stop_checked = self._aot_compile(wasm, name, metered)
        else:
            code, stop_checked = guarded(wasm, name), False
        try:
            with self.configure(metered=metered, stop_checked=stop_checked) as conf:
                with _handles.Loader(self.lib, conf) as loader:
                    ast = loader.parse(code)
                try:
                    with _handles.Validator(self.lib, conf) as validator:
                        validator.validate(ast)
                    signatures = ast.function_exports()
                    info = ModuleInfo(ast.imports(), frozenset(signatures))
                except BaseException:
                    ast.close()
                    raise
        except _handles.Refused as err:
            raise _invalid(name, err) from None
        return Prepared(ast, info, signatures, stop_checked)

    def _aot_compile(self, wasm: bytes, name: str, metered: bool) -> tuple[bytes, bool]:
        """The module with native code in a custom section, from the cache if there, and
        whether its loops carry our stop checks."""
        digest = hashlib.sha256(wasm).hexdigest()
        # Where our checks are possible, a module without them is one they cannot
        # stop: its own flavour, so code cached before they existed is not reused.
        flavours = (
            {True: "aot-O2-stop-checks", False: "aot-O2-interruptible-uncheckable"}
            if self._threads is not None
            else {False: "aot-O2-interruptible"}
        )
        keys = {
            checked: cache_key(
                digest,
                "wasmedge",
                self.version,
                flavour + ("-metered" if metered else ""),
                GUARD_VERSION,
            )
            for checked, flavour in flavours.items()
        }
        if self._cache is not None:
            for checked, key in keys.items():
                cached = self._cache.get(key)
                if cached is not None:
                    return cached, checked
        code, stop_checked = self._instrumented(wasm, name)
        # Compiling also validates; a malformed module fails here with the loader's word.
        with tempfile.TemporaryDirectory(prefix="edge-aot-") as tmp:
            out = Path(tmp) / "module.wasm"
            try:
                with (
                    self.configure(metered=metered, stop_checked=stop_checked) as conf,
                    _handles.Compiler(self.lib, conf) as compiler,
                ):
                    compiler.compile(code, out)
            except _handles.Refused as err:
                raise _invalid(name, err) from None
            artifact = out.read_bytes()
        if self._cache is not None:
            self._cache.put(keys[stop_checked], artifact)
        return artifact, stop_checked

    def _instrumented(self, wasm: bytes, name: str) -> tuple[bytes, bool]:
        """The module as it is compiled: guarded, with our stop checks where we can."""
        if self._threads is None:
            return guarded(wasm, name), False
        try:
            return guarded(wasm, name, stop_checks=True), True
        except Uncheckable as err:
            log.info(
                "module %s: %s; its deadline uses WasmEdge's interruptible code (slower)",
                name,
                err,
            )
            return guarded(wasm, name), False

    def close(self) -> None:
        """Stop the watchdog; the library stays loaded, as a process cannot unload it safely."""
        self.watchdog.close()


class WasmEdgeModule:
    """A validated AST module; instances load it into VMs of their own."""

    def __init__(self, engine: WasmEdgeEngine, wasm: bytes, prepared: Prepared, name: str) -> None:
        self._engine = engine
        self._wasm = wasm
        self._min_pages = memory_minimum(wasm)
        self._asts = {False: prepared}  # keyed by `metered`; the metered one made on demand
        self._name = name
        self._info = prepared.info

    @property
    def name(self) -> str:
        return self._name

    @property
    def info(self) -> ModuleInfo:
        return self._info

    def instantiate(self, host: Sequence[HostFunction], wasi: WasiSpec, limits: Limits) -> Instance:
        if self._min_pages > limits.memory_pages:
            # WasmEdge would shrink the declared minimum to the cap and run anyway.
            raise errors.MemoryLimitExceeded(
                self._name, f"needs more memory than its cap of {limits.memory_pages} pages"
            )
        # Only AOT code differs when metered; the interpreter meters through its VM config.
        metered = limits.fuel is not None and self._engine.mode == "aot"
        prepared = self._asts.get(metered)
        if prepared is None:
            prepared = self._engine.prepare(self._wasm, self._name, metered=metered)
            self._asts[metered] = prepared
        conf = self._engine.configure(
            limits, metered=limits.fuel is not None, stop_checked=prepared.stop_checked
        )
        return Instance(self._name, conf, self._engine.watchdog, prepared, host, wasi, limits)

    def close(self) -> None:
        for prepared in self._asts.values():
            prepared.ast.close()
        self._asts = {}


def _invalid(name: str, err: _handles.Refused) -> errors.InvalidModule:
    return errors.InvalidModule(name, f"is not a valid WebAssembly module: {err.message}")
