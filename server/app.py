"""The application factory: one gallery per worker process, opened in the lifespan, shared by every request.

The models load once per worker, when it starts (``ServerOptions.warm_up``), not in the first request. Requests
run the library's blocking calls in worker threads, never on the event loop; with micro-batching on
(``ServerOptions.batching``) the gallery's detector and embedders are :class:`gallery.recognize.batching.BatchedModels`
wrappers, so concurrent requests share forward passes. At most ``max_in_flight`` requests use the models at once
in one worker; one more is answered 503 with Retry-After instead of queueing without bound.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import anyio
from fastapi import FastAPI

from gallery.config import Settings
from gallery.recognize.batching import BatchedModels, open_batched, warm_up
from gallery.store import Gallery
from server import problems
from server.config import ServerOptions, from_env
from server.middleware import Limits
from server.routes import router

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, options: ServerOptions | None = None, *, detector=None,
               embedder_factory: Callable[..., object] | None = None) -> FastAPI:
    """The FastAPI application over the gallery of ``settings``.

    ``detector`` and ``embedder_factory`` replace the real MTCNN and embedders (tests inject small or slow fakes),
    exactly as in :class:`~gallery.store.Gallery`; micro-batching wraps whichever is used.
    """
    settings = settings or Settings()
    options = options or ServerOptions()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gallery, batched = _open(settings, options, detector, embedder_factory)
        app.state.gallery, app.state.batched = gallery, batched
        app.state.limiter = anyio.CapacityLimiter(options.max_in_flight)
        app.state.in_flight = 0
        try:
            if options.warm_up:
                await anyio.to_thread.run_sync(warm_up, gallery)
            yield
        finally:
            if batched is not None:
                batched.close()
            gallery.close()

    app = FastAPI(
        title="facegallery", version=_version(), lifespan=lifespan,
        summary="Face identification, verification and enrollment over a facegallery gallery.",
        description="Every endpoint but `/v1/health` needs an API key (`facegallery keys create NAME`), sent as "
                    "`Authorization: Bearer <key>`. Errors are `application/problem+json` (RFC 9457) whose "
                    "`detail` is the CLI's one-line message. Responses are the JSON the CLI prints with `--json`.",
    )
    app.state.options = options
    app.state.settings = settings
    problems.install(app, options.retry_after_s)
    app.include_router(router)
    app.add_middleware(Limits, max_bytes=options.max_request_bytes, timeout_s=options.request_timeout_s)
    return app


def app_from_env() -> FastAPI:
    """The factory uvicorn's worker processes call (``server.app:app_from_env``); see :mod:`server.config`."""
    settings, options = from_env()
    return create_app(settings, options)


def _open(settings, options, detector, embedder_factory) -> tuple[Gallery, BatchedModels | None]:
    if not options.batching:
        return Gallery(settings, detector=detector, embedder_factory=embedder_factory), None
    return open_batched(settings, options.batch, detector=detector, embedder_factory=embedder_factory)


def _version() -> str:
    try:
        return version("facegallery")
    except PackageNotFoundError:
        return "0"
