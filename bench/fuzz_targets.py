"""The fuzz targets of `bench/fuzz.py`: one per parser of outside input, each with the
errors that parser is documented to answer bad input with.

A target takes bytes; where a parser takes several inputs, the first byte chooses the
mode (which topic, signed or not, which document) and the rest is the input. Modes that
sign with the fuzz key let the fuzzer past the signature check, into what is parsed only
after a trusted key vouched for it. Everything runs offline, in a scratch directory.

The agent's modules are imported inside each setup, not at the top: atheris instruments
a module for coverage as it is imported, inside `bench/fuzz.py`'s instrumenting block.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
CLOCK = 1_764_118_800.0
"""The signed-command router's clock: signed seeds carry this `ts`."""
DIGEST = "sha256:" + "ab" * 32
"""The manifest digest the cosign target's signatures must name."""
_KEY_SECRET = 0x5EED_F022_ED6E_A6E7
"""The fuzz signing key's private value: fixed, so signed seeds stay valid."""


class WrongAnswer(Exception):
    """A parser answered, but with something its contract rules out."""


@dataclass(frozen=True)
class Target:
    name: str
    setup: Callable[[Path], AbstractContextManager[Callable[[bytes], None]]]
    """Makes the function to fuzz, given a scratch directory it may write in; closing
    it releases what the function holds (an event loop)."""
    allowed: Callable[[], tuple[type[BaseException], ...]]
    """The documented errors for bad input; anything else escaped."""
    max_len: int = 8192


def _must(parse: Callable[..., Any], *args: Any) -> Any:
    """`parse(*args)`, which must succeed: it reads what the agent itself wrote."""
    try:
        return parse(*args)
    except Exception as err:
        raise WrongAnswer(f"cannot read its own output: {err!r:.200}") from err


def fuzz_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(_KEY_SECRET, ec.SECP256R1())


def _sign(data: bytes) -> bytes:
    return fuzz_key().sign(data, ec.ECDSA(hashes.SHA256()))


# --- commands ------------------------------------------------------------------------


@contextmanager
def _commands(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    from agent._json import parse_json
    from agent._ratelimit import TokenBucket
    from agent.commands import COMMANDS, CommandRouter, CommandVerifier, signed_bytes
    from agent.config import CommandsConfig
    from agent.errors import CommandFailed

    logging.disable(logging.CRITICAL)
    loop = asyncio.new_event_loop()
    ticks = iter(range(1 << 62))

    def routers(signed: bool) -> CommandRouter:
        config = CommandsConfig(
            dedupe_size=64, require_signature=signed, trusted_keys=(scratch / "unused.pub",)
        )
        verifier = CommandVerifier([fuzz_key().public_key()], 300, clock=lambda: CLOCK)
        # A clock a second ahead at each look: the rate limit never refuses here.
        bucket = TokenBucket(1.0, 1, clock=lambda: float(next(ticks)))
        router = CommandRouter(
            config, prefix="edge", node_id="n1", verifier=verifier, bucket=bucket
        )
        for i, command in enumerate(COMMANDS.values()):
            router.register(command, _echo if i % 3 else _fails)
        return router

    async def _echo(args: Any) -> Any:
        return args

    async def _fails(args: Any) -> Any:
        raise CommandFailed(f"refused {args!r:.40}")

    plain, signed = routers(False), routers(True)
    names = [*COMMANDS, "no.such.command"]

    def run(data: bytes) -> None:
        if not data:
            return
        head, payload = data[0], data[1:]
        name = names[head % len(names)]
        topic = f"edge/{'fleet' if head & 0x80 else 'n1'}/cmd/{name}"
        mode = (head >> 4) & 3
        if mode == 2:
            payload = _signed_payload(topic, payload, parse_json, signed_bytes)
        router = plain if mode == 0 else signed
        reply = loop.run_until_complete(router.handle(topic, payload))
        if reply is None:
            raise WrongAnswer(f"no reply on {topic}")
        body = json.loads(reply.payload)
        if body.get("status") not in ("ok", "error") or body.get("node") != "n1":
            raise WrongAnswer(f"not an envelope: {reply.payload[:200]!r}")

    try:
        yield run
    finally:
        loop.close()
        logging.disable(logging.NOTSET)  # the test run that called us logs again


def _signed_payload(
    topic: str, payload: bytes, parse: Callable[[bytes], Any], canonical: Any
) -> bytes:
    """`payload` with a valid `sig` added, where it is a request the fuzz key can sign."""
    try:
        request = parse(payload)
        if not isinstance(request, dict):
            return payload
        request = {k: v for k, v in request.items() if k != "sig"}
        request["sig"] = base64.b64encode(_sign(canonical(topic, request))).decode()
        return json.dumps(request).encode()
    except ValueError:
        return payload


def _command_seeds() -> list[bytes]:
    from agent.commands import COMMANDS

    names = [*COMMANDS, "no.such.command"]

    def head(name: str, mode: int) -> bytes:
        return bytes([names.index(name) | mode << 4])

    requests: list[tuple[str, dict[str, Any]]] = [
        ("module.list", {"id": "a1", "args": {}}),
        ("module.deploy", {"id": 7, "args": {"reference": "registry.local:5000/edge/scale:1.0"}}),
        ("module.remove", {"id": "r", "args": {"name": "scale"}}),
        ("device.write", {"id": "w", "args": {"device": "pump", "point": "sp", "value": 1.5}}),
        ("log.level", {"id": "l", "args": {"level": "debug", "logger": "agent.modbus"}}),
    ]
    seeds = [head(name, 0) + json.dumps(doc).encode() for name, doc in requests]
    for name, doc in requests[:3]:
        signed = {**doc, "ts": int(CLOCK), "nonce": f"nonce-{name}"}
        seeds.append(head(name, 2) + json.dumps(signed).encode())
    return seeds


# --- readings ------------------------------------------------------------------------


@contextmanager
def _readings(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    from agent._json import parse_json
    from agent.reading import Reading

    def run(data: bytes) -> None:
        reading = Reading.from_json(parse_json(data))
        # What the agent writes it must read back (the journal, `module run`).
        again = _must(Reading.from_json, json.loads(reading.to_json_line()))
        if again.to_json_line() != reading.to_json_line():
            raise WrongAnswer(f"changed on the way back: {reading} became {again}")

    yield run


def _reading_seeds() -> list[bytes]:
    lines = (ROOT / "modules/anomaly/pump-readings.jsonl").read_bytes().splitlines()
    series = {
        "device": "pump-1",
        "ts": 1764118800.5,
        "seq": 3,
        "values": {"t": {"value": 21.5, "unit": "degC", "quality": "uncertain"}},
        "series": {"v": {"type": "i16", "unit": "g", "data": [1, -2], "quality": "bad"}},
    }
    return [lines[0], lines[-1], json.dumps(series).encode()]


# --- config files --------------------------------------------------------------------


def _toml_file(scratch: Path, name: str, load: Callable[[Path], Any]) -> Callable[[bytes], None]:
    path = scratch / name
    (scratch / "devices").mkdir(exist_ok=True)
    shutil.copy(ROOT / "config/devices/pump.toml", scratch / "devices/pump.toml")

    def run(data: bytes) -> None:
        path.write_bytes(data)
        load(path)

    return run


@contextmanager
def _config(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    from agent.config import load_config

    yield _toml_file(scratch, "agent.toml", load_config)


@contextmanager
def _registers(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    from agent.config import load_register_map

    yield _toml_file(scratch, "map.toml", load_register_map)


def _config_errors() -> tuple[type[BaseException], ...]:
    from agent.errors import ConfigError

    return (ConfigError,)


# --- module packages -----------------------------------------------------------------


@contextmanager
def _module(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    """Mode 0: `module.toml`; 1: the manifest layer (JSON); 2: the smoke-test readings."""
    from agent.supply._manifest import ModuleManifest
    from agent.supply._package import read_module_dir

    shutil.copy(ROOT / "modules/dist/scale.wasm", scratch / "scale.wasm")
    toml = scratch / "module.toml"
    readings = scratch / "readings.jsonl"
    good_toml = (
        'name = "scale"\nversion = "1.0.0"\nwasm = "scale.wasm"\n'
        'test_readings = "readings.jsonl"\n[capabilities]\nemit = ["scaled"]\n'
    )
    good_readings = b"\n".join(_reading_seeds()[:2])

    def run(data: bytes) -> None:
        mode, rest = (data[0] % 3, data[1:]) if data else (0, b"")
        if mode == 1:
            ModuleManifest.parse(rest, "manifest layer")
            return
        toml.write_bytes(rest if mode == 0 else good_toml.encode())
        readings.write_bytes(good_readings if mode == 0 else rest)
        _, manifest = read_module_dir(scratch)
        _must(ModuleManifest.parse, manifest.to_bytes(), "its own manifest")

    yield run


def _module_seeds() -> list[bytes]:
    from agent.supply._package import read_module_dir

    seeds = []
    for name in ("scale", "window-stats", "anomaly"):
        text = (ROOT / "modules" / name / "module.toml").read_text()
        text = text.replace('"../dist/', '"').replace(f'"{name}.wasm"', '"scale.wasm"')
        text = text.replace("../anomaly/pump-readings.jsonl", "readings.jsonl")
        text = text.replace('"pump-readings.jsonl"', '"readings.jsonl"')
        seeds.append(b"\x00" + text.encode())
    with tempfile.TemporaryDirectory() as directory:
        small = Path(directory)
        (small / "module.toml").write_bytes(seeds[0][1:])
        (small / "readings.jsonl").write_bytes(b"\n".join(_reading_seeds()))
        _, manifest = read_module_dir(small)
    seeds.append(b"\x01" + manifest.to_bytes())
    seeds.append(b"\x02" + b"\n".join(_reading_seeds()))
    return seeds


def _supply_errors() -> tuple[type[BaseException], ...]:
    from agent.errors import SupplyError

    return (SupplyError,)


# --- OCI documents -------------------------------------------------------------------


@contextmanager
def _oci(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    """Mode 0: image manifest; 1: image index; 2: a reference; 3: a layout's index.json."""
    from agent.supply._layout import LayoutRepository
    from agent.supply._oci import Manifest, parse_index, parse_reference

    layout = LayoutRepository(scratch / "layout")
    blob = scratch / "layout/blobs/sha256" / DIGEST.removeprefix("sha256:")
    blob.parent.mkdir(parents=True)
    blob.write_bytes(_oci_seeds()[0][1:])
    loop = asyncio.new_event_loop()

    def run(data: bytes) -> None:
        mode, rest = (data[0] % 4, data[1:]) if data else (0, b"")
        if mode == 0:
            manifest = Manifest.parse(rest, "manifest")
            if _must(Manifest.parse, manifest.to_bytes(), "its own bytes") != manifest:
                raise WrongAnswer(f"{manifest} changed on the way back")
        elif mode == 1:
            parse_index(rest, "index")
        elif mode == 2:
            parse_reference(rest.decode("utf-8", "replace"))
        else:
            (scratch / "layout/index.json").write_bytes(rest)
            loop.run_until_complete(layout.get_manifest("1.0.0"))

    try:
        yield run
    finally:
        loop.close()


def _oci_seeds() -> list[bytes]:
    from agent.supply._oci import (
        MODULE_MANIFEST_LAYER,
        OCI_MANIFEST,
        REF_NAME,
        TITLE,
        WASM_CONFIG,
        WASM_LAYER,
        Descriptor,
        Manifest,
        index_bytes,
    )

    config = Descriptor.of(WASM_CONFIG, b'{"architecture":"wasm","os":"wasip1"}')
    wasm = Descriptor.of(WASM_LAYER, b"\0asm\1\0\0\0", {TITLE: "scale.wasm"})
    layer = Descriptor.of(MODULE_MANIFEST_LAYER, b'{"name":"scale","version":"1.0.0"}')
    manifest = Manifest(config, (wasm, layer)).to_bytes()
    subject = Descriptor(OCI_MANIFEST, DIGEST, 512)
    referrer = Manifest(config, (layer,), subject, "application/x-test").to_bytes()
    tagged = Descriptor(OCI_MANIFEST, DIGEST, 512, {REF_NAME: "1.0.0"})
    index = index_bytes([tagged, Descriptor(OCI_MANIFEST, DIGEST, 9, {}, "application/x")])
    return [
        b"\x00" + manifest,
        b"\x00" + referrer,
        b"\x01" + index,
        b"\x02registry.local:5000/edge/scale:1.0.0@" + DIGEST.encode(),
        b"\x02oci:modules/layout:1.0.0",
        b"\x03" + index,
    ]


# --- cosign --------------------------------------------------------------------------


@contextmanager
def _cosign(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    """Mode 0: a Sigstore bundle; 1: a bundle around this in-toto statement, signed by
    the trusted key; 2: a simple-signing payload, signed; 3: a public key file."""
    from agent.supply._keys import PublicKey, load_public_key
    from agent.supply._sign import IN_TOTO, pae, verify_bundle, verify_simple_signing

    keys = [PublicKey(fuzz_key().public_key(), "fuzz key")]
    pub = scratch / "cosign.pub"

    def run(data: bytes) -> None:
        mode, rest = (data[0] % 4, data[1:]) if data else (0, b"")
        if mode == 0:
            verify_bundle(rest, DIGEST, keys)
        elif mode == 1:
            verify_bundle(_bundle(rest, _sign(pae(IN_TOTO, rest))), DIGEST, keys)
        elif mode == 2:
            verify_simple_signing(rest, base64.b64encode(_sign(rest)).decode(), DIGEST, keys)
        else:
            pub.write_bytes(rest)
            load_public_key(pub)

    yield run


def _bundle(payload: bytes, signature: bytes) -> bytes:
    from agent.supply._sign import BUNDLE_MEDIA_TYPE, IN_TOTO

    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": IN_TOTO,
        "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
    }
    doc = {"mediaType": BUNDLE_MEDIA_TYPE, "dsseEnvelope": envelope}
    return json.dumps(doc).encode()


def _cosign_seeds() -> list[bytes]:
    from agent.supply._keys import PublicKey
    from agent.supply._sign import make_bundle, make_simple_signing

    key = fuzz_key()
    bundle = make_bundle(key, PublicKey(key.public_key(), "k").hint, "edge/scale", DIGEST)
    envelope = json.loads(bundle)["dsseEnvelope"]
    statement = base64.b64decode(envelope["payload"])
    payload, _ = make_simple_signing(key, "edge/scale", DIGEST)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return [b"\x00" + bundle, b"\x01" + statement, b"\x02" + payload, b"\x03" + pem]


# --- Modbus replies ------------------------------------------------------------------

_SCALES = ((1.0, 0.0), (0.1, -40.0), (-2.5, 1e300), (1e-300, 0.0))


@contextmanager
def _modbus(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    """Header: type, byte order, bit, flags (bit 0: words are 32-bit, so may be out of
    range; bits 1-2: scale and offset); then the reply's words, big-endian."""
    from agent.config import ByteOrder, DataType
    from agent.modbus import decode, encode
    from agent.modbus._codec import to_engineering, to_raw

    kinds: tuple[str, ...] = get_args(DataType)
    orders: tuple[str, ...] = get_args(ByteOrder)

    def run(data: bytes) -> None:
        if len(data) < 4:
            return
        kind, order = kinds[data[0] % len(kinds)], orders[data[1] % len(orders)]
        bit = data[2] % 17 if data[2] % 17 < 16 else None
        wide, (scale, offset) = data[3] & 1, _SCALES[(data[3] >> 1) % len(_SCALES)]
        body = data[4:]
        if wide:
            words = list(struct.unpack(f">{len(body) // 4}i", body[: len(body) // 4 * 4]))
        else:
            words = list(struct.unpack(f">{len(body) // 2}H", body[: len(body) // 2 * 2]))
        raw = decode(kind, order, words, bit)  # type: ignore[arg-type]
        value = to_engineering(raw, scale, offset)
        if kind != "bit":
            # A write of what was read: what `device.write` does with an operator's value.
            encode(kind, order, to_raw(kind, value, scale, offset), len(words))  # type: ignore[arg-type]

    yield run


def _modbus_seeds() -> list[bytes]:
    from agent.config import ByteOrder, DataType

    def head(kind: str, order: str, bit: int = 16, flags: int = 0) -> bytes:
        return bytes([get_args(DataType).index(kind), get_args(ByteOrder).index(order), bit, flags])

    return [
        head("float32", "ABCD", flags=2) + struct.pack(">2H", 0x41C8, 0x0000),
        head("float64", "CDAB") + struct.pack(">4H", 1, 2, 3, 4),
        head("bit", "ABCD", bit=3) + struct.pack(">H", 0b1000),
        head("string", "BADC") + b"pump-1\0\0",
        head("int16", "ABCD", flags=1) + struct.pack(">i", 5),
    ]


# --- fleet documents -----------------------------------------------------------------


_FLEET_TOPIC = "edge/group/line-1/desired"


@contextmanager
def _fleet(scratch: Path) -> Iterator[Callable[[bytes], None]]:
    """Mode 0: a desired-state document; 1: the same, signed by the fuzz key (so the
    fuzzer gets past the signature); 2: a node's report; 3: a rollout document."""
    from agent._json import parse_json
    from agent.commands import CommandVerifier, signed_bytes
    from agent.fleet import desired_payload, parse_desired, parse_report
    from agent.fleet._edit import entry_dict
    from agent.fleet._progress import parse_rollout

    verifier = CommandVerifier([fuzz_key().public_key()], 300)

    def run(data: bytes) -> None:
        mode, payload = (data[0] % 4, data[1:]) if data else (0, b"")
        if mode == 2:
            parse_report("edge/n1/report", payload)
            return
        if mode == 3:
            parse_rollout("edge/group/line-1/rollout", payload)
            return
        if mode == 1:
            payload = _signed_payload(_FLEET_TOPIC, payload, parse_json, signed_bytes)
        document = parse_desired(_FLEET_TOPIC, payload, verifier if mode == 1 else None)
        if document is not None:  # what the tool writes of it, a node must take
            modules = [entry_dict(m) for m in document.modules]
            again = desired_payload(_FLEET_TOPIC, document.revision, modules)
            _must(parse_desired, _FLEET_TOPIC, again, None)

    yield run


def _fleet_errors() -> tuple[type[BaseException], ...]:
    from agent.errors import DesiredStateError, RolloutError

    return (DesiredStateError, RolloutError)


def _fleet_seeds() -> list[bytes]:
    from agent.fleet import Report, ReportModule, ReportWanted

    desired = {
        "revision": 1765000000123,
        "modules": [
            {"name": "scale", "ref": "registry.local:5000/edge/scale:1.1.0",
             "digest": DIGEST, "config": {"factor": 2}},
            {"name": "meter", "absent": True},
        ],
    }  # fmt: skip
    report = Report(
        node="n1", groups=("line-1",), ts=CLOCK, agent="0.1.0", healthy=True,
        modules=(ReportModule(name="scale", version="1.1.0", digest=DIGEST, state="running"),),
        desired=(ReportWanted(name="scale", ref="registry.local:5000/edge/scale:1.1.0",
                              source="group:line-1", state="converged"),),
    )  # fmt: skip
    return [
        b"\x00" + json.dumps(desired).encode(),
        b"\x01" + json.dumps({**desired, "ts": int(CLOCK), "nonce": "fleet-seed"}).encode(),
        b"\x02" + report.payload(),
    ]


def _value_errors() -> tuple[type[BaseException], ...]:
    return (ValueError,)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("commands", _commands, lambda: (), max_len=16384),
        Target("reading", _readings, _value_errors),
        Target("config", _config, _config_errors, max_len=16384),
        Target("registers", _registers, _config_errors),
        Target("module", _module, _supply_errors),
        Target("oci", _oci, _supply_errors),
        Target("cosign", _cosign, _supply_errors),
        Target("modbus", _modbus, _value_errors, max_len=512),
        Target("fleet", _fleet, _fleet_errors),
    )
}
"""The command router answers every message itself: no exception may leave it."""

SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "commands": _command_seeds,
    "reading": _reading_seeds,
    "config": lambda: [(ROOT / f"config/{n}.toml").read_bytes() for n in ("demo", "agent")],
    "registers": lambda: [(ROOT / "config/devices/pump.toml").read_bytes()],
    "module": _module_seeds,
    "oci": _oci_seeds,
    "cosign": _cosign_seeds,
    "modbus": _modbus_seeds,
    "fleet": _fleet_seeds,
}


def write_corpus(corpus: Path = CORPUS) -> None:
    """(Re)write the seed corpus from the repository's own valid inputs."""
    for name, make in SEEDS.items():
        directory = corpus / name
        directory.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(make()):
            (directory / f"seed-{i:02d}").write_bytes(seed)
