"""What the reader-study server checks before it acts on a request.

The server has no login: it trusts the machine it is bound to. These checks keep other
parties from acting through the reader's browser or tying up the server:

- Host: only the server's own name (the bound host and port; ``localhost``, ``127.0.0.1``
  and ``[::1]`` when it is bound to loopback), so a DNS-rebinding page cannot talk to it.
- Origin: a POST must come from the server's own origin (or, without an ``Origin`` header,
  not from another site by ``Sec-Fetch-Site``) and carry ``Content-Type: application/json``,
  so a page on another origin cannot answer or undo.
- Body: a ``Content-Length`` of at most :data:`MAX_BODY` bytes, and no more is read.
- JSON: at most :data:`MAX_DEPTH` levels of nesting, checked before parsing.
"""

from __future__ import annotations

import ipaddress
import socket
from email.message import Message
from urllib.parse import urlsplit

from synthmri.reader.study import StudyError

MAX_BODY = 4096
MAX_DEPTH = 8
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values of the server's own page


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback(address: str) -> bool:
    """Whether `address` (an IP literal or ``localhost``) is a loopback address."""
    ip = _ip(address.strip("[]"))
    return address == "localhost" if ip is None else ip.is_loopback


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` (IPv6 in brackets) as (lower-case name, port or None); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or _ip(name) is None or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:  # an IPv6 literal without brackets leaves colons in `port`: malformed
        name, colon, port = value.partition(":")
        port = port if colon else None
        if not name or any(c in name for c in "/@?#\\ "):
            return None
    if port is None:
        return name, None
    if not (port.isascii() and port.isdigit()) or len(port) > 5:
        return None
    return name, int(port)


class HostPolicy:
    """The names a server bound to (`address`, `port`) answers to.

    Args:
        host: the host it was asked to bind to (a name or an IP literal).
        address: the address it is bound to.
        port: the port it is bound to.
    """

    def __init__(self, host: str, address: str, port: int) -> None:
        self.port = port
        self.names = {host.strip("[]").lower(), address.lower()}
        ip = _ip(address)
        self.wildcard = ip is not None and ip.is_unspecified
        if self.wildcard or is_loopback(address):
            self.names |= LOOPBACK_NAMES
        if self.wildcard:  # every interface: the machine's own names and any address literal
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def allows_host(self, value: str | None) -> bool:
        """Whether a ``Host`` header names this server."""
        parsed = split_host(value) if value else None
        if parsed is None:
            return False
        name, port = parsed
        if (port if port is not None else 80) != self.port:
            return False
        return name in self.names or (self.wildcard and _ip(name) is not None)

    def allows_origin(self, value: str) -> bool:
        """Whether an ``Origin`` header is this server's own origin (``http://`` one of its names)."""
        try:
            parts = urlsplit(value.strip())
        except ValueError:
            return False
        return (parts.scheme == "http" and not parts.path and not parts.query and not parts.username
                and self.allows_host(parts.netloc))


def check_host(policy: HostPolicy, headers: Message) -> None:
    """Refuse a request that does not name this server in ``Host`` (400 without one, else 421).

    Raises:
        StudyError: a missing, repeated or foreign ``Host``.
    """
    hosts = headers.get_all("Host") or []
    if len(hosts) != 1:
        raise StudyError("exactly one Host header is required", status=400)
    if not policy.allows_host(hosts[0]):
        raise StudyError("this server does not answer to that Host", status=421)


def check_post(policy: HostPolicy, headers: Message) -> int:
    """Refuse a POST from another origin or that is not JSON; return its body length.

    Raises:
        StudyError: a foreign ``Origin`` or cross-site ``Sec-Fetch-Site`` (403), not JSON (415),
            a chunked body or no ``Content-Length`` (411), a malformed one (400), more than
            :data:`MAX_BODY` bytes (413).
    """
    origins = headers.get_all("Origin") or []
    if origins:
        if len(origins) != 1 or not policy.allows_origin(origins[0]):
            raise StudyError("cross-origin requests are refused", status=403)
    elif (headers.get("Sec-Fetch-Site") or "same-origin").strip().lower() not in SAME_ORIGIN_FETCH:
        raise StudyError("cross-site requests are refused", status=403)
    media_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise StudyError("the body must be application/json", status=415)
    if headers.get("Transfer-Encoding") is not None:
        raise StudyError("send a Content-Length, not a chunked body", status=411)
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        raise StudyError("Content-Length is required", status=411)
    values = {value.strip() for value in lengths}
    if len(values) != 1 or not all(v.isascii() and v.isdigit() for v in values):
        raise StudyError("Content-Length must be one non-negative integer", status=400)
    (value,) = values
    if len(value) > 9 or int(value) > MAX_BODY:
        raise StudyError(f"request body over {MAX_BODY} bytes", status=413)
    return int(value)


def check_depth(body: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested more than `limit` deep (arrays and objects), before it is parsed.

    Raises:
        StudyError: too deep (400).
    """
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                raise StudyError(f"JSON nested more than {limit} deep", status=400)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
