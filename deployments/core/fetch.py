"""Fetches images by http(s) URL for the preprocessor, without letting a client reach what the
server can reach and the client cannot (server-side request forgery).

Every connection goes to an address this module resolved and checked itself, on every
redirect hop, so a hostname that resolves to a public address when checked and to a private
one when connected (DNS rebinding) reaches nothing: the check and the connect use the same IP.
No proxy from the environment is used. The format is left to the decoder, which reads the
bytes; the Content-Type header is ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from typing import Callable, Iterable
from urllib.parse import urljoin, urlsplit

import httpcore
from pydantic import BaseModel, ConfigDict, Field

from deployments.core.limits import ImageLimits

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ImageUrlPolicy(BaseModel):
    """How the preprocessor fetches `http(s)://` image URLs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: image URLs are refused with a 400.")
    connect_timeout_s: float = Field(5, gt=0, description="Longest wait for a connection.")
    read_timeout_s: float = Field(10, gt=0, description="Longest wait for the next bytes.")
    total_timeout_s: float = Field(20, gt=0, description="Longest whole fetch, redirects "
                                   "included: a server that trickles bytes is cut off here.")
    max_redirects: int = Field(3, ge=0, le=10, description="Redirects followed; each hop "
                               "is checked like the first URL.")
    allowed_hosts: tuple[str, ...] = Field(
        (), description="Hostnames, IP addresses or networks (CIDR) that may be fetched even "
        "though they are loopback, private, link-local or otherwise not public.")


class FetchError(Exception):
    """Why a URL gave no image; the message is safe to show the client."""


def _is_public(address: IpAddress) -> bool:
    # is_global excludes loopback, private (RFC 1918, ULA), link-local (169.254.169.254 and
    # the other cloud metadata addresses), shared, reserved and documentation ranges.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class AddressGuard:
    """Decides which (host, address) pairs may be connected to."""

    def __init__(self, allowed_hosts: Iterable[str]):
        self._hostnames: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed_hosts:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hostnames.add(entry.lower().rstrip("."))

    def check(self, host: str, address: IpAddress) -> None:
        if host.lower().rstrip(".") in self._hostnames or _is_public(address):
            return
        if any(address in network for network in self._networks):
            return
        raise FetchError(f"refused: {host} resolves to {address}, which is not a public address")


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, checks the addresses, and connects only to a checked one."""

    def __init__(self, guard: AddressGuard):
        self._guard = guard
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options=None):
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except (socket.gaierror, asyncio.TimeoutError):
            raise FetchError(f"cannot resolve {host}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for address in addresses:  # every address must pass, so no retry can land on a bad one
            self._guard.check(host, address)
        return await self._backend.connect_tcp(str(addresses[0]), port, timeout, local_address,
                                               socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class ImageFetcher:
    """`on_fetched(seconds, size)` is told of each image fetched (for metrics)."""

    def __init__(self, policy: ImageUrlPolicy, limits: ImageLimits,
                 on_fetched: Callable[[float, int], None] | None = None):
        self.policy = policy
        self._on_fetched = on_fetched
        self.max_bytes = limits.max_image_bytes
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(), max_connections=64,
            network_backend=_GuardedBackend(AddressGuard(policy.allowed_hosts)))
        self._timeouts = {"connect": policy.connect_timeout_s, "read": policy.read_timeout_s,
                          "write": policy.read_timeout_s, "pool": policy.connect_timeout_s}

    async def fetch(self, url: str) -> bytes:
        """The body of `url` after at most `max_redirects` redirects. Raises FetchError."""
        if not self.policy.enabled:
            raise FetchError("image URLs are turned off on this server; send the image as base64")
        started = time.perf_counter()
        try:
            body = await asyncio.wait_for(self._follow(url), self.policy.total_timeout_s)
        except asyncio.TimeoutError:
            raise FetchError(f"timed out after {self.policy.total_timeout_s:g} s") from None
        if self._on_fetched is not None:
            self._on_fetched(time.perf_counter() - started, len(body))
        return body

    async def _follow(self, url: str) -> bytes:
        for _ in range(self.policy.max_redirects + 1):
            check_url_scheme(url)
            status, location, body = await self._get(url)
            if status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            if status != 200:
                raise FetchError(f"the server answered HTTP {status}")
            return body
        raise FetchError(f"more than {self.policy.max_redirects} redirects")

    async def _get(self, url: str) -> tuple[int, str | None, bytes]:
        try:
            async with self._pool.stream("GET", url, headers=[(b"Accept", b"image/*")],
                                         extensions={"timeout": self._timeouts}) as response:
                location = _header(response, b"location")
                if response.status != 200:
                    return response.status, location, b""
                return response.status, location, await self._read_bounded(response)
        except httpcore.TimeoutException:
            raise FetchError("timed out waiting for the server") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as error:
            raise FetchError(f"cannot fetch: {type(error).__name__}: {error}") from None

    async def _read_bounded(self, response: httpcore.Response) -> bytes:
        """The body, refused as soon as it passes max_bytes: a huge image is never held."""
        declared = _header(response, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"the image is {int(declared)} bytes; the limit is {self.max_bytes} "
                             "(max_image_bytes)")
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > self.max_bytes:
                raise FetchError(f"the image is larger than {self.max_bytes} bytes (max_image_bytes)")
        return bytes(body)

    async def close(self) -> None:
        await self._pool.aclose()


def _header(response: httpcore.Response, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in response.headers if key.lower() == name), None)


def is_url(reference: str) -> bool:
    """Whether a client's image reference is a URL (of any scheme) rather than base64 data:
    base64 has no ':', and `data:` URIs are data."""
    head = reference[:32].lstrip().lower()
    return ":" in head and not head.startswith("data:")


def check_url_scheme(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(f"the scheme '{parts.scheme}:' is not fetched; use http(s) or base64")
    if not parts.hostname:
        raise FetchError("the URL has no host")
