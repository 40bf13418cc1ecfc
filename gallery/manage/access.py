"""The web app's access token: made on the app's first start and shown once, stored hashed in the gallery.

Anyone who can open the app can identify, enroll and forget, so every page asks for the token first. Only the
sha256 of the token is kept (a settings row, written through the one write path); a wrong token compares in
constant time. ``facegallery app --new-token`` replaces it (the old one stops working at once); ``--no-auth`` is
allowed only on a loopback address.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from db import queries as q
from gallery.config import Settings
from gallery.errors import GalleryError
from gallery.store import Gallery

TOKEN_KEY = "app.token_sha256"
#: How ``facegallery app`` tells the page whether to ask for the token and whether it may read server paths.
ACCESS_ENV = "FACEGALLERY_APP_ACCESS"
TOKEN_BYTES = 24  # 192 random bits, url-safe text of 32 characters


def _digest(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def has_token(gallery: Gallery) -> bool:
    with gallery.session() as s:
        return q.get_setting(s, TOKEN_KEY) is not None


def new_token(gallery: Gallery) -> str:
    """Make a token, store its hash (replacing any other) and return it: the only time it can be shown."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with gallery.writing() as w:
        q.set_setting(w.session, TOKEN_KEY, _digest(token))
    return token


def token_ok(gallery: Gallery, token: str) -> bool:
    """Whether ``token`` is the app's token (False when none was made)."""
    with gallery.session() as s:
        stored = q.get_setting(s, TOKEN_KEY)
    return stored is not None and bool(token.strip()) and hmac.compare_digest(stored, _digest(token))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the app on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AppAccess:
    """How the app is protected: ``auth`` (every page asks for the token), ``paths`` (the page may open image
    files on the server by path), the ``token`` made by this start (shown once; None when an older one holds) and
    what the user should know."""

    auth: bool = True
    paths: bool = False
    token: str | None = None
    notes: tuple[str, ...] = ()

    def to_env(self) -> str:
        return json.dumps({"auth": self.auth, "paths": self.paths})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AppAccess:
        """What the page was started with; without the variable (``streamlit run``): token required, no paths."""
        raw = environ.get(ACCESS_ENV)
        doc = json.loads(raw) if raw else {}
        return cls(auth=bool(doc.get("auth", True)), paths=bool(doc.get("paths", False)))


def app_access(settings: Settings, *, host: str, no_auth: bool = False, allow_paths: bool = False,
               renew: bool = False) -> AppAccess:
    """Decide how ``facegallery app`` on ``host`` is protected, making the token on the first start (or with
    ``renew``). Serving beyond this machine without a token is refused."""
    notes = []
    if not is_loopback(host):
        if no_auth:
            raise GalleryError(f"refusing to serve {host} without an access token: --no-auth is only for a "
                               f"loopback --host such as 127.0.0.1")
        notes.append(f"listening on {host}: anyone who can reach this port and has the token can identify, enroll "
                     f"and forget; over plain http the token can be read on the way (put a TLS proxy in front)")
    if allow_paths:
        notes.append("--allow-paths: the page opens image files on this machine by path")
    if no_auth:
        return AppAccess(False, allow_paths, None, (*notes, "no access token (--no-auth): every local user can "
                                                              "use the app"))
    with Gallery(settings) as g:  # the app enrolls: it may make the gallery
        token = new_token(g) if renew or not has_token(g) else None
    return AppAccess(True, allow_paths, token, tuple(notes))
