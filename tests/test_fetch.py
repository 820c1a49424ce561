"""Image URLs: fetched with bounded time, size and redirects, and never from an address a
client could not reach itself unless the operator allows it. Served by a local HTTP server."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from deployments.core.fetch import AddressGuard, FetchError, ImageFetcher, ImageUrlPolicy, is_url
from deployments.core.limits import ImageLimits
from tests.support.image_server import image_server
from tests.support.photos import photos

PHOTO = photos()[0][1]
LOOPBACK_ALLOWED = ImageUrlPolicy(allowed_hosts=("127.0.0.1",), total_timeout_s=3, read_timeout_s=2)


@pytest.fixture(scope="module")
def server():
    with image_server(PHOTO) as url:
        yield url


def fetch(url: str, policy: ImageUrlPolicy = LOOPBACK_ALLOWED, max_bytes: int = 10**7) -> bytes:
    async def run() -> bytes:
        fetcher = ImageFetcher(policy, ImageLimits(max_image_bytes=max_bytes))
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.close()
    return asyncio.run(run())


def test_an_allowed_url_is_fetched_whatever_its_content_type(server):
    assert fetch(f"{server}/photo") == PHOTO


def test_loopback_is_refused_unless_allowed(server):
    with pytest.raises(FetchError, match="127.0.0.1, which is not a public address"):
        fetch(f"{server}/photo", ImageUrlPolicy())


def test_every_redirect_hop_is_checked(server):
    port = server.rsplit(":", 1)[1]
    by_name_only = ImageUrlPolicy(allowed_hosts=("localhost",))
    assert fetch(f"http://localhost:{port}/photo", by_name_only) == PHOTO
    # localhost is allowed by name; its redirect to 127.0.0.1 is not.
    with pytest.raises(FetchError, match="not a public address"):
        fetch(f"http://localhost:{port}/redirect?to=http://127.0.0.1:{port}/photo", by_name_only)
    assert fetch(f"{server}/redirect?to=/photo") == PHOTO


@pytest.mark.parametrize("path, reason", [
    ("/redirect-loop", "more than 3 redirects"),
    ("/missing", "HTTP 404"),
    ("/declared-huge", "the limit is 100000"),
    ("/endless", "larger than 100000 bytes"),
    ("/trickle", "timed out after 3 s"),
    ("/redirect?to=file:///etc/passwd", "scheme 'file:'"),
])
def test_fetch_failures_say_why(server, path, reason):
    with pytest.raises(FetchError, match=reason):
        fetch(server + path, max_bytes=100_000)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png",
                                 "gopher://example.com/", "http:///no-host"])
def test_other_schemes_and_hostless_urls_are_refused(url):
    assert is_url(url)
    with pytest.raises(FetchError, match="scheme|no host"):
        fetch(url)


def test_turned_off_means_refused(server):
    with pytest.raises(FetchError, match="turned off"):
        fetch(f"{server}/photo", ImageUrlPolicy(enabled=False, allowed_hosts=("127.0.0.1",)))


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                     "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
                                     "::1", "fd00:ec2::254", "fe80::1", "::ffff:127.0.0.1",
                                     "::ffff:169.254.169.254"])
def test_non_public_addresses_are_refused(address):
    with pytest.raises(FetchError):
        AddressGuard([]).check("example.com", ipaddress.ip_address(address))


def test_public_addresses_and_allowed_networks_pass():
    AddressGuard([]).check("example.com", ipaddress.ip_address("93.184.216.34"))
    AddressGuard([]).check("example.com", ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946"))
    AddressGuard(["10.0.0.0/8"]).check("images.internal", ipaddress.ip_address("10.9.8.7"))
    AddressGuard(["images.internal"]).check("Images.Internal.", ipaddress.ip_address("10.9.8.7"))


def test_a_name_with_one_private_address_among_public_ones_is_refused(monkeypatch, server):
    """DNS rebinding: had one answer been checked and another connected to, a second lookup
    could return the private one. Every answer must pass, and the connect uses a checked one."""
    async def rebinding_getaddrinfo(self, host, port, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in ("93.184.216.34", "127.0.0.1")]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", rebinding_getaddrinfo)
    port = server.rsplit(":", 1)[1]
    with pytest.raises(FetchError, match="127.0.0.1, which is not a public address"):
        fetch(f"http://rebind.example:{port}/photo", ImageUrlPolicy())


def test_base64_and_data_uris_are_not_urls():
    import base64

    assert not is_url(base64.b64encode(PHOTO).decode())
    assert not is_url("data:image/png;base64,AAAA")
    assert is_url(" https://example.com/cat.jpg")
