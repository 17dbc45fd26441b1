"""Fixtures for the supply tests: Debian's docker-registry on a free loopback port
(plain, or with TLS from a test CA and bcrypt htpasswd auth), keys and module dirs, and
a hostile proxy in front of the registry for what the registry itself never does."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import errors
from agent.config import AgentConfig, parse_config
from agent.reading import Reading, Value
from agent.supply import (
    InstalledModule,
    Supply,
    encrypt_private_key,
    generate_key,
    load_private_key,
    open_repository,
    package,
)
from agent.supply import parse_reference as ref_of
from agent.supply._copy import copy_artifact
from agent.supply._signatures import sign
from agent.wasm import Engine, Limits, ReactorModule, create_engine

from ..conftest import DIST

PASSWORD = b"test-password"


@dataclass(frozen=True)
class Registry:
    host: str
    storage: Path
    ca: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    def blob(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def tag_link(self, repo: str, tag: str) -> Path:
        return (
            self.storage
            / f"docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-agent test registry")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _start(tmp: Path, secure: bool) -> Iterator[Registry]:
    port = _free_port()
    storage = tmp / "storage"
    http: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": "test"}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}},
        "http": http,
    }
    registry = Registry(f"127.0.0.1:{port}", storage)
    if secure:
        cert, key = _self_signed(tmp)
        http["tls"] = {"certificate": str(cert), "key": str(key)}
        htpasswd = tmp / "htpasswd"
        htpasswd.write_bytes(b"tester:" + bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=5)) + b"\n")
        config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
        password_file = tmp / "password"
        password_file.write_bytes(PASSWORD)
        registry = Registry(registry.host, storage, cert, "tester", password_file)
    config_path = tmp / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log = tmp / "registry.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config_path)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        _wait_listening(port, proc, log)
        yield registry
    finally:
        proc.terminate()
        proc.wait(5)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start: {log.read_text()}")
            time.sleep(0.05)
        else:
            return


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield from _start(tmp_path, secure=False)


@pytest.fixture
def secure_registry(tmp_path: Path) -> Iterator[Registry]:
    yield from _start(tmp_path, secure=True)


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_keys(directory: Path, name: str = "cosign") -> KeyPair:
    """A cosign key pair (scrypt N=2^15, which cosign readers accept, to keep tests quick)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(encrypt_private_key(key, PASSWORD, scrypt_n=1 << 15))
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return make_keys(tmp_path / "keys")


def module_dir(
    root: Path,
    version: str,
    fault: str = "none",
    *,
    test_readings: bool = True,
    extra: str = "",
) -> Path:
    """A module directory for `faulty.wasm`, committing `fault` on every reading;
    `extra` goes into its [capabilities]."""
    directory = root / f"faulty-{version}-{fault}"
    directory.mkdir(parents=True)
    # A custom section naming the version makes each version's code a distinct blob.
    payload = b"\x09edge-test" + version.encode()
    wasm = (DIST / "faulty.wasm").read_bytes() + b"\x00" + bytes([len(payload)]) + payload
    (directory / "faulty.wasm").write_bytes(wasm)
    lines = [
        'name = "faulty"',
        f'version = "{version}"',
        'wasm = "faulty.wasm"',
        'consumes = ["pump-1"]',
        f'config = {{fault = "{fault}"}}',
    ]
    if test_readings:
        reading = {"device": "pump-1", "ts": 1.0, "seq": 0, "values": {"t": {"value": 1.5}}}
        (directory / "readings.jsonl").write_text(json.dumps(reading) + "\n")
        lines.append('test_readings = "readings.jsonl"')
    lines += ["[capabilities]", 'emit = ["echo"]', extra, "[limits]", "deadline_ms = 500"]
    (directory / "module.toml").write_text("\n".join(lines) + "\n")
    return directory


def agent_config(
    tmp: Path, registry: Registry | None, keys: list[Path], **supply: Any
) -> AgentConfig:
    registries = []
    if registry is not None:
        registries.append({"host": registry.host, "insecure": registry.ca is None})
        if registry.ca is not None:
            registries[0].update(
                ca=str(registry.ca),
                username=registry.username,
                password_file=str(registry.password_file),
            )
    data = {
        "node": {"state_dir": str(tmp / "state")},
        "supply": {
            "trusted_keys": [str(k) for k in keys],
            "registries": registries,
            "retry_attempts": 2,
            "retry_initial_s": 0.01,
            **supply,
        },
    }
    return parse_config(data, tmp / "agent.toml")


async def publish(
    config: AgentConfig, directory: Path, ref: str, key: KeyPair | None, *, legacy: bool = False
) -> str:
    """Package `directory`, push it to `ref`, sign it with `key` (unless None); its digest."""
    packaged = await package(directory, directory / "oci")
    src, dst = ref_of(f"oci:{packaged.layout}:{packaged.tag}"), ref_of(ref)
    source, target = open_repository(src, config.supply), open_repository(dst, config.supply)
    try:
        fetched = await copy_artifact(source, src, target, dst.tag or "latest")
        if key is not None:
            await sign(target, fetched, load_private_key(key.private, PASSWORD), legacy=legacy)
    finally:
        await source.aclose()
        await target.aclose()
    return fetched.digest


def reading(seq: int) -> Reading:
    return Reading("pump-1", 1.0 + seq, seq, {"t": Value(1.5)})


class Runtime:
    """What the data path does with supply: smoke-test on the real engine, swap in, feed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.executed: list[str] = []
        self.running: dict[str, tuple[str, ReactorModule]] = {}

    def instantiate(self, m: InstalledModule) -> ReactorModule:
        self.executed.append(m.digest)
        limits = m.manifest.limits
        return ReactorModule(
            self.engine.compile(m.wasm_path.read_bytes(), m.name),
            m.manifest.config,
            limits=Limits(limits.memory_pages, limits.deadline_ms, limits.fuel),
            emit_topics=m.manifest.capabilities.emit,
        )

    async def smoke_test(self, m: InstalledModule) -> None:
        module = self.instantiate(m)
        try:
            for r in m.manifest.readings():
                module.on_reading(r)
        finally:
            module.close()

    async def activate(self, m: InstalledModule) -> None:
        old = self.running.pop(m.name, None)
        self.running[m.name] = (m.digest, self.instantiate(m))
        if old:
            old[1].close()

    async def stop(self, name: str) -> None:
        self.running.pop(name)[1].close()

    async def feed(self, supply: Supply, name: str, seq: int) -> Any:
        digest, module = self.running[name]
        try:
            module.on_reading(reading(seq))
        except errors.ModuleError as err:
            return await supply.record(name, digest, False, str(err))
        return await supply.record(name, digest, True)

    def close(self) -> None:
        for _, module in self.running.values():
            module.close()


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    engine = create_engine("wasmtime")
    rt = Runtime(engine)
    yield rt
    rt.close()
    engine.close()


async def open_supply(config: AgentConfig, rt: Runtime) -> Supply:
    return await Supply.create(config, rt)


FILLER = bytes(range(256)) * 4096
"""1 MiB of filler: big blobs are made of it, a block at a time."""


def filler(size: int) -> Iterator[bytes]:
    """`size` bytes (a multiple of 1 MiB) of filler, one block at a time."""
    for _ in range(size // len(FILLER)):
        yield FILLER


async def push_big_blob(registry: Registry, repository: str, size: int) -> str:
    """Push `size` bytes of filler as one blob through the registry's upload API (POST,
    one PATCH with a chunked body, the closing PUT), never whole in memory; its digest."""
    hasher = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for block in filler(size):
            hasher.update(block)
            yield block

    async with httpx.AsyncClient(base_url=f"http://{registry.host}", timeout=60) as client:
        started = await client.post(f"/v2/{repository}/blobs/uploads/")
        patched = await client.patch(started.headers["Location"], content=body())
        digest = "sha256:" + hasher.hexdigest()
        location = httpx.URL(patched.headers["Location"])
        done = await client.put(location.copy_add_param("digest", digest))
        assert done.status_code == 201, done.text
    return digest


@dataclass(frozen=True)
class Forged:
    """What the hostile proxy answers for one path instead of asking the registry."""

    body: Callable[[], Iterator[bytes]]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    """Sent as given: a Content-Length here is announced (and the body sent unframed)."""


class HostileProxy:
    """A loopback HTTP/1.1 proxy in front of the registry, playing a hostile registry:
    it forwards GET and HEAD, answers the paths in `forged` itself, and sends every body
    chunked, without Content-Length, unless a forged answer announces one. `sent[path]`
    counts the body bytes handed to the kernel for the client (which need not have read
    them all: socket buffers hold some). Use as `async with HostileProxy(registry)`."""

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.forged: dict[str, Forged] = {}
        self.sent: dict[str, int] = {}
        self.host = ""
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HostileProxy:
        self._client = httpx.AsyncClient(base_url=f"http://{self.upstream.host}")
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.host = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        await self._client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                asked = dict(line.split(": ", 1) for line in lines if line)
                path = urlsplit(target).path
                forged = self.forged.get(path)
                if forged is not None:
                    await self._answer(
                        writer, method, path, forged.status, forged.headers, forged.body()
                    )
                    continue
                keep = {k: v for k, v in asked.items() if k.lower() in ("accept", "authorization")}
                response = await self._client.send(
                    self._client.build_request(method, target, headers=keep), stream=True
                )
                try:
                    headers = {
                        k: v
                        for k, v in response.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection")
                    }
                    await self._answer(
                        writer, method, path, response.status_code, headers, response.aiter_raw()
                    )
                finally:
                    await response.aclose()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up, as it should on a body it refuses
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        status: int,
        headers: dict[str, str],
        body: Iterator[bytes] | AsyncIterator[bytes],
    ) -> None:
        chunked = "Content-Length" not in headers
        fields = {**headers, "Transfer-Encoding": "chunked"} if chunked else headers
        writer.write(
            (
                f"HTTP/1.1 {status} -\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            ).encode("latin-1")
            + b"\r\n"
        )
        if method != "HEAD":
            async for chunk in _each(body):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await writer.drain()
                self.sent[path] = self.sent.get(path, 0) + len(chunk)
            if chunked:
                writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _each(chunks: Iterator[bytes] | AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if isinstance(chunks, Iterator):
        for chunk in chunks:
            yield chunk
    else:
        async for chunk in chunks:
            yield chunk
