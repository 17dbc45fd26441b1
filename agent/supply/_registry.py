"""The OCI distribution API over httpx: the only module that imports httpx.

Handles anonymous, basic and bearer-token auth (the token challenge of the Docker
token spec), TLS with a custom CA, redirects, and retries with exponential backoff on
network errors and on 429/5xx. Content is returned unchecked; callers verify it through
`_repo.verified_chunks` and `check_manifest`.

Every answer is read within a bound while it arrives, never whole first: manifests,
indexes and token answers up to their limit, error texts up to a few hundred bytes,
redirects not at all, and blobs up to the size that pins them (`verified_chunks` counts
them). A Content-Length over the bound refuses an answer before its body is read; an
answer without one, or with a false one, is cut off by what arrives.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx

from agent.errors import ArtifactNotFound, DigestMismatch, RegistryError, RegistryUnavailable
from agent.supply._access import RegistryAccess
from agent.supply._oci import MANIFEST_ACCEPT, Descriptor, json_object, parse_index
from agent.supply._repo import MAX_MANIFEST_BYTES, Fetched

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_MAX_REDIRECTS = 5
_MAX_TOKEN_BYTES = 64 * 1024
_ERROR_TEXT_BYTES = 200
_T = TypeVar("_T")


class _Retryable(Exception):
    """A response worth retrying (429, 5xx); not an AgentError, it never escapes."""


@dataclass(frozen=True)
class Answer:
    """A registry's answer, read within its bound: the body only for a success."""

    status: int
    headers: httpx.Headers
    body: bytes


def _announced_length(response: httpx.Response) -> int | None:
    """The Content-Length the server announced, when it gave a number."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


async def _read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of `response`, refused as soon as it passes `limit` bytes.

    An announced Content-Length over `limit` is refused before any byte is read, but
    only the bytes that arrive are counted: a chunked answer announces nothing, and a
    hostile one may announce anything. Raw bytes: the client asks for no compression,
    so a small gzip bomb cannot unpack into a large body here."""
    announced = _announced_length(response)
    if announced is not None and announced > limit:
        raise RegistryError(
            f"{what}: the answer announces {announced} bytes, over the {limit} accepted"
        )
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise RegistryError(
                f"{what}: the answer passed the {limit} bytes accepted; stopped reading"
            )
    return bytes(body)


async def _error_text(response: httpx.Response) -> str:
    """The start of an error answer, for the message; the rest is never read."""
    head = b""
    try:
        async for chunk in response.aiter_raw():
            head += chunk
            if len(head) >= _ERROR_TEXT_BYTES:
                break
    except httpx.TransportError:
        pass
    return head[:_ERROR_TEXT_BYTES].decode("utf-8", "replace")


async def _check_status(response: httpx.Response, ok: tuple[int, ...], what: str) -> None:
    if response.status_code not in ok:
        raise RegistryError(f"{what}: HTTP {response.status_code}: {await _error_text(response)}")


class RegistryClient:
    """An HTTP client for one registry host, shared by its repositories."""

    def __init__(self, host: str, access: RegistryAccess) -> None:
        self.host = host
        self._access = access
        scheme = "http" if access.insecure else "https"
        self._base = f"{scheme}://{host}"
        verify: ssl.SSLContext | bool = True
        if access.ca is not None:
            try:
                verify = ssl.create_default_context(cafile=str(access.ca))
            except (OSError, ssl.SSLError) as err:
                raise RegistryError(f"{access.ca}: cannot load CA certificate: {err}") from err
        # Redirects are followed by `_open`: httpx would read a redirect's body whole.
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=access.timeout_s,
            follow_redirects=False,
            headers={"Accept-Encoding": "identity"},
        )
        self._auth: dict[str, str] = {}  # scope -> Authorization header value

    def repository(self, name: str) -> RegistryRepository:
        return RegistryRepository(self, name)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def ping(self, timeout_s: float) -> int:
        """The status of one unauthenticated `GET /v2/`, without retries: 200 or 401
        mean a registry answers there. Raises `RegistryUnavailable` when nothing does.

        httpx's own timeout, not a cancellation: a cancelled request can leave its
        connection open after the client is closed."""
        url = f"{self._base}/v2/"
        try:
            response = await self._open(self._http.build_request("GET", url, timeout=timeout_s))
        except httpx.TimeoutException as err:
            raise RegistryUnavailable(f"GET {url}: no answer within {timeout_s:g} s") from err
        except httpx.TransportError as err:
            raise RegistryUnavailable(f"GET {url}: {err or type(err).__name__}") from err
        await response.aclose()
        return response.status_code

    async def request(
        self,
        method: str,
        path: str,
        scope: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        limit: int = 0,
    ) -> Answer:
        """Send with auth and retries; an answer with a status in `ok` comes back, with
        the body of a success read up to `limit` bytes (none by default)."""
        what = f"{method} {self._url(path)}"

        async def once() -> Answer:
            response = await self._send(method, path, scope, headers, content)
            try:
                await _check_status(response, ok, what)
                body = b""
                if limit and response.is_success:
                    body = await _read_bounded(response, limit, what)
                return Answer(response.status_code, response.headers, body)
            finally:
                await response.aclose()

        return await self._retrying(what, once)

    @asynccontextmanager
    async def stream(
        self, path: str, scope: str, ok: tuple[int, ...]
    ) -> AsyncIterator[httpx.Response]:
        """A GET with auth and retries whose body the caller reads as it arrives."""
        what = f"GET {self._url(path)}"
        response = await self._retrying(what, lambda: self._send("GET", path, scope, None, None))
        try:
            await _check_status(response, ok, what)
            yield response
        finally:
            await response.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        scope: str,
        headers: dict[str, str] | None,
        content: bytes | None,
    ) -> httpx.Response:
        """One attempt, answering a 401 challenge once; its body is not read yet."""
        url = self._url(path)

        async def send() -> httpx.Response:
            all_headers = dict(headers or {})
            if scope in self._auth:
                all_headers["Authorization"] = self._auth[scope]
            request = self._http.build_request(method, url, headers=all_headers, content=content)
            return await self._open(request)

        response = await send()
        if response.status_code == 401:
            await response.aclose()
            await self._authenticate(response.headers.get("WWW-Authenticate", ""), scope)
            response = await send()
        if response.status_code in _RETRY_STATUS:
            await response.aclose()
            raise _Retryable(f"HTTP {response.status_code}")
        return response

    def _url(self, path: str) -> str:
        """A path on this registry, or a URL it gave (an upload's Location) as it is."""
        return path if path.startswith("http") else self._base + path

    async def _open(self, request: httpx.Request) -> httpx.Response:
        """Send `request` as a stream, following redirects without reading their bodies
        (httpx drops the Authorization header where a redirect leaves the host)."""
        for _ in range(_MAX_REDIRECTS + 1):
            response = await self._http.send(request, stream=True)
            if response.next_request is None:
                return response
            await response.aclose()
            request = response.next_request
        raise RegistryError(f"{request.method} {request.url}: more than {_MAX_REDIRECTS} redirects")

    async def _retrying(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        retry = self._access.retry
        for attempt in range(retry.attempts):
            try:
                return await call()
            except (httpx.TransportError, _Retryable) as err:
                why = str(err) or type(err).__name__
                if attempt + 1 == retry.attempts:
                    raise RegistryUnavailable(
                        f"{what}: {why} (gave up after {retry.attempts} attempts)"
                    ) from err
                delay = retry.delay(attempt)
                log.info("%s: %s; retrying in %.1f s", what, why, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _authenticate(self, challenge: str, scope: str) -> None:
        """Answer a 401 challenge (`WWW-Authenticate`): the header the next try sends."""
        kind, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        basic = None
        if self._access.username is not None:
            pair = f"{self._access.username}:{self._access.password or ''}".encode()
            basic = "Basic " + base64.b64encode(pair).decode()
        if kind.lower() == "basic":
            if basic is None:
                raise RegistryError(f"{self.host}: the registry needs credentials (basic auth)")
            self._auth[scope] = basic
            return
        if kind.lower() != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.host}: unsupported auth challenge {challenge!r}")
        query = {"service": params.get("service", self.host), "scope": params.get("scope", scope)}
        what = f"{self.host}: token server {params['realm']}"
        request = self._http.build_request(
            "GET",
            params["realm"],
            params=query,
            headers={"Authorization": basic} if basic else None,
        )
        token_response = await self._open(request)
        try:
            await _check_status(token_response, (200,), what)
            body = json_object(
                await _read_bounded(token_response, _MAX_TOKEN_BYTES, what), what, RegistryError
            )
        finally:
            await token_response.aclose()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str):
            raise RegistryError(f"{self.host}: token server answered without a token")
        self._auth[scope] = f"Bearer {token}"


class RegistryRepository:
    """One repository on a registry, as a `Repository`."""

    def __init__(self, client: RegistryClient, name: str) -> None:
        self._client = client
        self._name = name
        self._pull = f"repository:{name}:pull"
        self._push = f"repository:{name}:pull,push"

    @property
    def name(self) -> str:
        return f"{self._client.host}/{self._name}"

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self._name}/{kind}/{reference}"

    async def get_manifest(self, reference: str) -> Fetched:
        answer = await self._client.request(
            "GET",
            self._path("manifests", reference),
            self._pull,
            headers={"Accept": MANIFEST_ACCEPT},
            ok=(200, 404),
            limit=MAX_MANIFEST_BYTES,
        )
        if answer.status == 404:
            raise ArtifactNotFound(f"{self.name}: no manifest {reference!r}")
        return Fetched(answer.body, answer.headers.get("Content-Type", ""), "")

    async def put_manifest(self, data: bytes, media_type: str, reference: str) -> None:
        await self._client.request(
            "PUT",
            self._path("manifests", reference),
            self._push,
            headers={"Content-Type": media_type},
            content=data,
            ok=(201,),
        )

    async def blob_chunks(self, descriptor: Descriptor) -> AsyncIterator[bytes]:
        """The blob as it arrives; one announced larger than pinned is refused unread."""
        digest = descriptor.digest
        async with self._client.stream(
            self._path("blobs", digest), self._pull, ok=(200, 404)
        ) as response:
            if response.status_code == 404:
                raise ArtifactNotFound(f"{self.name}: no blob {digest}")
            announced = _announced_length(response)
            if announced is not None and announced > descriptor.size:
                raise DigestMismatch(
                    digest,
                    f"{self.name} announces a blob of {announced} bytes, "
                    f"{descriptor.size} are pinned",
                )
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            except httpx.TransportError as err:
                raise RegistryUnavailable(f"{self.name}: blob {digest} broke off: {err}") from err

    async def has_blob(self, digest: str) -> bool:
        answer = await self._client.request(
            "HEAD", self._path("blobs", digest), self._pull, ok=(200, 404)
        )
        return answer.status == 200

    async def put_blob(self, data: bytes, digest: str) -> None:
        start = await self._client.request(
            "POST", f"/v2/{self._name}/blobs/uploads/", self._push, ok=(202,)
        )
        location = start.headers.get("Location")
        if start.status != 202 or not location:
            raise RegistryError(f"{self.name}: upload of {digest} was not accepted")
        separator = "&" if "?" in location else "?"
        await self._client.request(
            "PUT",
            f"{location}{separator}digest={digest}",
            self._push,
            headers={"Content-Type": "application/octet-stream"},
            content=data,
            ok=(201,),
        )

    async def referrers_api(self, digest: str) -> list[Descriptor] | None:
        answer = await self._client.request(
            "GET",
            self._path("referrers", digest),
            self._pull,
            ok=(200, 404),
            limit=MAX_MANIFEST_BYTES,
        )
        if answer.status == 404:
            return None
        return parse_index(answer.body, f"{self.name} referrers of {digest}")

    async def aclose(self) -> None:
        await self._client.aclose()
