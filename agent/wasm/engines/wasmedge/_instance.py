"""One instance of a module: a VM of its own, so its memory cap, WASI context and
statistics are its own.

Fuel is WasmEdge's cost limit, refilled before each call. Deadlines: AOT code from
WasmEdge 0.17 carries stop checks of our own in its loops (`agent.wasm.rewrite`), and
the watchdog sets their flag. Elsewhere (older WasmEdge, the interpreter, a module the
rewrite does not know) it cancels a `WasmEdge_Async` of the VM, which sets the VM's
stop token that interruptible code checks at every block and loop, five times the
cost. That handle is made the first time one of the instance's calls overruns (its
thread would cost more than the rest of an instance start), while that call holds the
VM: both only share its lock. WasmEdge's result codes become the agent's errors here
(`_call_error`, and `_instantiation_error` while linking), and only here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, NamedTuple

from agent import errors
from agent.wasm._api import HostFunction, Limits, ModuleInfo, WasiSpec
from agent.wasm.engines.wasmedge import _ffi, _handles
from agent.wasm.engines.wasmedge._callbacks import (
    ErrorSlot,
    FrameMemory,
    bind,
    register,
    unregister,
)
from agent.wasm.engines.wasmedge._stdio import Stdio
from agent.wasm.engines.wasmedge._watchdog import Watchdog
from agent.wasm.rewrite import STOP_EXPORT

_VALUE_SIZE = ctypes.sizeof(_ffi.Value)
_INTERNAL = "edge_agent_internal"
"""A host module of our own in every VM; its `nop` clears a stop token left behind."""


def _nop(_memory: object) -> None:
    """The body of `edge_agent_internal.nop`; entering it consumes a stale stop token."""


class Prepared(NamedTuple):
    """A validated AST, what it imports and exports, and whether its loops carry our
    stop checks."""

    ast: _handles.ASTModule
    info: ModuleInfo
    signatures: dict[str, tuple[int, int]]
    stop_checked: bool


class _Export(NamedTuple):
    """An export's name and value arrays, made on its first call and reused."""

    name: _ffi.String
    nparams: int
    params: Any
    returns: Any
    nreturns: int


class Instance:
    def __init__(
        self,
        name: str,
        conf: _handles.Configure,
        watchdog: Watchdog,
        prepared: Prepared,
        host: Sequence[HostFunction],
        wasi: WasiSpec,
        limits: Limits,
    ) -> None:
        self._lib = lib = conf.lib
        self._watchdog = watchdog
        self._name = name
        self._limits = limits
        self._signatures = prepared.signatures
        self._slot = ErrorSlot()
        self._keys: list[int] = []
        self._stdio: Stdio | None = None
        self._output = wasi.output
        self._exports: dict[str, _Export] = {}
        self._keep: list[bytes] = []  # the export names' buffers
        self._canceller: _handles.Async | None = None
        self._flag: ctypes.c_int32 | None = None  # our stop checks' flag, where they are
        try:
            modules = self._host_modules([*host, HostFunction(_INTERNAL, "nop", 0, False, _nop)])
            self._vm = _handles.VM(lib, conf, modules)
        except BaseException as err:
            unregister(self._keys)
            conf.close()  # the VM owns it once made, and closed it if it failed
            if isinstance(err, _handles.HostModuleRejected):
                raise errors.InvalidModule(self._name, str(err)) from err
            raise
        try:
            self._link(host, wasi, prepared)
        except BaseException:
            self.close()
            raise
        self._execute = self._vm.executor()
        self._stats = self._vm.statistics()
        memory = self._vm.find_memory("memory")
        self._memory = FrameMemory(lib, memory)
        if memory:
            bind(self._keys, self._memory)
        if prepared.stop_checked:
            # One page that never grows: the address holds for the instance's life.
            address = self._vm.memory_address(self._vm.find_memory(STOP_EXPORT), 0, 4)
            self._flag = ctypes.c_int32.from_address(address)

    def _host_modules(self, host: Sequence[HostFunction]) -> list[_handles.HostModule]:
        """One host module per import module name, its functions bound to our trampoline."""
        by_module: dict[str, list[HostFunction]] = {}
        for fn in host:
            by_module.setdefault(fn.module, []).append(fn)
        modules = []
        for module_name, fns in by_module.items():
            hm = _handles.HostModule(self._lib, module_name)
            modules.append(hm)
            for fn in fns:
                key = register(self._lib, fn.func, fn.params, fn.returns_value, self._slot)
                self._keys.append(key)
                hm.add_function(fn.name, fn.params, int(fn.returns_value), key)
        return modules

    def _link(self, host: Sequence[HostFunction], wasi: WasiSpec, prepared: Prepared) -> None:
        self._init_wasi(wasi)
        try:
            self._vm.instantiate(prepared.ast)
        except _handles.Refused as err:
            provided = {(fn.module, fn.name) for fn in host}
            raise self._instantiation_error(err, prepared.info.imports, provided) from None

    def _init_wasi(self, wasi: WasiSpec) -> None:
        stdio = None
        if self._vm.takes_stdio:
            self._stdio = Stdio(wasi.stdin)
            stdio = self._stdio.give()
        elif wasi.stdin:
            raise errors.EngineUnavailable(
                f"WasmEdge {self._lib.version} cannot give a module its own stdin (0.16 can)"
            )
        self._vm.init_wasi(
            [self._name, *wasi.args],
            [f"{k}={v}" for k, v in wasi.env],
            [f"{d.guest}:{d.host}" + ("" if d.writable else ":readonly") for d in wasi.dirs],
            stdio,
        )

    def _instantiation_error(
        self,
        err: _handles.Refused,
        imports: frozenset[tuple[str, str]],
        provided: set[tuple[str, str]],
    ) -> errors.ModuleError:
        if err.result & 0xFFFFFF in (_ffi.UNKNOWN_IMPORT, _ffi.INCOMPATIBLE_IMPORT):
            missing = sorted(
                f"{m}.{n}"
                for m, n in imports
                if m != "wasi_snapshot_preview1" and (m, n) not in provided
            )
            return errors.MissingImport(self._name, f"cannot be linked ({err.message}): {missing}")
        if "memory" in err.message or "limit" in err.message:
            return errors.MemoryLimitExceeded(
                self._name, f"needs more memory than its cap of {self._limits.memory_pages} pages"
            )
        return self._call_error(err.result)

    def _stop(self) -> None:
        """Stop the running call; on the watchdog's thread, under its lock."""
        if self._flag is not None:
            self._flag.value = 1
            return
        if self._canceller is None:
            # An Async bound to this VM, finished at once, kept only to cancel with.
            self._canceller = self._vm.start("\0edge-agent-canceller")
            self._canceller.wait()
        self._canceller.cancel()

    def _clear_stop(self) -> None:
        """Consume a stop token that arrived after the call had already finished."""
        self._vm.execute_registered(_INTERNAL, "nop")

    @property
    def memory(self) -> FrameMemory:
        return self._memory

    def call(self, function: str, *args: int) -> int | None:
        if self._vm.closed:
            # The executor and statistics are bound to the VM's pointer, now freed.
            raise _handles.ClosedHandle(f"instance of {self._name!r} used after close")
        export = self._exports.get(function)
        if export is None:
            export = self._export(function)
        name, nparams, params, returns, nret = export
        if len(args) != nparams:
            raise errors.ModuleError(
                self._name, f"{function} takes {nparams} arguments, given {len(args)}"
            )
        for i, arg in enumerate(args):
            _ffi.I32_VALUE.pack_into(params, i * _VALUE_SIZE, arg & 0xFFFFFFFF, _ffi.I32_TYPE)
        if self._limits.fuel is not None:
            self._stats.refuel(self._limits.fuel)
        deadline = self._limits.deadline_ms
        if deadline is not None:
            self._watchdog.start(id(self), deadline, self._stop)
        try:
            result = self._execute(name, params, nparams, returns, nret)
        finally:
            fired = deadline is not None and self._watchdog.finish(id(self))
            if fired and self._flag is not None:
                self._flag.value = 0
            elif fired and result & 0xFFFFFF != _ffi.INTERRUPTED:
                self._clear_stop()
            self._memory.changed()
            self._flush_output()
        error = self._slot.take()
        if error is not None:
            raise error
        if fired and self._flag is not None and result & 0xFFFFFF == _ffi.UNREACHABLE:
            result = _ffi.INTERRUPTED  # our stop check's trap
        if result:
            raise self._call_error(result)
        return int(returns[0].Value[0] & 0xFFFFFFFF) if nret else None

    def _export(self, function: str) -> _Export:
        signature = self._signatures.get(function)
        if signature is None:
            raise errors.InvalidModule(self._name, f"exports no function {function!r}")
        nparams, nret = signature
        name, keep = _ffi.string(function)
        self._keep.append(keep)
        export = self._exports[function] = _Export(
            name, nparams, (_ffi.Value * max(nparams, 1))(), (_ffi.Value * max(nret, 1))(), nret
        )
        return export

    def _call_error(self, result: int) -> errors.ModuleError:
        code = result & 0xFFFFFF
        if code == _ffi.TERMINATED and not result >> 24:
            return errors.ModuleExit(self._name, self._vm.wasi_exit_code())
        if code == _ffi.COST_LIMIT_EXCEEDED:
            return errors.FuelExhausted(self._name, "used up its fuel")
        if code == _ffi.INTERRUPTED:
            return errors.ModuleTimeout(
                self._name, f"missed its deadline of {self._limits.deadline_ms} ms"
            )
        if code == _ffi.FUNC_NOT_FOUND:
            return errors.InvalidModule(self._name, "called a function it does not export")
        return errors.ModuleTrap(self._name, f"trapped: {self._lib.message(result)}")

    def _flush_output(self) -> None:
        if self._stdio is None or self._output is None:
            return
        for stream, data in self._stdio.drain():
            self._output(stream, data)

    def close(self) -> None:
        if self._canceller is not None:
            self._canceller.close()
            self._canceller = None
        self._vm.close()
        unregister(self._keys)
        self._keys = []
        if self._stdio is not None:
            self._stdio.close()
            self._stdio = None
