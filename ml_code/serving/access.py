"""Who may talk to the local endpoint: loopback binds, Host header names, constant-time tokens.

Standard library only: the deployer (``dermaops_resources.endpoint``) imports these without
pulling in the HTTP stack.
"""

from __future__ import annotations

import hmac
import ipaddress

ADMIN_TOKEN_HEADER = "X-Admin-Token"
AUTHORIZATION_HEADER = "Authorization"  # "Bearer <token>" on /invocations when an invoke token is set
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def same_token(offered: str, token: str) -> bool:
    """Constant-time comparison (the time taken does not tell how much of a guess was right)."""
    return hmac.compare_digest(offered.encode("utf-8", "replace"), token.encode("utf-8"))


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """True when no token is configured or ``authorization`` is ``Bearer <token>``."""
    if not token:
        return True
    scheme, _, offered = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and same_token(offered.strip(), token)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1); False for names and ``0.0.0.0``."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_header_name(value: str | None) -> str | None:
    """The host name of a Host header, lower case, without port or IPv6 brackets; None if absent/garbled."""
    value = (value or "").strip().lower()
    if not value:
        return None
    if value.startswith("["):  # [::1]:8080
        end = value.find("]")
        return value[1:end] if end > 0 else None
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".") or None


def allowed_host_names(host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """Host header names a server bound to ``host`` answers: the bound address, the loopback names
    (a DNS-rebinding page cannot make a browser send those) and any ``extra`` names."""
    names = {host.strip().strip("[]").lower(), *LOOPBACK_NAMES, *(h.strip().lower() for h in extra)}
    return frozenset(n for n in names if n)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
