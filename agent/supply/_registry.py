"""The OCI distribution API over httpx: the only module that imports httpx.

Handles anonymous, basic and bearer-token auth (the token challenge of the Docker
token spec), TLS with a custom CA, and retries with exponential backoff on network
errors and on 429/5xx. Content is returned unchecked; callers verify it through
`_repo.verified_chunks` and `check_manifest`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import httpx

from agent.errors import ArtifactNotFound, RegistryError, RegistryUnavailable
from agent.supply._access import RegistryAccess
from agent.supply._oci import MANIFEST_ACCEPT, Descriptor, parse_index
from agent.supply._repo import Fetched

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_T = TypeVar("_T")


class _Retryable(Exception):
    """A response worth retrying (429, 5xx); not an AgentError, it never escapes."""


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
        self._http = httpx.AsyncClient(
            verify=verify, timeout=access.timeout_s, follow_redirects=True
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
            response = await self._http.get(url, timeout=timeout_s)
        except httpx.TimeoutException as err:
            raise RegistryUnavailable(f"GET {url}: no answer within {timeout_s:g} s") from err
        except httpx.TransportError as err:
            raise RegistryUnavailable(f"GET {url}: {err or type(err).__name__}") from err
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
        stream: bool = False,
    ) -> httpx.Response:
        """Send with auth and retries; a response with a status in `ok` comes back."""

        async def once() -> httpx.Response:
            response = await self._send(method, path, scope, headers, content, stream)
            if response.status_code == 401 and await self._authenticate(response, scope):
                await response.aclose()
                response = await self._send(method, path, scope, headers, content, stream)
            if response.status_code in _RETRY_STATUS:
                await response.aclose()
                raise _Retryable(f"HTTP {response.status_code}")
            return response

        response = await self._retrying(f"{method} {self._base}{path}", once)
        if response.status_code in ok:
            return response
        await response.aread()
        await response.aclose()
        raise RegistryError(
            f"{method} {self._base}{path}: HTTP {response.status_code}: {response.text[:200]}"
        )

    async def _send(
        self,
        method: str,
        path: str,
        scope: str,
        headers: dict[str, str] | None,
        content: bytes | None,
        stream: bool,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if scope in self._auth:
            all_headers["Authorization"] = self._auth[scope]
        url = path if path.startswith("http") else self._base + path
        request = self._http.build_request(method, url, headers=all_headers, content=content)
        return await self._http.send(request, stream=stream)

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

    async def _authenticate(self, response: httpx.Response, scope: str) -> bool:
        """Answer a 401 challenge; False when there is no way to (no credentials)."""
        challenge = response.headers.get("WWW-Authenticate", "")
        kind, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        basic = None
        if self._access.username is not None:
            basic = httpx.BasicAuth(self._access.username, self._access.password or "")
        if kind.lower() == "basic":
            if self._access.username is None:
                raise RegistryError(f"{self.host}: the registry needs credentials (basic auth)")
            pair = f"{self._access.username}:{self._access.password or ''}".encode()
            self._auth[scope] = "Basic " + base64.b64encode(pair).decode()
            return True
        if kind.lower() != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.host}: unsupported auth challenge {challenge!r}")
        query = {"service": params.get("service", self.host), "scope": params.get("scope", scope)}
        token_response = await self._http.get(params["realm"], params=query, auth=basic)
        if token_response.status_code != 200:
            raise RegistryError(
                f"{self.host}: token server {params['realm']} said HTTP "
                f"{token_response.status_code}: {token_response.text[:200]}"
            )
        body = token_response.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str):
            raise RegistryError(f"{self.host}: token server answered without a token")
        self._auth[scope] = f"Bearer {token}"
        return True


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
        response = await self._client.request(
            "GET",
            self._path("manifests", reference),
            self._pull,
            headers={"Accept": MANIFEST_ACCEPT},
            ok=(200, 404),
        )
        if response.status_code == 404:
            raise ArtifactNotFound(f"{self.name}: no manifest {reference!r}")
        return Fetched(response.content, response.headers.get("Content-Type", ""), "")

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
        response = await self._client.request(
            "GET", self._path("blobs", descriptor.digest), self._pull, ok=(200, 404), stream=True
        )
        try:
            if response.status_code == 404:
                raise ArtifactNotFound(f"{self.name}: no blob {descriptor.digest}")
            try:
                async for chunk in response.aiter_bytes():
                    yield chunk
            except httpx.TransportError as err:
                raise RegistryUnavailable(
                    f"{self.name}: blob {descriptor.digest} broke off: {err}"
                ) from err
        finally:
            await response.aclose()

    async def has_blob(self, digest: str) -> bool:
        response = await self._client.request(
            "HEAD", self._path("blobs", digest), self._pull, ok=(200, 404)
        )
        return response.status_code == 200

    async def put_blob(self, data: bytes, digest: str) -> None:
        start = await self._client.request(
            "POST", f"/v2/{self._name}/blobs/uploads/", self._push, ok=(202,)
        )
        location = start.headers.get("Location")
        if start.status_code != 202 or not location:
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
        response = await self._client.request(
            "GET", self._path("referrers", digest), self._pull, ok=(200, 404)
        )
        if response.status_code == 404:
            return None
        return parse_index(response.content, f"{self.name} referrers of {digest}")

    async def aclose(self) -> None:
        await self._client.aclose()
