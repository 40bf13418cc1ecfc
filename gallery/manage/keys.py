"""API keys of the HTTP service: created with a scope, shown once, stored hashed, revoked by name.

A token is ``fgk_`` + 32 random bytes (``secrets.token_urlsafe``, 256 bits). The database keeps its sha256 only.
A plain, fast hash is enough here: slow password hashes (bcrypt, argon2) exist to make guessing a low-entropy
secret from a stolen hash expensive, and nobody can enumerate 2**256 tokens however fast each guess is; a fast
hash also lets every request be checked with one indexed lookup instead of ~100 ms of deliberate work. The
lookup is by the hash of what the client sent, so response timing can reveal at most something about a hash,
never about a valid token.

Keys are written through :meth:`gallery.store.Gallery.writing` like every other change; checking one is a read.
A revoked key keeps its row (when it was revoked) and never authenticates again; its name may be reused.
"""
from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from db import queries as q
from gallery.errors import GalleryError, InvalidInputError
from gallery.store import Gallery

SCOPES = ("read", "write")
TOKEN_PREFIX = "fgk_"
PREFIX_CHARS = 12  # "fgk_" + 8 token characters: shown by `keys list` to tell keys apart
MAX_NAME_CHARS = 64


class KeyNotFoundError(GalleryError):
    """No active API key has that name."""


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as listed: never the token itself."""

    name: str
    scope: str
    prefix: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def can_write(self) -> bool:
        return self.scope == "write"

    def to_dict(self) -> dict:
        return {"name": self.name, "scope": self.scope, "prefix": self.prefix, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "active": self.active}


@dataclass(frozen=True)
class CreatedKey:
    """A new key and its token: the only time the token is available."""

    key: ApiKeyInfo
    token: str

    def to_dict(self) -> dict:
        return {**self.key.to_dict(), "token": self.token}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_key(gallery: Gallery, name: str, *, read_only: bool = False) -> CreatedKey:
    """A new key named ``name`` (read scope when ``read_only``, else read and write). A key may come first, before
    anything is enrolled, so this creates the gallery when none exists (like the first enroll)."""
    name = _checked_name(name)
    gallery.create()
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with gallery.writing() as w:
        if q.active_api_key(w.session, name=name) is not None:
            raise InvalidInputError(f"an API key named {name!r} already exists (revoke it first or pick another name)")
        row = q.add_api_key(w.session, name, hash_token(token), token[:PREFIX_CHARS], "read" if read_only else "write")
        info = _info(row)
    return CreatedKey(info, token)


def list_keys(gallery: Gallery) -> list[ApiKeyInfo]:
    """Every key, revoked ones included, oldest first."""
    with gallery.session() as s:
        return [_info(k) for k in q.api_keys(s)]


def revoke_key(gallery: Gallery, name: str) -> ApiKeyInfo:
    """Revoke the active key named ``name``; it stops working at once, in every server process."""
    with gallery.writing() as w:
        row = q.active_api_key(w.session, name=name)
        if row is None:
            raise KeyNotFoundError(f"no active API key named {name!r}")
        when = datetime.now(timezone.utc)
        q.revoke_api_key(w.session, row, when)
        info = _info(row)
    return ApiKeyInfo(info.name, info.scope, info.prefix, info.created_at, _iso(when))


def authenticate(gallery: Gallery, token: str | None) -> ApiKeyInfo | None:
    """The active key whose token this is, or None (missing, wrong or revoked)."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        return None
    with gallery.session() as s:
        row = q.active_api_key(s, token_sha256=hash_token(token))
        return _info(row) if row is not None else None


def has_active_keys(gallery: Gallery) -> bool:
    with gallery.session() as s:
        return q.count_active_api_keys(s) > 0


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInputError("API key name is blank")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInputError(f"API key name is {len(name)} characters long (at most {MAX_NAME_CHARS})")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidInputError("API key name contains control characters")
    return name


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:  # SQLite hands back naive datetimes; they were stored in UTC
        when = when.replace(tzinfo=timezone.utc)
    return when.isoformat(timespec="seconds")


def _info(row) -> ApiKeyInfo:
    return ApiKeyInfo(row.name, row.scope, row.prefix, _iso(row.created_at), _iso(row.revoked_at))
