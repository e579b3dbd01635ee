"""Which addresses a webhook may reach, and how URL hosts are read as IP literals."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from consumer.delivery.connections import Resolver, getaddrinfo
from consumer.delivery.endpoint_guard import is_blocked_address, literal_address
from consumer.errors import EndpointBlocked

BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback, whole /8"),
    ("10.1.2.3", "RFC 1918 10/8"),
    ("172.16.0.1", "RFC 1918 172.16/12, low end"),
    ("172.31.255.255", "RFC 1918 172.16/12, high end"),
    ("192.168.1.1", "RFC 1918 192.168/16"),
    ("169.254.169.254", "link-local, cloud metadata"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT, high end"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 (an address to judge, not one to bind)
    ("0.1.2.3", "this network"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast SSDP"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.2.10", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "IPv6 loopback"),
    ("::", "IPv6 unspecified"),
    ("fc00::1", "unique local fc00::/7"),
    ("fd12:3456::1", "unique local fd00::/8"),
    ("fe80::1", "IPv6 link-local"),
    ("fe80::1%eth0", "IPv6 link-local with a zone"),
    ("ff02::1", "IPv6 multicast"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of link-local"),
    ("2002:7f00:1::", "6to4 of loopback"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("2001:db8::1", "IPv6 documentation"),
    ("not-an-address", "not an IP address at all"),
]

ALLOWED = [
    ("8.8.8.8", "public IPv4"),
    ("93.184.216.34", "public IPv4"),
    ("172.32.0.1", "just above 172.16/12"),
    ("100.128.0.1", "just above 100.64/10"),
    ("2606:4700:4700::1111", "public IPv6"),
    ("::ffff:8.8.8.8", "IPv4-mapped public"),
    ("64:ff9b::808:808", "NAT64 of public"),
    ("2002:808:808::1", "6to4 of public"),
]


@pytest.mark.parametrize(("address", "why"), BLOCKED)
def test_non_public_address_is_blocked(address: str, why: str) -> None:
    assert is_blocked_address(address), why


@pytest.mark.parametrize(("address", "why"), ALLOWED)
def test_public_address_is_allowed(address: str, why: str) -> None:
    assert not is_blocked_address(address), why


def test_address_objects_are_judged_like_strings() -> None:
    assert is_blocked_address(IPv4Address("10.0.0.1"))
    assert not is_blocked_address(IPv6Address("2606:4700:4700::1111"))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("fe80::1%25eth0", "fe80::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
    ],
)
def test_ip_literal_in_any_spelling_is_read_as_its_address(host: str, expected: str) -> None:
    assert literal_address(host) == ip_address(expected)


@pytest.mark.parametrize("host", ["localhost", "hooks.example.edu", "", "1.2.3.4.5", "deadbeef"])
def test_host_name_is_not_an_ip_literal(host: str) -> None:
    assert literal_address(host) is None


class Fixed:
    """A lookup that answers every name with ``addresses``, and records what it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.addresses


async def test_resolver_drops_blocked_addresses_and_keeps_public_ones() -> None:
    resolver = Resolver(guard=True, lookup=Fixed("10.0.0.5", "93.184.216.34", "::1"))
    assert await resolver.resolve("hooks.example.edu", 443) == ["93.184.216.34"]


async def test_resolver_refuses_a_name_whose_every_address_is_blocked() -> None:
    resolver = Resolver(guard=True, lookup=Fixed("127.0.0.1", "::1"))
    with pytest.raises(EndpointBlocked) as caught:
        await resolver.resolve("rebind.example.com", 80)
    assert caught.value.host == "rebind.example.com"
    assert not caught.value.retriable


async def test_resolver_without_the_guard_keeps_every_address() -> None:
    resolver = Resolver(guard=False, lookup=Fixed("127.0.0.1", "::1"))
    assert await resolver.resolve("localhost", 80) == ["127.0.0.1", "::1"]


async def test_resolver_answers_from_its_cache_within_the_ttl() -> None:
    lookup = Fixed("93.184.216.34")
    resolver = Resolver(guard=True, ttl=60.0, lookup=lookup)
    await resolver.resolve("hooks.example.edu", 443)
    await resolver.resolve("hooks.example.edu", 443)
    await resolver.resolve("hooks.example.edu", 8443)
    assert lookup.calls == [("hooks.example.edu", 443), ("hooks.example.edu", 8443)]


async def test_resolver_asks_again_once_the_ttl_has_passed() -> None:
    lookup = Fixed("93.184.216.34")
    resolver = Resolver(guard=True, ttl=0.0, lookup=lookup)
    await resolver.resolve("hooks.example.edu", 443)
    await resolver.resolve("hooks.example.edu", 443)
    assert len(lookup.calls) == 2


async def test_getaddrinfo_reads_localhost_from_the_system() -> None:
    assert "127.0.0.1" in await getaddrinfo("localhost", 80)
