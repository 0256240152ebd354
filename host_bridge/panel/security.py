"""Who may use the panel: the token, the Host check and the same-origin check.

- Every state-changing request (cancel, retry, archive, pick) needs the token in
  the ``X-FaceStitch-Token`` header and an ``Origin`` equal to the panel's own
  (a page elsewhere can neither read the token nor pass the origin check; a
  JSON body also makes the browser ask before any cross-origin POST).
- Reads need the token too when the panel listens on anything but the loopback
  interface (header, the ``HttpOnly`` ``SameSite=Strict`` cookie the page gets
  from ``/api/session``, or ``?token=`` in a link).
- On the loopback interface the ``Host`` header must name it (``127.0.0.1``,
  ``localhost``, ``[::1]``) with the panel's port: a hostile page cannot reach
  the panel through a DNS name rebound to 127.0.0.1.

The page receives the token in the URL's fragment (``#token=...``), which the
browser never sends to a server nor puts in a ``Referer``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["TOKEN_HEADER", "TOKEN_COOKIE", "new_token", "is_loopback", "Guard"]

TOKEN_HEADER = "x-facestitch-token"
TOKEN_COOKIE = "facestitch_panel"


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether a listening address is the loopback interface only."""
    h = host.strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _same(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


@dataclass
class Guard:
    """The checks for one running panel.

    Args:
        token: the secret state-changing requests carry.
        host: the address the panel listens on.
        port: its port (set once the socket is bound).
    """

    token: str
    host: str = "127.0.0.1"
    port: int = 0
    loopback: bool = field(init=False)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the panel needs a token")
        self.loopback = is_loopback(self.host)

    def host_ok(self, host_header: str | None) -> bool:
        """The ``Host`` a request came with (loopback panels only check it)."""
        if not self.loopback:
            return True
        allowed = {f"127.0.0.1:{self.port}", f"localhost:{self.port}",
                   f"[::1]:{self.port}"}
        return (host_header or "").lower() in allowed

    def token_given(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                    query: Mapping[str, str]) -> bool:
        """Whether the request carries the token (header, cookie or query)."""
        return (_same(headers.get(TOKEN_HEADER), self.token)
                or _same(cookies.get(TOKEN_COOKIE), self.token)
                or _same(query.get("token"), self.token))

    def may_read(self, headers: Mapping[str, str], cookies: Mapping[str, str],
                 query: Mapping[str, str]) -> bool:
        return self.loopback or self.token_given(headers, cookies, query)

    def write_refusal(self, headers: Mapping[str, str]) -> str | None:
        """Why a state-changing request is refused, or None when it may go on:
        the token in its header (never a cookie: a browser sends those along
        from anywhere) and an ``Origin`` equal to this panel's."""
        if not _same(headers.get(TOKEN_HEADER), self.token):
            return ("this request needs the panel's token (open the panel with the "
                    "URL that 'facestitch panel' printed)")
        origin = headers.get("origin")
        host = headers.get("host")
        if not origin or not host or origin.lower() != f"http://{host}".lower():
            return "requests from another origin are refused"
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return "requests from another site are refused"
        return None
