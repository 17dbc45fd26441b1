"""Foreign declarations for libwasmedge: finding it, loading it, and its signatures.

Everything that knows a C signature lives here, apart from the wrappers that own
handles. WasmEdge 0.14 to 0.17 share the SONAME `libwasmedge.so.0` but not the API:
0.17 widened memory offsets and page counts to 64 bits, so signatures are chosen from
the version the library reports, and optional functions are looked up by name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int32,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import EngineUnavailable

SUPPORTED = ((0, 14), (0, 17))
"""Oldest and newest (major, minor) this binding knows the signatures of."""


class String(Structure):
    """`WasmEdge_String`, passed by value."""

    _fields_ = (("Length", c_uint32), ("Buf", c_char_p))


class Bytes(Structure):
    """`WasmEdge_Bytes`, passed by value."""

    _fields_ = (("Length", c_uint32), ("Buf", POINTER(c_uint8)))


class ValType(Structure):
    """`WasmEdge_ValType`: eight bytes, `00 00 <code> 40 00 00 00 00` for number types."""

    _fields_ = (("Data", c_uint8 * 8),)


class Value(Structure):
    """`WasmEdge_Value`: 128-bit bits, then the type; 32 bytes, 16-aligned in C.

    ctypes cannot express the alignment before Python 3.13, so the explicit padding
    gives the C size and array stride; values are only ever passed by pointer.
    """

    _fields_ = (("Value", c_uint64 * 2), ("Type", ValType), ("_pad", c_uint8 * 8))


I32_CODE = 0x7F


def i32_type() -> ValType:
    t = ValType()
    t.Data[2] = I32_CODE
    t.Data[3] = 0x40
    return t


Result = c_uint32
"""`WasmEdge_Result` is a one-field struct returned in a register; read as its code."""

HostFunc = ctypes.CFUNCTYPE(c_uint32, c_void_p, c_void_p, c_void_p, c_void_p)
"""(Data, CallingFrame, Params, Returns): plain addresses, read in bulk by the trampoline."""
I32_VALUE = struct.Struct("<Q8x8s8x")
"""One `WasmEdge_Value` holding an i32: the low 64 bits of `Value`, then `Type`."""
I32_TYPE = bytes(i32_type())
"""The `Type` bytes to pack with `I32_VALUE`."""

# Result codes (`category << 24 | code`; category 0 is WasmEdge's own).
OK = 0x00
TERMINATED = 0x01
COST_LIMIT_EXCEEDED = 0x03
FUNC_NOT_FOUND = 0x05
INTERRUPTED = 0x07
UNREACHABLE = 0x40A
UNKNOWN_IMPORT = 0x302
INCOMPATIBLE_IMPORT = 0x301
USER_ERROR = 1 << 24
"""A host function's failure: category 1 (user), code chosen by the host."""

HOST_REG_WASI = 0
EXTERNAL_FUNCTION = 0
RUN_MODE_AOT = 2
OUTPUT_FORMAT_WASM = 1
OPT_O2 = 2


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def candidates(explicit: Path | None = None) -> list[Path]:
    """Where to look for the library, in order: the operator's word first."""
    found: list[Path] = []
    if explicit is not None:
        found.append(explicit)
    env = os.environ.get("WASMEDGE_LIB")
    if env:
        found.append(Path(env))
    for directory in (Path.home() / ".wasmedge/lib", Path("/usr/local/lib"), Path("/usr/lib")):
        found.extend([directory / "libwasmedge.so", directory / "libwasmedge.so.0"])
    linker = ctypes.util.find_library("wasmedge")
    if linker:
        found.append(Path(linker))
    return found


def find_library(explicit: Path | None = None) -> Path:
    """The first candidate that exists, or EngineUnavailable listing where we looked."""
    looked = candidates(explicit)
    for path in looked:
        if path.is_absolute() and path.exists():
            return path
        if not path.is_absolute() and path.name:
            return path  # a bare SONAME from the linker cache; dlopen resolves it
    raise EngineUnavailable(
        "libwasmedge not found (set WASMEDGE_LIB or engine.wasmedge_lib); looked in "
        + ", ".join(str(p) for p in looked)
    )


_WASI_INIT = [c_void_p, *[POINTER(c_char_p), c_uint32] * 3]
"""The module, then args, envs and preopens, each as `const char *const *` and a count."""

_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "WasmEdge_VersionGet": (c_char_p, []),
    "WasmEdge_VersionGetMajor": (c_uint32, []),
    "WasmEdge_VersionGetMinor": (c_uint32, []),
    "WasmEdge_VersionGetPatch": (c_uint32, []),
    "WasmEdge_LogOff": (None, []),
    "WasmEdge_ResultGetMessage": (c_char_p, [Result]),
    "WasmEdge_StringCreateByBuffer": (String, [c_char_p, c_uint32]),
    "WasmEdge_StringDelete": (None, [String]),
    "WasmEdge_ConfigureCreate": (c_void_p, []),
    "WasmEdge_ConfigureDelete": (None, [c_void_p]),
    "WasmEdge_ConfigureAddHostRegistration": (None, [c_void_p, c_int32]),
    "WasmEdge_ConfigureSetForceInterpreter": (None, [c_void_p, c_bool]),
    "WasmEdge_ConfigureStatisticsSetInstructionCounting": (None, [c_void_p, c_bool]),
    "WasmEdge_ConfigureStatisticsSetCostMeasuring": (None, [c_void_p, c_bool]),
    "WasmEdge_ConfigureCompilerSetOptimizationLevel": (None, [c_void_p, c_int32]),
    "WasmEdge_ConfigureCompilerSetOutputFormat": (None, [c_void_p, c_int32]),
    "WasmEdge_ConfigureCompilerSetInterruptible": (None, [c_void_p, c_bool]),
    "WasmEdge_ConfigureAddProposal": (None, [c_void_p, c_int32]),
    "WasmEdge_LoaderCreate": (c_void_p, [c_void_p]),
    "WasmEdge_LoaderDelete": (None, [c_void_p]),
    "WasmEdge_LoaderParseFromBytes": (Result, [c_void_p, POINTER(c_void_p), Bytes]),
    "WasmEdge_ValidatorCreate": (c_void_p, [c_void_p]),
    "WasmEdge_ValidatorDelete": (None, [c_void_p]),
    "WasmEdge_ValidatorValidate": (Result, [c_void_p, c_void_p]),
    "WasmEdge_ASTModuleDelete": (None, [c_void_p]),
    "WasmEdge_ASTModuleListImportsLength": (c_uint32, [c_void_p]),
    "WasmEdge_ASTModuleListImports": (c_uint32, [c_void_p, POINTER(c_void_p), c_uint32]),
    "WasmEdge_ASTModuleListExportsLength": (c_uint32, [c_void_p]),
    "WasmEdge_ASTModuleListExports": (c_uint32, [c_void_p, POINTER(c_void_p), c_uint32]),
    "WasmEdge_ImportTypeGetModuleName": (String, [c_void_p]),
    "WasmEdge_ImportTypeGetExternalName": (String, [c_void_p]),
    "WasmEdge_ExportTypeGetExternalType": (c_int32, [c_void_p]),
    "WasmEdge_ExportTypeGetExternalName": (String, [c_void_p]),
    "WasmEdge_ExportTypeGetFunctionType": (c_void_p, [c_void_p, c_void_p]),
    "WasmEdge_FunctionTypeGetParametersLength": (c_uint32, [c_void_p]),
    "WasmEdge_FunctionTypeGetReturnsLength": (c_uint32, [c_void_p]),
    "WasmEdge_StoreCreate": (c_void_p, []),
    "WasmEdge_StoreDelete": (None, [c_void_p]),
    "WasmEdge_ExecutorCreate": (c_void_p, [c_void_p, c_void_p]),
    "WasmEdge_ExecutorDelete": (None, [c_void_p]),
    "WasmEdge_ExecutorRegisterImport": (Result, [c_void_p, c_void_p, c_void_p]),
    "WasmEdge_VMCreate": (c_void_p, [c_void_p, c_void_p]),
    "WasmEdge_VMDelete": (None, [c_void_p]),
    "WasmEdge_VMRegisterModuleFromImport": (Result, [c_void_p, c_void_p]),
    "WasmEdge_VMLoadWasmFromASTModule": (Result, [c_void_p, c_void_p]),
    "WasmEdge_VMValidate": (Result, [c_void_p]),
    "WasmEdge_VMInstantiate": (Result, [c_void_p]),
    "WasmEdge_VMExecute": (
        Result,
        [c_void_p, String, POINTER(Value), c_uint32, POINTER(Value), c_uint32],
    ),
    "WasmEdge_VMExecuteRegistered": (
        Result,
        [c_void_p, String, String, POINTER(Value), c_uint32, POINTER(Value), c_uint32],
    ),
    "WasmEdge_VMAsyncExecute": (c_void_p, [c_void_p, String, POINTER(Value), c_uint32]),
    "WasmEdge_AsyncWait": (None, [c_void_p]),
    "WasmEdge_AsyncCancel": (None, [c_void_p]),
    "WasmEdge_AsyncDelete": (None, [c_void_p]),
    "WasmEdge_VMGetImportModuleContext": (c_void_p, [c_void_p, c_int32]),
    "WasmEdge_VMGetActiveModule": (c_void_p, [c_void_p]),
    "WasmEdge_VMGetStatisticsContext": (c_void_p, [c_void_p]),
    "WasmEdge_StatisticsSetCostLimit": (None, [c_void_p, c_uint64]),
    "WasmEdge_StatisticsClear": (None, [c_void_p]),
    "WasmEdge_ModuleInstanceInitWASI": (None, _WASI_INIT),
    "WasmEdge_ModuleInstanceWASIGetExitCode": (c_uint32, [c_void_p]),
    "WasmEdge_ModuleInstanceFindMemory": (c_void_p, [c_void_p, String]),
    "WasmEdge_ModuleInstanceCreate": (c_void_p, [String]),
    "WasmEdge_ModuleInstanceDelete": (None, [c_void_p]),
    "WasmEdge_ModuleInstanceAddFunction": (None, [c_void_p, String, c_void_p]),
    "WasmEdge_FunctionTypeCreate": (
        c_void_p,
        [POINTER(ValType), c_uint32, POINTER(ValType), c_uint32],
    ),
    "WasmEdge_FunctionTypeDelete": (None, [c_void_p]),
    "WasmEdge_FunctionInstanceCreate": (c_void_p, [c_void_p, HostFunc, c_void_p, c_uint64]),
    "WasmEdge_CallingFrameGetMemoryInstance": (c_void_p, [c_void_p, c_uint32]),
    "WasmEdge_CompilerCreate": (c_void_p, [c_void_p]),
    "WasmEdge_CompilerDelete": (None, [c_void_p]),
    "WasmEdge_CompilerCompileFromBytes": (Result, [c_void_p, Bytes, c_char_p]),
}

_OPTIONAL: dict[str, tuple[Any, list[Any]]] = {
    # 0.16 and newer: stdio of the WASI module to descriptors we choose.
    "WasmEdge_ModuleInstanceInitWASIWithFds": (None, [*_WASI_INIT, c_int32, c_int32, c_int32]),
    # 0.17 and newer: AOT code runs only in AOT mode.
    "WasmEdge_ConfigureSetRunMode": (None, [c_void_p, c_int32]),
}


def _sized(version: Version) -> dict[str, tuple[Any, list[Any]]]:
    """Signatures whose integer widths changed in 0.17."""
    wide = (version.major, version.minor) >= (0, 17)
    size = c_uint64 if wide else c_uint32
    return {
        "WasmEdge_ConfigureSetMaxMemoryPage": (None, [c_void_p, size]),
        "WasmEdge_MemoryInstanceGetPointer": (c_void_p, [c_void_p, size, size]),
        "WasmEdge_MemoryInstanceGetPageSize": (size, [c_void_p]),
    }


class Library:
    """libwasmedge, loaded once per path, with every function we use declared."""

    def __init__(self, path: Path) -> None:
        try:
            # RTLD_GLOBAL: plugins such as WASI-NN must share the library's symbols.
            self.cdll = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise EngineUnavailable(f"cannot load {path}: {err}") from err
        self.path = path
        try:
            self.version = self._read_version()
        except AttributeError as err:
            raise EngineUnavailable(f"{path} is not libwasmedge: {err}") from err
        if not SUPPORTED[0] <= (self.version.major, self.version.minor) <= SUPPORTED[1]:
            raise EngineUnavailable(
                f"{path} is WasmEdge {self.version}; supported are "
                f"{SUPPORTED[0][0]}.{SUPPORTED[0][1]} to {SUPPORTED[1][0]}.{SUPPORTED[1][1]}"
            )
        self.optional: set[str] = set()
        try:
            for name, (restype, argtypes) in {**_SIGNATURES, **_sized(self.version)}.items():
                self._declare(name, restype, argtypes)
        except AttributeError as err:
            raise EngineUnavailable(f"{path} lacks a function this binding needs: {err}") from err
        for name, (restype, argtypes) in _OPTIONAL.items():
            if hasattr(self.cdll, name):
                self._declare(name, restype, argtypes)
                self.optional.add(name)
        self.has_compiler = self._probe_compiler()

    def _read_version(self) -> Version:
        for name in (
            "WasmEdge_VersionGetMajor",
            "WasmEdge_VersionGetMinor",
            "WasmEdge_VersionGetPatch",
        ):
            getattr(self.cdll, name).restype = c_uint32
            getattr(self.cdll, name).argtypes = []
        return Version(
            self.cdll.WasmEdge_VersionGetMajor(),
            self.cdll.WasmEdge_VersionGetMinor(),
            self.cdll.WasmEdge_VersionGetPatch(),
        )

    def _declare(self, name: str, restype: Any, argtypes: list[Any]) -> None:
        func = getattr(self.cdll, name)
        func.restype = restype
        func.argtypes = argtypes

    def _probe_compiler(self) -> bool:
        """Builds without LLVM return NULL from CompilerCreate."""
        conf = self.cdll.WasmEdge_ConfigureCreate()
        try:
            compiler = self.cdll.WasmEdge_CompilerCreate(conf)
            if compiler:
                self.cdll.WasmEdge_CompilerDelete(compiler)
            return bool(compiler)
        finally:
            self.cdll.WasmEdge_ConfigureDelete(conf)

    def message(self, result: int) -> str:
        text = self.cdll.WasmEdge_ResultGetMessage(result)
        return text.decode("utf-8", "replace") if text else f"error 0x{result:x}"


_LOADED: dict[Path, Library] = {}


def load(path: Path) -> Library:
    """The library at `path`, loaded and declared once per process."""
    lib = _LOADED.get(path)
    if lib is None:
        lib = _LOADED[path] = Library(path)
        lib.cdll.WasmEdge_LogOff()
    return lib


def string(text: str | bytes) -> tuple[String, bytes]:
    """A borrowed `WasmEdge_String`; keep the returned bytes alive while it is used."""
    raw = text.encode() if isinstance(text, str) else text
    return String(len(raw), raw), raw


def read_string(s: String) -> str:
    return ctypes.string_at(s.Buf, s.Length).decode("utf-8", "replace") if s.Length else ""


def bytes_of(data: bytes) -> tuple[Bytes, Any]:
    """A borrowed `WasmEdge_Bytes` over `data`; keep the returned buffer alive."""
    buf = (c_uint8 * len(data)).from_buffer_copy(data)
    return Bytes(len(data), ctypes.cast(buf, POINTER(c_uint8))), buf
