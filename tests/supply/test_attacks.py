"""Supply attacks against a real docker-registry: a swapped manifest, a replayed older
version, a layer over the bound, content served under another digest, a signature made
for another artifact, and answers too large to read.

The registry is tampered with through its own API or in its storage on disk; what it
never does by itself (an answer without a Content-Length, a body that does not end, a
token challenge) comes from a hostile proxy in front of it. Each attack is refused with
a typed error that names what was wrong and what was expected; nothing of it runs and
the active version stays. A freshly signed older version is refused by
`test_supply.py::test_rejected_and_running_version_untouched[downgrade]` (same registry,
and `allow_downgrade` then installs it); here an old signed version is replayed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import errors
from agent.config import AgentConfig
from agent.supply import (
    Repository,
    Supply,
    generate_key,
    load_private_key,
    open_repository,
    registry_client,
)
from agent.supply import parse_reference as ref_of
from agent.supply._oci import (
    EMPTY_JSON,
    MODULE_MANIFEST_LAYER,
    OCI_EMPTY,
    OCI_MANIFEST,
    WASM_LAYER,
    Descriptor,
    Manifest,
    sha256_digest,
)
from agent.supply._referrers import attach_referrer, fallback_tag, list_referrers
from agent.supply._repo import MAX_MANIFEST_BYTES, Fetched
from agent.supply._sign import BUNDLE_MEDIA_TYPE, SIMPLE_SIGNING
from agent.supply._signatures import legacy_tag, sign

from .conftest import (
    PASSWORD,
    Forged,
    HostileProxy,
    KeyPair,
    Registry,
    Runtime,
    agent_config,
    filler,
    module_dir,
    open_supply,
    publish,
    push_big_blob,
)

REPO = "modules/faulty"
BIG = 200 * 1024 * 1024
BOUND = 16 * 1024 * 1024
"""policy.max_layer_bytes on these nodes."""
MAX_GROWTH = 50 * 1024 * 1024
"""How much the peak resident memory may grow while a 200 MB answer is refused."""


def _socket_buffers() -> int:
    """The most the kernel may buffer between the proxy and the client: the largest send
    buffer of one end plus the largest receive buffer of the other."""
    tcp = Path("/proc/sys/net/ipv4")
    return sum(int((tcp / f"tcp_{kind}").read_text().split()[2]) for kind in ("rmem", "wmem"))


CUT_OFF = 8 * 1024 * 1024 + _socket_buffers()
"""How much of a refused answer may have left the proxy: its bound (4 MiB at most), plus
what the socket buffers between the proxy and the client may hold."""


class PeakRss:
    """The growth of this process's peak resident memory over a `with` block, in bytes.
    Linux: the peak (VmHWM) is reset to the current RSS on entry."""

    growth = 0

    def __enter__(self) -> PeakRss:
        Path("/proc/self/clear_refs").write_text("5")
        self._base = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.growth = _status_bytes("VmHWM") - self._base


def _status_bytes(name: str) -> int:
    found = re.search(rf"^{name}:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.M)
    assert found, name
    return int(found.group(1)) * 1024


@dataclass
class Node:
    """A node running faulty 1.0.0, deployed through the proxy in front of the registry;
    packages are published to the registry directly."""

    config: AgentConfig
    supply: Supply
    runtime: Runtime
    registry: Registry
    proxy: HostileProxy
    keys: KeyPair
    tmp: Path
    good: str
    """The digest that must stay active."""

    def direct(self, tag: str) -> str:
        return f"{self.registry.host}/{REPO}:{tag}"

    def proxied(self, tag: str) -> str:
        return f"{self.proxy.host}/{REPO}:{tag}"

    async def publish(
        self, version: str, tag: str, *, signed: bool = True, legacy: bool = False
    ) -> str:
        key = self.keys if signed else None
        directory = module_dir(self.tmp, version)
        return await publish(self.config, directory, self.direct(tag), key, legacy=legacy)

    @asynccontextmanager
    async def repo(self) -> AsyncIterator[Repository]:
        """The repository, directly: what an attacker with push rights can do."""
        repo = open_repository(ref_of(self.direct("latest")), self.config.supply)
        try:
            yield repo
        finally:
            await repo.aclose()

    async def manifest(self, reference: str) -> Manifest:
        async with self.repo() as repo:
            return Manifest.parse((await repo.get_manifest(reference)).data, reference)

    async def refused(
        self, error: type[errors.SupplyError], ref: str, *, digest: str | None = None
    ) -> str:
        """Deploy `ref`, which must fail with `error`; nothing of it may have run and the
        active version must be untouched. Returns the error's message."""
        executed = list(self.runtime.executed)
        with pytest.raises(error) as caught:
            await self.supply.deploy(ref, digest=digest)
        message = str(caught.value)
        assert self.runtime.executed == executed, "nothing of the refused version ran"
        active = self.supply.active("faulty")
        assert active is not None
        assert active.digest == self.good
        assert self.runtime.running["faulty"][0] == self.good
        assert [d.status for d in self.supply.desired() if d.reason == message] == ["failed"]
        return message


Attack = Callable[[Node], Awaitable[None]]


@pytest.fixture
def on_node(
    registry: Registry, keys: KeyPair, tmp_path: Path, runtime: Runtime
) -> Callable[[Attack], None]:
    """Run an attack on a fresh node (own registry, proxy, state directory)."""

    async def go(attack: Attack) -> None:
        async with HostileProxy(registry) as proxy:
            hosts = [registry.host, proxy.host]
            config = agent_config(
                tmp_path,
                None,
                [keys.public],
                registries=[{"host": h, "insecure": True} for h in hosts],
                policy={"max_layer_bytes": BOUND},
            )
            good = await publish(
                config, module_dir(tmp_path, "1.0.0"), f"{registry.host}/{REPO}:1.0.0", keys
            )
            async with await open_supply(config, runtime) as supply:
                await supply.deploy(f"{proxy.host}/{REPO}:1.0.0")
                node = Node(config, supply, runtime, registry, proxy, keys, tmp_path, good)
                await attack(node)

    return lambda attack: asyncio.run(go(attack))


# 1. A swapped manifest.


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy"])
def test_swapped_manifest_carrying_anothers_signature(
    on_node: Callable[[Attack], None], legacy: bool
) -> None:
    """A is signed and tagged 1.1.0; the tag is moved to B, an unsigned artifact whose
    signature slot (referrers index, or `.sig` tag) holds A's signature."""

    async def attack(node: Node) -> None:
        signed = await node.publish("1.1.0", "1.1.0", legacy=legacy)
        swapped = await node.publish("6.6.6", "scratch", signed=False)
        slot = legacy_tag if legacy else fallback_tag
        async with node.repo() as repo:
            signature = await repo.get_manifest(slot(signed))
            await repo.put_manifest(signature.data, signature.media_type, slot(swapped))
            b = await repo.get_manifest(swapped)
            await repo.put_manifest(b.data, b.media_type, "1.1.0")
        message = await node.refused(errors.SignatureError, node.proxied("1.1.0"))
        assert f"{node.proxy.host}/{REPO}@{swapped}: no valid signature" in message
        assert "the signature is for" in message
        assert signed in message
        assert f"not {swapped}" in message

    on_node(attack)


# 2. A downgrade.


def test_replayed_older_signed_version_is_a_refused_downgrade(
    on_node: Callable[[Attack], None],
) -> None:
    """1.1.0 runs; the registry serves the validly signed 1.0.0 under the tag 1.2.0."""

    async def attack(node: Node) -> None:
        newer = await node.publish("1.1.0", "1.1.0")
        await node.supply.deploy(node.proxied("1.1.0"))
        node.good = newer
        async with node.repo() as repo:
            old = await repo.get_manifest("1.0.0")
            await repo.put_manifest(old.data, old.media_type, "1.2.0")
        message = await node.refused(errors.DowngradeRefused, node.proxied("1.2.0"))
        assert message == (
            "module 'faulty': 1.0.0 is not newer than the running 1.1.0; "
            "deploy with allow_downgrade to install it"
        )

    on_node(attack)


# 3. A 200 MB layer.


@pytest.mark.parametrize(
    ("media_type", "error", "bound"),
    [
        pytest.param(
            WASM_LAYER, errors.PolicyViolation, f"policy.max_layer_bytes {BOUND}", id="code"
        ),
        pytest.param(
            MODULE_MANIFEST_LAYER,
            errors.PackageError,
            f"the {MAX_MANIFEST_BYTES} read into memory",
            id="module-manifest",
        ),
    ],
)
def test_signed_layer_over_the_bound_is_never_requested(
    on_node: Callable[[Attack], None], media_type: str, error: type[errors.SupplyError], bound: str
) -> None:
    """A trusted key signed a manifest pinning a 200 MB layer (pushed to the registry in
    1 MiB chunks): refused from the size it is pinned at, before a byte is asked for."""

    async def attack(node: Node) -> None:
        big = await push_big_blob(node.registry, REPO, BIG)
        await node.publish("1.1.0", "1.1.0", signed=False)
        manifest = await node.manifest("1.1.0")
        layers = tuple(
            Descriptor(d.media_type, big, BIG, d.annotations) if d.media_type == media_type else d
            for d in manifest.layers
        )
        data = Manifest(manifest.config, layers).to_bytes()
        async with node.repo() as repo:
            await repo.put_manifest(data, OCI_MANIFEST, "1.1.0")
            private = load_private_key(node.keys.private, PASSWORD)
            await sign(repo, Fetched(data, OCI_MANIFEST, sha256_digest(data)), private)
        with PeakRss() as rss:
            message = await node.refused(error, node.proxied("1.1.0"))
        assert f"{media_type} {big} is pinned at {BIG} bytes, over {bound}" in message
        assert f"/v2/{REPO}/blobs/{big}" not in node.proxy.sent, "never requested"
        assert rss.growth < MAX_GROWTH, f"peak RSS grew by {rss.growth / 2**20:.1f} MiB"

    on_node(attack)


@pytest.mark.parametrize(
    ("via_proxy", "expected"),
    [
        pytest.param(False, "announces a blob of {big} bytes, {size} are pinned", id="announced"),
        pytest.param(True, "blob is larger than the {size} bytes pinned", id="no-length"),
    ],
)
def test_blob_served_larger_than_pinned_is_cut_off(
    on_node: Callable[[Attack], None], via_proxy: bool, expected: str
) -> None:
    """The registry's storage holds 200 MB under the digest of 1.1.0's signed code layer.
    The registry announces them (refused unread); through the proxy, which announces no
    length, the download stops once the pinned size is passed."""

    async def attack(node: Node) -> None:
        await node.publish("1.1.0", "1.1.0")
        wasm = (await node.manifest("1.1.0")).layer(WASM_LAYER)
        with node.registry.blob(wasm.digest).open("wb") as f:
            for block in filler(BIG):
                f.write(block)
        ref = node.proxied("1.1.0") if via_proxy else node.direct("1.1.0")
        with PeakRss() as rss:
            message = await node.refused(errors.DigestMismatch, ref)
        assert message.startswith(f"{wasm.digest}: ")
        assert expected.format(big=BIG, size=wasm.size) in message
        assert node.proxy.sent.get(f"/v2/{REPO}/blobs/{wasm.digest}", 0) < CUT_OFF
        assert rss.growth < MAX_GROWTH, f"peak RSS grew by {rss.growth / 2**20:.1f} MiB"

    on_node(attack)


# 4. Content served under another digest.


def test_blob_served_under_another_digest(on_node: Callable[[Attack], None]) -> None:
    """The storage of 1.1.0's signed code layer holds 1.0.0's code, of the same size."""

    async def attack(node: Node) -> None:
        await node.publish("1.1.0", "1.1.0")
        new = (await node.manifest("1.1.0")).layer(WASM_LAYER)
        old = (await node.manifest("1.0.0")).layer(WASM_LAYER)
        assert new.size == old.size
        node.registry.blob(new.digest).write_bytes(node.registry.blob(old.digest).read_bytes())
        message = await node.refused(errors.DigestMismatch, node.proxied("1.1.0"))
        assert message == f"{new.digest}: blob content hashes to {old.digest}"

    on_node(attack)


def test_manifest_served_under_another_digest(on_node: Callable[[Attack], None]) -> None:
    """A deploy pinned to 1.1.0's digest; the registry serves the signed 6.6.6 under it."""

    async def attack(node: Node) -> None:
        pinned = await node.publish("1.1.0", "1.1.0")
        other = await node.publish("6.6.6", "scratch")
        node.registry.blob(pinned).write_bytes(node.registry.blob(other).read_bytes())
        message = await node.refused(errors.DigestMismatch, node.proxied("1.1.0"), digest=pinned)
        assert message == f"{pinned}: the manifest served has digest {other}"

    on_node(attack)


# 5. A signature made for another artifact.


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy"])
def test_signature_for_another_artifact_attached(
    on_node: Callable[[Attack], None], legacy: bool
) -> None:
    """1.1.0 is what its tag names, signed by the attacker's own key; attached to it too,
    in the same format, is a trusted signature made for a sibling artifact."""

    async def attack(node: Node) -> None:
        sibling = await node.publish("1.1.1", "sibling", legacy=legacy)
        target = await node.publish("1.1.0", "1.1.0", signed=False)
        async with node.repo() as repo:
            fetched = await repo.get_manifest(target)
            fetched = Fetched(fetched.data, fetched.media_type, target)
            await sign(repo, fetched, generate_key(), legacy=legacy)
            if legacy:
                theirs = (await node.manifest(legacy_tag(sibling))).layer(SIMPLE_SIGNING)
                own = await node.manifest(legacy_tag(target))
                both = Manifest(own.config, (*own.layers, theirs))
                await repo.put_manifest(both.to_bytes(), OCI_MANIFEST, legacy_tag(target))
            else:
                (referrer,) = await list_referrers(repo, sibling, BUNDLE_MEDIA_TYPE)
                bundle = (await node.manifest(referrer.digest)).layer(BUNDLE_MEDIA_TYPE)
                subject = Descriptor(fetched.media_type, target, len(fetched.data))
                empty = Descriptor.of(OCI_EMPTY, EMPTY_JSON)
                await attach_referrer(repo, Manifest(empty, (bundle,), subject, BUNDLE_MEDIA_TYPE))
        message = await node.refused(errors.SignatureError, node.proxied("1.1.0"))
        assert f"@{target}: no valid signature" in message
        assert "not signed by any trusted key (1 trusted)" in message
        assert "the signature is for" in message
        assert sibling in message
        assert f"not {target}" in message

    on_node(attack)


# Registry answers are bounded while they stream.


START = b'{"schemaVersion":2,"annotations":{"pad":"'


def _endless() -> Iterator[bytes]:
    """The start of a manifest, then 200 MB of filler."""
    yield START
    yield from filler(BIG)


def _forge(node: Node, path: str, forged: Forged) -> str:
    node.proxy.forged[path] = forged
    return path


async def _tag_manifest(node: Node) -> str:
    return _forge(node, f"/v2/{REPO}/manifests/1.1.0", Forged(_endless))


async def _announced_manifest(node: Node) -> str:
    length = {"Content-Length": str(BIG + len(START))}
    return _forge(node, f"/v2/{REPO}/manifests/1.1.0", Forged(_endless, headers=length))


async def _referrers_api(node: Node) -> str:
    digest = await node.publish("1.1.0", "1.1.0")
    return _forge(node, f"/v2/{REPO}/referrers/{digest}", Forged(_endless))


async def _referrers_index(node: Node) -> str:
    digest = await node.publish("1.1.0", "1.1.0")
    return _forge(node, f"/v2/{REPO}/manifests/{fallback_tag(digest)}", Forged(_endless))


async def _signature_manifest(node: Node) -> str:
    digest = await node.publish("1.1.0", "1.1.0", legacy=True)
    return _forge(node, f"/v2/{REPO}/manifests/{legacy_tag(digest)}", Forged(_endless))


async def _error_text(node: Node) -> str:
    return _forge(node, f"/v2/{REPO}/manifests/1.1.0", Forged(_endless, status=403))


async def _token(node: Node) -> str:
    realm = f'Bearer realm="http://{node.proxy.host}/token",service="test"'
    challenge = Forged(lambda: iter(()), 401, {"WWW-Authenticate": realm})
    _forge(node, f"/v2/{REPO}/manifests/1.1.0", challenge)
    return _forge(node, "/token", Forged(_endless))


PASSED = f"the answer passed the {MAX_MANIFEST_BYTES} bytes accepted; stopped reading"
ANNOUNCED = f"the answer announces {BIG + len(START)} bytes, over the {MAX_MANIFEST_BYTES} accepted"
TOKEN_PASSED = "the answer passed the 65536 bytes accepted; stopped reading"
TOO_LARGE = [
    pytest.param(_tag_manifest, errors.RegistryError, PASSED, id="manifest"),
    pytest.param(_announced_manifest, errors.RegistryError, ANNOUNCED, id="manifest-announced"),
    pytest.param(_referrers_api, errors.RegistryError, PASSED, id="referrers-api"),
    pytest.param(_referrers_index, errors.RegistryError, PASSED, id="referrers-index"),
    pytest.param(_signature_manifest, errors.SignatureError, PASSED, id="signature"),
    pytest.param(
        _error_text, errors.RegistryError, f"HTTP 403: {START.decode()}\x00\x01", id="error-text"
    ),
    pytest.param(_token, errors.RegistryError, TOKEN_PASSED, id="token"),
]


@pytest.mark.parametrize(("forge", "error", "expected"), TOO_LARGE)
def test_oversized_answer_is_cut_off_while_it_streams(
    on_node: Callable[[Attack], None],
    forge: Callable[[Node], Awaitable[str]],
    error: type[errors.SupplyError],
    expected: str,
) -> None:
    """The proxy answers one request of the deploy with 200 MB: refused once the bound
    is passed (or from the length it announces), never read whole."""

    async def attack(node: Node) -> None:
        path = await forge(node)
        with PeakRss() as rss:
            message = await node.refused(error, node.proxied("1.1.0"))
        assert expected in message
        assert node.proxy.sent[path] < CUT_OFF
        assert rss.growth < MAX_GROWTH, f"peak RSS grew by {rss.growth / 2**20:.1f} MiB"

    on_node(attack)


def test_redirect_body_is_not_read(on_node: Callable[[Attack], None]) -> None:
    """Registries redirect blob downloads (to object storage): the redirect is followed,
    its body, here 200 MB, is not read."""

    async def attack(node: Node) -> None:
        digest = await node.publish("1.1.0", "1.1.0")
        wasm = (await node.manifest("1.1.0")).layer(WASM_LAYER)
        path = f"/v2/{REPO}/blobs/{wasm.digest}"
        to = {"Location": f"http://{node.registry.host}{path}"}
        _forge(node, path, Forged(_endless, 307, to))
        with PeakRss() as rss:
            installed = await node.supply.deploy(node.proxied("1.1.0"))
        assert installed.digest == digest
        assert node.proxy.sent[path] < CUT_OFF
        assert rss.growth < MAX_GROWTH, f"peak RSS grew by {rss.growth / 2**20:.1f} MiB"

    on_node(attack)


def test_ping_does_not_read_the_answer(registry: Registry, tmp_path: Path) -> None:
    """`edge-agent check` asks `GET /v2/` for its status; a 200 MB body is not read."""

    async def go() -> None:
        async with HostileProxy(registry) as proxy:
            proxy.forged["/v2/"] = Forged(_endless)
            config = agent_config(
                tmp_path, None, [], registries=[{"host": proxy.host, "insecure": True}]
            )
            client = registry_client(proxy.host, config.supply)
            try:
                assert await client.ping(5.0) == 200
            finally:
                await client.aclose()
            assert proxy.sent["/v2/"] < CUT_OFF

    asyncio.run(go())
