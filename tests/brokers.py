"""Real MQTT peers for tests: mosquitto on a free loopback port, mosquitto_sub as the
independent subscriber, a generated CA with server and client certificates, and a broker
that refuses subscriptions.

A pytest plugin (`pytest_plugins` in conftest): the `mosquitto` fixture is a running
broker with persistence, so a stopped and restarted broker keeps its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BROKER_INFLIGHT = 20
"""QoS 1 messages the broker should send a subscriber before waiting for its PUBACKs.

mosquitto before 2.0.13 does not hold to it once messages are queued for a subscriber:
its db__message_delete_outgoing promotes queued messages by the acknowledged message's
position in the inflight list, not by how many are in flight, so each PUBACK for the
oldest message puts up to this many more in flight, and a subscriber's backlog goes out
in one burst (mosquitto #2301, fixed by "Various fixes around inflight quota
management" in 2.0.13; Debian 12 ships 2.0.11). See `enforces_inflight_window`.
"""


@functools.cache
def mosquitto_version() -> tuple[int, ...]:
    """The installed broker's version, from the first line of `mosquitto -h`."""
    out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    assert match, f"cannot tell the mosquitto version from {out.stdout[:200]!r}"
    return tuple(int(part) for part in match.groups())


def enforces_inflight_window() -> bool:
    """Whether the broker keeps to `BROKER_INFLIGHT` for a subscriber with a backlog."""
    return mosquitto_version() >= (2, 0, 13)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class Mosquitto:
    """One mosquitto process; `stop`/`start` keep the port and the persisted sessions."""

    def __init__(
        self,
        workdir: Path,
        *,
        pki: Pki | None = None,
        passwords: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.pki = pki
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"persistence true\npersistence_location {workdir}/",
            "max_queued_messages 0",
            f"max_inflight_messages {BROKER_INFLIGHT}",
            f"log_dest file {workdir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to a user that cannot read workdir
        if pki is not None:
            lines += [
                f"cafile {pki.ca}",
                f"certfile {pki.server_cert}",
                f"keyfile {pki.server_key}",
                "require_certificate true",
            ]
        if passwords:
            password_file = workdir / "passwords"
            password_file.touch()
            for user, password in passwords.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(password_file), user, password], check=True
                )
            lines += [f"password_file {password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = (self.workdir / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
            else:
                return
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean stop that saves the sessions; SIGKILL: a crash."""
        if self._proc is not None:
            self._proc.send_signal(sig)
            self._proc.wait(10)
            self._proc = None


class Subscriber:
    """mosquitto_sub at QoS 1 with a persistent session: sees what the broker delivers,
    reconnecting on its own across broker restarts.

    `dup[i]` is the DUP flag `messages[i]` arrived with: set only when the broker resends
    a message it had already sent this subscriber (its own redelivery), never on a
    publisher's resend, which the broker forwards as a new message.
    """

    def __init__(self, broker: Mosquitto | int, topic: str, *extra: str) -> None:
        """`broker`: mosquitto, or the port of another broker on loopback (a cluster node)."""
        port = broker if isinstance(broker, int) else broker.port
        self._args = [
            "stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port),
            "-t", topic,
            "-q", "1", "-c", "-i", f"sub-{port}-{id(self)}", "-v", "-d", *extra,
        ]  # fmt: skip
        self.messages: list[tuple[str, str]] = []
        self.dup: list[bool] = []
        self._next_dup = False
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Subscriber:
        self._proc = await asyncio.create_subprocess_exec(
            *self._args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None
        assert self._reader is not None
        self._proc.kill()
        await self._proc.wait()
        self._reader.cancel()

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            line = raw.decode().rstrip("\n")
            if line.startswith(("Client ", "Subscribed")):
                if "received SUBACK" in line:
                    self._subscribed.set()
                elif "received PUBLISH (" in line:  # -d: the header precedes the message
                    self._next_dup = "received PUBLISH (d1" in line
                continue
            topic, _, payload = line.partition(" ")
            self.messages.append((topic, payload))
            self.dup.append(self._next_dup)
            self._arrived.set()

    async def wait_for(self, count: int, seconds: float = 20) -> list[tuple[str, str]]:
        """Wait until `count` messages arrived; returns them all."""
        async with asyncio.timeout(seconds):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages


async def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Wait until `condition()` holds, checking every 10 ms: for state owned by other
    processes (a broker, a subprocess) that has no event to wait on."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (no event exists across processes)
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def refusing_broker(allowed: list[str]) -> AsyncIterator[int]:
    """amqtt on a free loopback port, its port yielded, whose SUBACK refuses (0x80) every
    filter outside `allowed`; mosquitto 2.0 grants what its ACL denies and never says so."""
    from amqtt.broker import Broker  # type: ignore[import-untyped]  # noqa: PLC0415

    port = free_port()
    with warnings.catch_warnings():
        # amqtt 0.12 takes its subscribe ACL from `acl` only, and warns that it is deprecated.
        warnings.filterwarnings("ignore", "The 'acl' option is deprecated", DeprecationWarning)
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                    "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                        "acl": {"anonymous": allowed},
                        "publish_acl": {"anonymous": ["#"]},
                    },
                },
            }
        )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
        extensions: list[x509.ExtensionType],
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for ext in extensions:
            builder = builder.add_extension(ext, critical=isinstance(ext, x509.BasicConstraints))
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("edge-agent test CA", ca_key, None, [x509.BasicConstraints(ca=True, path_length=0)])
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue(
        "localhost",
        server_key,
        (ca.subject, ca_key),
        [
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
        ],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue("edge-agent test node", client_key, (ca.subject, ca_key), [])
    write("ca", ca, ca_key)
    write("server", server, server_key)
    write("client", client, client_key)
    return Pki(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
