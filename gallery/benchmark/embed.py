"""Timing the pipeline's stages and embedding benchmark images (largest face, or the whole image as a fallback).

The detector and embedders are wrapped, not re-implemented: the benchmark runs the same ``detect_batch``,
``crop`` and ``embed_crops`` as enroll and identify, and the wrappers only add up the time spent in each stage
(thread-safe: enrollment detects in a background thread).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.detect import whole_image_face
from indexer.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

CHUNK = 32
LOG_EVERY = 20  # chunks between progress log lines (tqdm is off when stderr is not a terminal)


class StageClock:
    """Seconds and item counts per (stage, model) key, e.g. ("detect", ""), ("embed", "dlib")."""

    def __init__(self):
        self.seconds: dict[tuple[str, str], float] = {}
        self.items: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def time(self, stage: str, model: str = "", items: int = 0):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, model, time.perf_counter() - start, items)

    def add(self, stage: str, model: str, seconds: float, items: int) -> None:
        with self._lock:
            key = (stage, model)
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds
            self.items[key] = self.items.get(key, 0) + items

    def to_rows(self) -> list[dict]:
        rows = []
        for (stage, model), sec in sorted(self.seconds.items()):
            n = self.items.get((stage, model), 0)
            rows.append({"stage": stage, "model": model or "-", "seconds": round(sec, 3), "items": n,
                         "ms_per_item": round(1000 * sec / n, 2) if n else None})
        return rows


class TimedDetector:
    """A detector whose ``detect`` / ``detect_batch`` time goes to the ``detect`` stage."""

    def __init__(self, inner, clock: StageClock):
        self.inner, self.clock = inner, clock

    def detect(self, img):
        with self.clock.time("detect", items=1):
            return self.inner.detect(img)

    def detect_batch(self, imgs):
        with self.clock.time("detect", items=len(imgs)):
            return self.inner.detect_batch(imgs)


class TimedEmbedder:
    """An embedder whose ``crop`` + ``embed_crops`` time goes to the ``embed`` stage of its model."""

    def __init__(self, inner, clock: StageClock):
        self.inner, self.clock = inner, clock

    def __getattr__(self, name):  # name, dim, input_size, weights, ...
        return getattr(self.inner, name)

    def crop(self, img, face):
        with self.clock.time("embed", self.inner.name):
            return self.inner.crop(img, face)

    def embed_crops(self, crops, batch_size: int = 32):
        with self.clock.time("embed", self.inner.name, items=len(crops)):
            return self.inner.embed_crops(crops, batch_size=batch_size)


def timed_factory(factory: Callable[..., object], clock: StageClock) -> Callable[..., object]:
    """An embedder factory that builds each model once (shared by every temporary gallery) and times it."""
    built: dict[str, TimedEmbedder] = {}
    lock = threading.Lock()

    def make(name: str, **kwargs):
        with lock:
            if name not in built:
                built[name] = TimedEmbedder(factory(name, **kwargs), clock)
            return built[name]

    return make


@dataclass(frozen=True)
class EmbeddedImages:
    """Per model one (N, dim) row per image, in the order given; how each image's face was found."""

    paths: list[str]
    vectors: dict[str, np.ndarray]
    faces_found: np.ndarray  # faces MTCNN found per image (0 -> the whole image was embedded)
    failed: dict[str, str] = field(default_factory=dict)  # unreadable image -> reason (its rows are NaN)

    @property
    def fallbacks(self) -> int:
        return int(np.sum(self.faces_found == 0)) - len(self.failed)


def embed_images(detector, embedders: dict, paths: Sequence[Path], *, batch_size: int = 32,
                 progress: bool = True, desc: str = "embed") -> EmbeddedImages:
    """Embed the largest face of each image with every embedder (whole-image fallback when none is found)."""
    n = len(paths)
    vecs = {m: np.full((n, e.dim), np.nan, np.float32) for m, e in embedders.items()}
    found = np.zeros(n, np.int64)
    failed: dict[str, str] = {}
    bar = tqdm(total=n, unit="img", desc=desc, disable=None if progress else True)
    try:
        for start in range(0, n, CHUNK):
            idx, imgs = [], []
            for i in range(start, min(n, start + CHUNK)):
                try:
                    imgs.append(load_image(paths[i], name=str(paths[i])))
                    idx.append(i)
                except ImageLoadError as exc:
                    failed[str(paths[i])] = exc.reason
            detections = detector.detect_batch(imgs) if imgs else []
            faces = [d[0] if d else whole_image_face(img) for d, img in zip(detections, imgs)]
            found[idx] = [len(d) for d in detections]
            for m, emb in embedders.items():
                if idx:
                    vecs[m][idx] = emb.embed_crops([emb.crop(img, f) for img, f in zip(imgs, faces)],
                                                   batch_size=batch_size)
            bar.update(min(n, start + CHUNK) - start)
            if (start // CHUNK) % LOG_EVERY == LOG_EVERY - 1:
                log.info("%s: %d / %d images", desc, min(n, start + CHUNK), n)
    finally:
        bar.close()
    return EmbeddedImages([str(p) for p in paths], vecs, found, failed)
