"""The versioned endpoints. Each one parses the request, calls one gallery function in a worker thread and
returns that function's result with ``to_dict()``: the JSON the CLI prints with ``--json``."""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request

from gallery.config import DEFAULT_AUGMENT, DEFAULT_MODELS, DEFAULT_TARGET_FPIR
from gallery.errors import ImageLoadError, InvalidInputError, QueueFullError
from gallery.manage.keys import ApiKeyInfo
from server.auth import can_read, can_write
from server.uploads import multipart_body, read_images

router = APIRouter(prefix="/v1")

ModelQuery = Query(None, description=f"Embedder(s) to use, repeatable ({', '.join(DEFAULT_MODELS)}); default: "
                                     f"every one the gallery holds (identify) or every one with weights.")
ThresholdQuery = Query(None, description="Cosine threshold for every model (default: per model, calibrated or "
                                         "built in).")


@router.get("/health", tags=["service"])
async def health(request: Request) -> dict:
    """Liveness: no key needed. Says whether the gallery is open and how batching has gone in this worker."""
    state = request.app.state
    batched = getattr(state, "batched", None)
    return {"status": "ok", "worker": os.getpid(), "batching": batched is not None,
            "in_flight": getattr(state, "in_flight", 0),
            "batches": {k: v.to_dict() for k, v in batched.stats().items()} if batched is not None else {}}


@router.post("/identify", tags=["recognition"], openapi_extra=multipart_body("images"))
async def identify(request: Request, model: list[str] | None = ModelQuery, threshold: float | None = ThresholdQuery,
                   top_k: int = Query(5, ge=1, le=100), aggregate: Literal["centroid", "max", "mean3"] = "centroid",
                   target_fpir: float = Query(DEFAULT_TARGET_FPIR, gt=0, lt=1,
                                              description="Share of strangers the default threshold may name."),
                   _key: ApiKeyInfo = Depends(can_read)) -> dict:
    """Every face in each uploaded image (field `images`, repeatable), per embedder: name, unknown or ambiguous.
    Same JSON as `facegallery identify --json`. One unreadable image: 400; among several, an `error` entry."""
    from gallery.recognize.identify import identify as do_identify

    images = (await read_images(request, request.app.state.options, ["images"]))["images"]
    rep = await _run(request, lambda g: do_identify(g, images, models=_models(model), threshold=threshold,
                                                   top_k=top_k, aggregate=aggregate, target_fpir=target_fpir))
    if len(rep.images) == 1 and rep.images[0].error:  # as the CLI: one image that cannot be read is an error
        raise ImageLoadError(rep.images[0].path, rep.images[0].error)
    return rep.to_dict()


@router.post("/verify", tags=["recognition"], openapi_extra=multipart_body("image_a", "image_b"))
async def verify(request: Request, model: list[str] | None = ModelQuery, threshold: float | None = ThresholdQuery,
                 _key: ApiKeyInfo = Depends(can_read)) -> dict:
    """Are the largest faces of `image_a` and `image_b` the same person? Same JSON as `verify --json`."""
    from gallery.recognize.verify import verify as do_verify

    files = await read_images(request, request.app.state.options, ["image_a", "image_b"])
    a, b = files["image_a"][0], files["image_b"][0]
    rep = await _run(request, lambda g: do_verify(g, a, b, models=_models(model), threshold=threshold))
    return rep.to_dict()


@router.post("/people/{name:path}/photos", tags=["people"], openapi_extra=multipart_body("photos"))
async def enroll(request: Request, name: str = Path(description="The person's name (created when new)."),
                 model: list[str] | None = ModelQuery, augment: int = Query(DEFAULT_AUGMENT, ge=0, le=100),
                 seed: int = 0, _key: ApiKeyInfo = Depends(can_write)) -> dict:
    """Enroll the uploaded photos (field `photos`, repeatable) for one person: the largest face of each.
    Same JSON as `enroll --json`; a photo without a face is a `skipped` entry. Uploading the same file name
    with the same bytes again changes nothing."""
    from gallery.enroll.enroll import enroll_images

    photos = (await read_images(request, request.app.state.options, ["photos"]))["photos"]
    rep = await _run(request, lambda g: enroll_images(g, name, photos, models=_models(model), augment=augment,
                                                     seed=seed))
    return rep.to_dict()


@router.get("/people", tags=["people"])
async def people(request: Request, _key: ApiKeyInfo = Depends(can_read)) -> dict:
    """People with photo, face and embedding counts per embedder (`people --json`)."""
    from gallery.manage.people import list_people

    rows = await _run(request, list_people)
    return {"people": [p.to_dict() for p in rows]}


@router.delete("/people/{name:path}", tags=["people"])
async def forget(request: Request, name: str, _key: ApiKeyInfo = Depends(can_write)) -> dict:
    """Erase a person: rows, index vectors, heads trained with them; the database file is compacted
    (`forget --json`). Unknown name: 404."""
    from gallery.manage.people import forget as forget_person

    rep = await _run(request, lambda g: forget_person(g, name))
    return rep.to_dict()


@router.get("/models", tags=["service"])
async def models(request: Request, _key: ApiKeyInfo = Depends(can_read)) -> dict:
    """Embedders and where their weights come from (`models --json`)."""
    from gallery.manage.models import list_models

    st = await _run(request, lambda g: list_models(g.settings.weights_dir, g))
    return {"models": [m.to_dict() for m in st]}


def _models(model: list[str] | None) -> list[str] | None:
    for m in model or ():
        if m not in DEFAULT_MODELS:
            raise InvalidInputError(f"unknown model {m!r}; known: {', '.join(DEFAULT_MODELS)}")
    return list(model) if model else None


async def _run(request: Request, fn: Callable):
    """``fn(gallery)`` in a worker thread, counted against ``max_in_flight`` (one more: 503 busy)."""
    state = request.app.state
    async with _admitted(state):
        return await anyio.to_thread.run_sync(fn, state.gallery, limiter=state.limiter, abandon_on_cancel=True)


@asynccontextmanager
async def _admitted(state):
    limit = state.options.max_in_flight
    if state.in_flight >= limit:
        raise QueueFullError(f"the server is busy: {limit} requests are already being answered; retry shortly")
    state.in_flight += 1
    try:
        yield
    finally:
        state.in_flight -= 1
