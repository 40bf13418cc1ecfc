"""The FAISS caches of one gallery and what the store knows about their freshness.

The database is the truth. Each index mirrors one embedder's ``embeddings`` rows at a :class:`Stamp` (the
embedder's generation counter, vector count and weights hash). An index file whose stamp differs from the
database, or that cannot be read, is rebuilt from the rows, never trusted. In memory the cache keeps one
:class:`CachedIndex` per embedder: the index, the stamp it mirrors, and whether its file is behind it.

Writers change the rows in a transaction (:meth:`gallery.store.Gallery.writing`), then call :meth:`apply` with
what they added and removed, which brings the cached index up to date without re-reading every vector, and
:meth:`flush` to save changed files. A crash between the commit and the save leaves a file with an old stamp,
which is rebuilt on next use.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from db import queries as q
from gallery.vectors import stored_vectors
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stamp:
    """The database state an index mirrors; stored in the index file's header."""

    embedder: str
    generation: int
    count: int
    weights_sha256: str | None

    @classmethod
    def read(cls, s, model: str) -> Stamp:
        return cls(model, q.generation(s, model), q.count_embeddings(s, model), q.stored_weights(s, model))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CachedIndex:
    """An index in memory, the stamp it mirrors, and whether its file lags behind (saved by ``flush``)."""

    index: VectorIndex
    stamp: Stamp
    dirty: bool = False


@dataclass
class VectorChanges:
    """What one committed write did to one embedder's vectors."""

    added_ids: list[np.ndarray]
    added_vectors: list[np.ndarray]
    removed: list[np.ndarray]
    stale: bool = False  # changed in a way a delta cannot express: rebuild from the database on next use

    @classmethod
    def empty(cls) -> VectorChanges:
        return cls([], [], [])

    def added(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.added_ids:
            return None
        return np.concatenate(self.added_ids), np.concatenate(self.added_vectors)

    def removed_ids(self) -> np.ndarray:
        return np.concatenate(self.removed) if self.removed else np.zeros(0, np.int64)


def index_kind_key(model: str) -> str:
    """The settings row that remembers the index kind ``reindex --index`` chose for ``model``."""
    return f"index_kind.{model}"


class IndexCache:
    """One gallery's FAISS caches. ``session`` opens a database session; ``try_lock`` runs a callable under the
    writer lock when it is free (returning False otherwise), so a reader that rebuilds an index never blocks."""

    def __init__(self, folder: Path, session: Callable, try_locked: Callable[[Callable[[], None]], bool]):
        self.folder = folder
        self._session = session
        self._try_locked = try_locked
        self._cached: dict[str, CachedIndex] = {}
        self._mutex = threading.RLock()

    def path(self, model: str) -> Path:
        return self.folder / f"{model}.faiss"

    def stamp(self, model: str) -> Stamp:
        with self._session() as s:
            return Stamp.read(s, model)

    def get(self, model: str) -> VectorIndex | None:
        """The up-to-date index for ``model`` (None when the gallery holds no vectors for it).

        Loads the cached file when its stamp matches the database; otherwise rebuilds it from the database and
        saves the new file when no writer holds the lock.
        """
        with self._mutex:
            stamp = self.stamp(model)
            cached = self._cached.get(model)
            if cached is not None and cached.stamp == stamp:
                return cached.index
            if stamp.count == 0:
                self._cached.pop(model, None)
                return None
            index = VectorIndex.load(self.path(model), expected_stamp=stamp.to_dict())
            if index is None:
                index = self.rebuild(model, stamp)
                self._try_locked(lambda: self.save(model, index, stamp))
            self._cached[model] = CachedIndex(index, stamp)
            return index

    def rebuild(self, model: str, stamp: Stamp, kind: str | None = None) -> VectorIndex:
        """A new index of every stored vector of ``model`` (``kind``: flat or ivf; default by size)."""
        log.info("building the %s index from the database (%d vectors)", model, stamp.count)
        with self._session() as s:
            ids, vectors, bad = stored_vectors(s, model)
            kind = kind or q.get_setting(s, index_kind_key(model))  # what `reindex --index` chose, if anything
        if bad:  # a damaged row never stops the gallery (nor forget); check names it, check --repair deletes it
            log.warning("%d stored %s vector(s) are unusable and left out of the index (e.g. embedding %d %s); "
                        "run facegallery check --repair", len(bad), model, bad[0][0], bad[0][1])
        return VectorIndex.build(ids, vectors, kind=kind)

    def reindex(self, model: str, kind: str | None = None) -> VectorIndex | None:
        """Rebuild ``model``'s index from the database and save it (call while holding the writer lock)."""
        with self._mutex:
            self.drop(model)
            self.path(model).unlink(missing_ok=True)
            stamp = self.stamp(model)
            if stamp.count == 0:
                return None
            index = self.rebuild(model, stamp, kind)
            self._cached[model] = CachedIndex(index, stamp)
            self.save(model, index, stamp)
            return index

    def apply(self, model: str, before: VectorIndex | None, changes: VectorChanges) -> None:
        """Bring ``before`` (the index as it was before a committed write) up to date with ``changes``.

        Call while holding the writer lock, right after the commit; :meth:`flush` saves the file.
        """
        with self._mutex:
            stamp = self.stamp(model)
            if stamp.count == 0:
                self._cached.pop(model, None)
                self.path(model).unlink(missing_ok=True)
                return
            added = changes.added()
            if changes.stale or (before is None and added is None):
                self._cached.pop(model, None)  # rebuilt from the database on next use
                return
            if before is None:
                before = VectorIndex.build(*added)
            else:
                removed = changes.removed_ids()
                if len(removed):
                    before.remove(removed)
                if added is not None:
                    before.add(*added)
            self._cached[model] = CachedIndex(before, stamp, dirty=True)

    def flush(self) -> None:
        """Save every index whose file lags behind (call while holding the writer lock)."""
        with self._mutex:
            for model, cached in self._cached.items():
                if cached.dirty:
                    self.save(model, cached.index, cached.stamp)
                    cached.dirty = False

    def save(self, model: str, index: VectorIndex, stamp: Stamp) -> None:
        """Write ``model``'s index file (call while holding the writer lock)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            index.save(self.path(model), stamp.to_dict())
        except OSError as exc:  # a cache that cannot be written is rebuilt next time, never fatal
            log.warning("could not save the %s index: %s", model, exc)

    def drop(self, model: str) -> None:
        """Forget the in-memory copy so the next :meth:`get` reloads or rebuilds it."""
        with self._mutex:
            self._cached.pop(model, None)

    def close(self) -> None:
        """Nothing to release: the files are closed after each read and write."""


def open_index_cache(settings, session: Callable, try_locked: Callable[[Callable[[], None]], bool]):
    """The gallery's vector caches: FAISS files in ``settings.index_dir``, or Milvus collections when
    ``settings.vectors`` names a Milvus store (:mod:`gallery.milvus_cache`)."""
    if settings.milvus_uri is not None:
        from gallery.milvus_cache import MilvusCache

        return MilvusCache(settings.milvus_uri, session, try_locked)
    if (settings.vectors or "faiss") != "faiss":
        from gallery.errors import InvalidInputError

        raise InvalidInputError(f"--vectors {settings.vectors!r}: use faiss, milvus://HOST:PORT or a Milvus Lite "
                                f"path ending in .db")
    return IndexCache(settings.index_dir, session, try_locked)
