"""Micro-batching: concurrent calls of the detector and of each embedder joined into one call.

A service answers many small requests at once. Alone, each one runs MTCNN on one photo and an embedder on a few
crops; joined, one forward pass serves them all, which is where a GPU (and, less so, a CPU) gains. A
:class:`MicroBatcher` puts each call on a bounded queue; one worker thread takes the first waiting call, waits up to
``max_wait_ms`` for more (until ``max_batch`` items are collected), runs the wrapped function once on all their
items and hands each caller its slice. A full queue raises :class:`QueueFullError` at once (the service answers
503 with Retry-After) instead of growing without bound.

:class:`BatchedModels` wraps the real detector and embedders behind their usual interfaces and is handed to
:class:`~gallery.store.Gallery` through its ``detector`` / ``embedder_factory`` parameters, so identify, verify and
enroll run unchanged. Only the worker thread calls the wrapped component, so it never runs two forward passes at
once.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from PIL import Image

from gallery.config import Settings
from gallery.errors import USER_ERRORS, QueueFullError
from gallery.store import Gallery, default_detector
from indexer.detect import whole_image_face
from indexer.embedders import create_embedder

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True)
class BatchOptions:
    """How calls are joined. ``max_batch`` is a soft cap in items (photos for the detector, crops for an
    embedder): a call that would pass it still joins the batch it is taken into, and a bigger call runs alone."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 64  # calls waiting per component; one more raises QueueFullError

    def __post_init__(self):
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")


@dataclass(frozen=True)
class BatchStats:
    """What a batcher did: joined calls run, caller calls served, items processed, the largest joined call."""

    runs: int
    calls: int
    items: int
    largest: int

    def to_dict(self) -> dict:
        return {"runs": self.runs, "calls": self.calls, "items": self.items, "largest": self.largest,
                "calls_per_run": round(self.calls / self.runs, 2) if self.runs else 0.0}


@dataclass
class _Call:
    items: list
    future: Future


class MicroBatcher:
    """Joins concurrent calls ``fn(items) -> results`` (one result per item, a list or an array) into one call."""

    def __init__(self, fn: Callable[[list], Sequence], options: BatchOptions = BatchOptions(), *, name: str = "batch"):
        self._fn = fn
        self.options = options
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=options.max_queue)
        self._stats = [0, 0, 0, 0]  # runs, calls, items, largest
        self._thread = threading.Thread(target=self._loop, name=f"facegallery-{name}", daemon=True)
        self._thread.start()

    def __call__(self, items: Sequence) -> Sequence:
        """``fn(items)``, run together with whatever other calls arrive within the wait. Blocks until done."""
        items = list(items)
        if not items:
            return self._fn(items)
        call = _Call(items, Future())
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            raise QueueFullError(f"the server is busy: {self.options.max_queue} requests are already waiting for "
                                 f"the {self.name}; retry shortly") from None
        return call.future.result()

    def stats(self) -> BatchStats:
        return BatchStats(*self._stats)

    def close(self) -> None:
        """Stop the worker once the calls already queued are served."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    # -- the worker thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            self._run(batch)
            if stop:
                return

    def _collect(self, first: _Call) -> tuple[list[_Call], bool]:
        """``first`` and the calls that arrive within the wait, up to ``max_batch`` items."""
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.options.max_wait_ms / 1000
        while size < self.options.max_batch:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
            size += len(nxt.items)
        return batch, False

    def _run(self, batch: list[_Call]) -> None:
        items = [x for call in batch for x in call.items]
        try:
            out = self._fn(items)
            if len(out) != len(items):
                raise RuntimeError(f"{self.name} returned {len(out)} results for {len(items)} items")
        except Exception as exc:  # handed to the caller, who re-raises it
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:  # one bad call must not fail the others: each is run again on its own
                log.debug("%s: a joined call failed (%s); running its %d calls one by one", self.name, exc, len(batch))
                for call in batch:
                    self._run([call])
            return
        runs, calls, n, largest = self._stats
        self._stats = [runs + 1, calls + len(batch), n + len(items), max(largest, len(items))]
        offset = 0
        for call in batch:
            call.future.set_result(out[offset:offset + len(call.items)])
            offset += len(call.items)


class BatchingDetector:
    """A detector whose ``detect`` / ``detect_batch`` calls from many threads are joined into ``detect_batch``."""

    def __init__(self, detector, options: BatchOptions = BatchOptions()):
        self.inner = detector
        self.batcher = MicroBatcher(detector.detect_batch, options, name="detector")

    def detect(self, img):
        return self.batcher([img])[0]

    def detect_batch(self, imgs):
        return list(self.batcher(imgs))

    def __getattr__(self, name):  # config and anything else: the real detector's
        return getattr(self.inner, name)


class BatchingEmbedder:
    """An embedder whose ``embed_crops`` calls from many threads are joined into one ``embed_crops``."""

    def __init__(self, embedder, options: BatchOptions = BatchOptions(), batch_size: int = 32):
        self.inner = embedder
        self.batcher = MicroBatcher(lambda crops: embedder.embed_crops(crops, batch_size=batch_size), options,
                                    name=f"{embedder.name} embedder")

    def embed_crops(self, crops, batch_size: int | None = None):
        return self.batcher(crops)

    def __getattr__(self, name):  # name, weights, crop, dim, ...: the real embedder's
        return getattr(self.inner, name)


class BatchedModels:
    """A batching detector and embedder factory to hand to ``Gallery(detector=..., embedder_factory=...)``.

    ``detector`` is the real detector (``gallery.store.default_detector(settings)``), ``embedder_factory`` the real
    factory (``indexer.embedders.create_embedder`` or a test's). Call :meth:`close` when the gallery is closed;
    :func:`open_batched` does all of this.
    """

    def __init__(self, detector, embedder_factory: Callable[..., object], options: BatchOptions = BatchOptions(),
                 *, batch_size: int = 32):
        self.options = options
        self.detector = BatchingDetector(detector, options)
        self._factory = embedder_factory
        self._batch_size = batch_size
        self._embedders: dict[str, BatchingEmbedder] = {}
        self._mutex = threading.Lock()

    def embedder_factory(self, name: str, **kwargs) -> BatchingEmbedder:
        with self._mutex:
            if name not in self._embedders:
                self._embedders[name] = BatchingEmbedder(self._factory(name, **kwargs), self.options,
                                                         self._batch_size)
            return self._embedders[name]

    def stats(self) -> dict[str, BatchStats]:
        """Per component (``detector``, then each embedder by name): what its batcher did."""
        out = {"detector": self.detector.batcher.stats()}
        out.update({name: e.batcher.stats() for name, e in sorted(self._embedders.items())})
        return out

    def close(self) -> None:
        for b in [self.detector.batcher, *(e.batcher for e in self._embedders.values())]:
            b.close()


def open_batched(settings: Settings, options: BatchOptions = BatchOptions(), *, detector=None,
                 embedder_factory: Callable[..., object] | None = None) -> tuple[Gallery, BatchedModels]:
    """A gallery whose detector and embedders batch concurrent calls; close both (the models first) when done.

    ``detector`` / ``embedder_factory``: the real components to wrap (default: the gallery's own MTCNN and the
    registry's embedders), as in :class:`~gallery.store.Gallery`.
    """
    batched = BatchedModels(detector if detector is not None else default_detector(settings),
                            embedder_factory or create_embedder, options, batch_size=settings.batch_size)
    return Gallery(settings, detector=batched.detector, embedder_factory=batched.embedder_factory), batched


def warm_up(gallery: Gallery) -> list[str]:
    """Load the detector and the embedders a request will need (those holding vectors; in an empty gallery every
    one whose weights are available) with one tiny forward pass each. Returns the embedders loaded; one that
    cannot load is logged and left for a request to report."""
    from gallery.manage.models import resolve_models

    img = Image.new("RGB", (64, 64), (128, 128, 128))
    gallery.detector.detect(img)
    loaded = []
    try:
        models = gallery.models_in_store() or resolve_models(gallery, None)[0]
    except USER_ERRORS as exc:
        log.warning("no embedder loaded at start: %s", exc)
        return loaded
    for m in models:
        try:
            emb = gallery.embedder(m)
            emb.embed_crops([emb.crop(img, whole_image_face(img))])
            loaded.append(m)
        except USER_ERRORS as exc:
            log.warning("embedder %s not loaded at start: %s", m, exc)
    return loaded
