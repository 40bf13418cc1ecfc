"""Errors as ``application/problem+json`` (RFC 9457), with the same one-line messages as the CLI.

Every error body is ``{"type", "title", "status", "detail", "instance"}`` plus ``code``, a stable machine-readable
name (``no_face``, ``unknown_person``...). ``type`` is ``about:blank``, so ``title`` is the HTTP status phrase as
RFC 9457 asks; ``detail`` is what the CLI prints after ``Error:``. The library's own errors
(:data:`gallery.errors.USER_ERRORS`) map to a status by class; anything else is a 500 whose detail names the
exception type only (the traceback goes to the server log, never to the client).
"""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gallery.errors import (
    USER_ERRORS,
    EmptyGalleryError,
    GalleryBusyError,
    ImageLoadError,
    InvalidInputError,
    NoFaceError,
    PersonNotFoundError,
    QueueFullError,
    WeightsError,
    WeightsMismatchError,
)
from gallery.manage.keys import KeyNotFoundError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

# Most specific first: (library error class, HTTP status, code).
_STATUS = (
    (PersonNotFoundError, 404, "unknown_person"),
    (KeyNotFoundError, 404, "unknown_key"),
    (NoFaceError, 422, "no_face"),
    (QueueFullError, 503, "busy"),
    (GalleryBusyError, 503, "gallery_busy"),
    (WeightsMismatchError, 409, "weights_mismatch"),
    (EmptyGalleryError, 409, "empty_gallery"),
    (WeightsError, 503, "model_unavailable"),
    (ImageLoadError, 400, "bad_image"),
    (InvalidInputError, 400, "invalid_input"),
)


class Problem(Exception):
    """An error the service raises itself (auth, limits, timeouts): answered as problem+json."""

    def __init__(self, status: int, detail: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.code, self.headers = status, detail, code, headers or {}


def first_line(exc: BaseException) -> str:
    """The message the CLI shows after ``Error:`` (its first line)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def problem_response(status: int, detail: str, code: str, instance: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            "code": code}
    if instance is not None:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def problem_bytes(status: int, detail: str, code: str, instance: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a problem, for the ASGI middleware that answers before the application runs."""
    response = problem_response(status, detail, code, instance)
    return response.raw_headers, response.body


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            return status, code
    return 400, "invalid_request"  # any other GalleryError: the request cannot be done as asked


def install(app: FastAPI, retry_after_s: int) -> None:
    """Register the handlers that turn every error into problem+json."""
    busy = {"Retry-After": str(retry_after_s)}

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, exc.code, request.url.path, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return problem_response(exc.status_code, detail, code, request.url.path, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",))
        detail = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
        return problem_response(422, detail, "invalid_parameter", request.url.path)

    for cls in USER_ERRORS:
        @app.exception_handler(cls)
        async def _library(request: Request, exc: Exception):
            status, code = status_of(exc)
            return problem_response(status, first_line(exc), code, request.url.path,
                                    busy if status == 503 and code in ("busy", "gallery_busy") else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return problem_response(500, f"unexpected {type(exc).__name__} (see the server log)", "internal_error",
                                request.url.path)
