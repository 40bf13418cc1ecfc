"""API keys on every endpoint but health: FastAPI dependencies that check a key and its scope.

The key travels as ``Authorization: Bearer <token>`` (or ``X-API-Key: <token>``). It is looked up in the database
on every request (one indexed read), so a key revoked through any process stops working at once in every worker.
No key, a wrong one or a revoked one: 401 with ``WWW-Authenticate: Bearer``. A read-only key on an endpoint that
writes: 403.
"""
from __future__ import annotations

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gallery.manage.keys import ApiKeyInfo, authenticate
from server.problems import Problem

_bearer = HTTPBearer(auto_error=False, description="An API key from `facegallery keys create NAME`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key in a header of its own.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def api_key(request: Request, bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
            header: str | None = Security(_header)) -> ApiKeyInfo:
    """The key the request carries; 401 when it has none or one that is wrong or revoked."""
    token = bearer.credentials if bearer is not None else header
    if not token:
        raise Problem(401, "missing API key: send 'Authorization: Bearer <key>' (create one with "
                           "`facegallery keys create NAME`)", "missing_key", _CHALLENGE)
    key = authenticate(request.app.state.gallery, token)
    if key is None:
        raise Problem(401, "invalid or revoked API key", "invalid_key", _CHALLENGE)
    return key


def can_read(key: ApiKeyInfo = Depends(api_key)) -> ApiKeyInfo:
    return key


def can_write(key: ApiKeyInfo = Depends(api_key)) -> ApiKeyInfo:
    if not key.can_write:
        raise Problem(403, f"the API key {key.name!r} is read-only; this request changes the gallery and needs a "
                           f"key with write scope", "read_only_key")
    return key
