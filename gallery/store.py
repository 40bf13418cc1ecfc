"""The open gallery: database engine, write lock, FAISS caches, and lazily created detector/embedders.

The database is the truth. Each FAISS file is stamped with the embedder's generation counter, vector count and
weights hash at save time; on load a stamp that differs from the database (or an unreadable file) means the file
is rebuilt from the ``embeddings`` table, never trusted.

Writers (enroll, forget, reindex, train) hold an inter-process file lock on ``<home>/gallery.lock``; a second
writer waits up to ``Settings.lock_timeout_s`` and then fails with :class:`GalleryBusyError`. Readers take no lock:
SQLite in WAL mode gives them a consistent snapshot while a writer commits.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from sqlalchemy.orm import Session

from db import queries as q
from db.session import init_schema, make_engine
from gallery.config import Settings
from gallery.errors import GalleryBusyError, GalleryError
from indexer.detect import Detector, DetectorConfig
from indexer.embedders import create_embedder
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)

EmbedderFactory = Callable[..., object]


class Gallery:
    """One gallery (a home folder plus a database). Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        detector: Detector | None = None,
        embedder_factory: EmbedderFactory | None = None,
    ):
        self.settings = settings or Settings()
        try:
            self.settings.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GalleryError(f"cannot create gallery folder {self.settings.home}: {exc.strerror}") from exc
        self.engine = make_engine(self.settings.db_url)
        init_schema(self.engine)
        self._detector = detector
        self._embedder_factory = embedder_factory or create_embedder
        self._embedders: dict[str, object] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._mutex = threading.RLock()
        self._lock = FileLock(str(self.settings.lock_path))

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the inter-process writer lock (re-entrant within this process)."""
        wait = self.settings.lock_timeout_s
        try:
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                log.warning("the gallery %s is busy (another facegallery process is writing): waiting up to %g s",
                            self.settings.home, wait)
                self._lock.acquire(timeout=wait)
        except Timeout as exc:
            raise GalleryBusyError(
                f"gallery is busy: another facegallery process is writing to {self.settings.home} "
                f"(waited {wait:g} s for {self.settings.lock_path}; --lock-timeout to wait longer)"
            ) from exc
        try:
            yield
        finally:
            self._lock.release()

    # -- components ------------------------------------------------------------------------------------------
    @property
    def detector(self) -> Detector:
        with self._mutex:
            if self._detector is None:
                s = self.settings
                device = "cpu" if s.device == "auto" else s.device
                if s.device == "auto":
                    import torch

                    device = "cuda" if torch.cuda.is_available() else "cpu"
                low = min(s.min_face_prob, s.enroll_min_prob)
                self._detector = Detector(DetectorConfig(min_face_size=s.min_face_size, min_prob=low, device=device))
            return self._detector

    def confident(self, faces):
        """The faces a query reports: those at or above ``Settings.min_face_prob``."""
        return [f for f in faces if f.prob >= self.settings.min_face_prob]

    def embedder(self, model: str):
        """The embedder ``model`` with this gallery's device and weights (raises WeightsNotFoundError offline)."""
        with self._mutex:
            if model not in self._embedders:
                s = self.settings
                self._embedders[model] = self._embedder_factory(
                    model,
                    device=s.device,
                    weights=s.weights.get(model),
                    weights_dir=s.weights_dir,
                    fast=s.fast,
                )
            return self._embedders[model]

    # -- FAISS caches ----------------------------------------------------------------------------------------
    def index_path(self, model: str) -> Path:
        return self.settings.index_dir / f"{model}.faiss"

    def _stamp(self, s: Session, model: str) -> dict:
        return {
            "embedder": model,
            "generation": q.generation(s, model),
            "count": q.count_embeddings(s, model),
            "weights_sha256": q.stored_weights(s, model),
        }

    def index(self, model: str, *, kind: str | None = None) -> VectorIndex | None:
        """The up-to-date index for ``model`` (None when the gallery holds no vectors for it).

        Loads the cached file when its stamp matches the database; otherwise rebuilds from the database and
        saves the new file (only when no other writer holds the lock, so a reader never blocks).
        """
        with self._mutex, self.session() as s:
            stamp = self._stamp(s, model)
            cached = self._indexes.get(model)
            if cached is not None and getattr(cached, "stamp", None) == stamp and kind is None:
                return cached
            if stamp["count"] == 0:
                self._indexes.pop(model, None)
                return None
            index = None if kind else VectorIndex.load(self.index_path(model), expected_stamp=stamp)
            if index is None:
                index = self._rebuild(s, model, stamp, kind)
            index.stamp = stamp
            self._indexes[model] = index
            return index

    def _rebuild(self, s: Session, model: str, stamp: dict, kind: str | None) -> VectorIndex:
        log.info("rebuilding the %s index from the database (%d vectors)", model, stamp["count"])
        chunks = list(q.iter_vectors(s, model))
        ids = np.concatenate([c[0] for c in chunks])
        vecs = np.concatenate([c[1] for c in chunks])
        index = VectorIndex.build(ids, vecs, kind=kind)
        self._try_save(index, model, stamp)
        return index

    def _try_save(self, index: VectorIndex, model: str, stamp: dict) -> None:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            log.debug("not saving the %s index: a writer holds the lock", model)
            return
        try:
            self.save_index(index, model, stamp)
        finally:
            self._lock.release()

    def save_index(self, index: VectorIndex, model: str, stamp: dict) -> None:
        """Save ``model``'s index file (call while holding the write lock)."""
        self.settings.index_dir.mkdir(parents=True, exist_ok=True)
        self.sweep_temp_files()
        try:
            index.save(self.index_path(model), stamp)
        except OSError as exc:  # a cache that cannot be written is rebuilt next time, never fatal
            log.warning("could not save the %s index: %s", model, exc)

    def sweep_temp_files(self) -> list[Path]:
        """Delete temporary files that a killed writer left in the index and heads folders.

        Call while holding the write lock: no live writer owns one then. They are deleted, never trusted: an
        interrupted save may hold vectors or names of people forgotten since.
        """
        removed = []
        for folder in (self.settings.index_dir, self.settings.heads_dir):
            for path in folder.iterdir() if folder.is_dir() else ():
                if ".tmp" in path.name and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted writer", len(removed))
        return removed

    def apply_changes(
        self, model: str, before: VectorIndex | None, added: tuple[np.ndarray, np.ndarray] | None = None,
        removed: np.ndarray | None = None,
    ) -> None:
        """Bring ``before`` (the index as it was before a committed write) up to date in memory.

        Call while holding the write lock, right after the commit. The file is saved by :meth:`flush_indexes`;
        a crash before that leaves a stale stamp, so the file is rebuilt next time.
        """
        with self._mutex, self.session() as s:
            stamp = self._stamp(s, model)
            if stamp["count"] == 0:
                self._indexes.pop(model, None)
                self.index_path(model).unlink(missing_ok=True)
                return
            if before is None:
                if added is None:
                    self._indexes.pop(model, None)
                    return
                before = VectorIndex.build(added[0], added[1])
            else:
                if removed is not None and len(removed):
                    before.remove(removed)
                if added is not None and len(added[0]):
                    before.add(added[0], added[1])
            before.stamp = stamp
            before.dirty = True
            self._indexes[model] = before

    def flush_indexes(self) -> None:
        """Save every index changed in memory (call while holding the write lock)."""
        with self._mutex:
            for model, index in self._indexes.items():
                if getattr(index, "dirty", False):
                    self.save_index(index, model, index.stamp)
                    index.dirty = False

    def refresh_index(self, model: str) -> None:
        """Drop the in-memory copy so the next :meth:`index` call reloads or rebuilds it."""
        with self._mutex:
            self._indexes.pop(model, None)

    def models_in_store(self) -> list[str]:
        with self.session() as s:
            return q.embedders_in_store(s)
