"""Refuse webhook targets that are not public addresses (CONTRACT section 6).

Unless ``ALLOW_PRIVATE_ENDPOINTS`` is set, a webhook may only reach a public address. The
check runs on the addresses a name resolves to (``consumer.delivery.connections.Resolver``),
so a public-looking name that resolves to ``127.0.0.1`` is caught, and the sender connects
only to the addresses that passed it. A host that is an IP literal is never resolved: the
sender checks it with ``literal_address`` before connecting.

Both functions here are pure.
"""

from __future__ import annotations

import ipaddress
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final

IPAddress = IPv4Address | IPv6Address

# Named explicitly so the verdict does not depend on the Python patch release's idea of
# ``is_global``; that property is consulted as well, for anything registered since.
_BLOCKED_V4: Final = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", including the unspecified address
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including broadcast
    )
)
_BLOCKED_V6: Final = tuple(
    IPv6Network(net)
    for net in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible block
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/32",  # Teredo: the client address inside is obfuscated
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64: Final = IPv6Network("64:ff9b::/96")


def is_blocked_address(address: str | IPAddress) -> bool:
    """True when ``address`` is not a public unicast address a webhook may be sent to.

    IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::a.b.c.d``) addresses are judged by
    the IPv4 address they carry; a 6to4 address is blocked when its IPv4 address is. A
    string that is not an IP address is blocked.
    """
    if isinstance(address, str):
        try:
            addr: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return True
    else:
        addr = address
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is not None:
            return is_blocked_address(addr.ipv4_mapped)
        if addr in _NAT64:
            return is_blocked_address(IPv4Address(int(addr) & 0xFFFFFFFF))
        if any(addr in net for net in _BLOCKED_V6):
            return True
        if addr.sixtofour is not None and is_blocked_address(addr.sixtofour):
            return True
    elif any(addr in net for net in _BLOCKED_V4):
        return True
    return not addr.is_global or addr.is_multicast or addr.is_reserved


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names when it is an IP literal, else None.

    Accepts what a resolver would: ``[::1]``, a zone id, a trailing dot, and the legacy IPv4
    spellings ``2130706433``, ``127.1`` and ``0x7f.0.0.1``.
    """
    text = host.removeprefix("[").removesuffix("]").split("%", 1)[0]
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return IPv4Address(socket.inet_aton(text))
    except OSError:
        return None
