"""Who may talk to the dashboard: the token, the Host allow-list, the Origin
check, and the login cookie.

Every request passes ``Guard.check`` before any view runs:

1. its ``Host`` must name this server (the bind address, ``localhost``, the
   loopback addresses, or a name given with ``--dashboard-allowed-hosts``),
   else 403 whatever credentials it carries (DNS rebinding, CVE-2025-62593);
2. a mutating verb (POST, PUT, PATCH, DELETE) whose ``Origin`` (or
   ``Sec-Fetch-Site``) says it came from another site gets 403 (CSRF);
3. it must carry the token, as ``Authorization: Bearer <token>`` or the
   HttpOnly, SameSite=Strict cookie the login form sets; compared in
   constant time. Else 401 for the API, a redirect to the login form for
   pages (CVE-2023-48022, CVE-2026-27482).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

import psutil

COOKIE = "zray_dashboard_session"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: paths served without the token (the login form itself)
OPEN_PATHS = frozenset({"/login"})


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(bind_host: str, extra: list[str]) -> set[str]:
    """Host names (lower case, no port) this server answers to."""
    names = {"localhost", "127.0.0.1", "::1", bind_host.strip("[]").lower()}
    names.update(h.strip().lower().strip("[]") for h in extra if h.strip())
    if bind_host in ("0.0.0.0", "::", ""):
        for addrs in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0].lower() for a in addrs
                         if a.family in (socket.AF_INET, socket.AF_INET6))
        names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
    return names


def _split_host(value: str) -> str:
    """The host part of a Host header value (``name:port``, ``[v6]:port``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """The checks every request passes (see the module docstring)."""

    def __init__(self, token: str | None, bind_host: str, allowed_hosts: list[str]):
        self.token = token
        self.allowed = host_names(bind_host, allowed_hosts)
        # the cookie holds a value derived from the token, never the token itself
        self._cookie_value = (hmac.new(token.encode(), b"zray-dashboard-cookie",
                                       hashlib.sha256).hexdigest() if token else "")

    def host_allowed(self, host_header: str | None) -> bool:
        return bool(host_header) and _split_host(host_header) in self.allowed

    def origin_allowed(self, origin: str | None, fetch_site: str | None,
                       host_header: str | None = None) -> bool:
        """A mutating request from a page of another origin is refused: the
        Origin must be this dashboard itself, its port included (a page on
        another port of localhost is another site for this check, though
        cookies do not tell ports apart)."""
        if fetch_site and fetch_site.lower() not in ("same-origin", "none"):
            return False
        if not origin:
            return True             # not sent by a browser page (curl, SDKs)
        if origin == "null":
            return False
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or (parts.hostname or "") not in self.allowed:
            return False
        return host_header is None or parts.netloc.lower() == host_header.strip().lower()

    def token_ok(self, presented: str | None) -> bool:
        if self.token is None:
            return True
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())

    def cookie_ok(self, value: str | None) -> bool:
        if self.token is None:
            return True
        return bool(value) and hmac.compare_digest(value.encode(), self._cookie_value.encode())

    def cookie_value(self) -> str:
        return self._cookie_value

    def authenticated(self, authorization: str | None, cookie: str | None) -> bool:
        if self.token is None:
            return True
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_ok(value.strip()):
                return True
        return self.cookie_ok(cookie)
