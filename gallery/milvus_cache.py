"""Milvus collections as the gallery's vector caches: the same calls as :class:`gallery.indexes.IndexCache`.

``Settings.vectors`` (``--vectors``, env ``FACEGALLERY_VECTORS``) chooses them: ``milvus://host:19530`` for a Milvus
server or cluster that every node shares, or a local Milvus Lite folder (``path/vectors.db``). The database stays
the truth. One collection per embedder (``facegallery_<embedder>``) mirrors its ``embeddings`` rows at a
:class:`~gallery.indexes.Stamp`, kept in the ``facegallery_meta`` collection; a collection whose stamp differs
from the database is rebuilt from the rows, exactly as a stale FAISS file is.

* Writers (holding the writer lock, right after their commit) apply their delta to the collection and then write
  its new stamp, so a reader that finds the stamps equal searches the shared collection directly.
* A reader that finds them different rebuilds the collection when the writer lock is free; when a writer holds it
  (its commit landed, its delta is on the way) the reader answers from a FAISS copy built in memory from the
  database, so an answer never comes from a collection that does not match the database.
* ``flush`` (the end of every write) rebuilds the collections that lost vectors, so forgotten vectors leave
  Milvus' files instead of being only marked deleted (see :meth:`MilvusCache.flush`).
* Milvus Lite serves one process at a time (it locks its folder): use it for one ``serve`` worker, the CLI and
  tests; several workers or machines need a Milvus server.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gallery.errors import GalleryError
from gallery.indexes import CachedIndex, Stamp, VectorChanges
from gallery.vectors import iter_usable, stored_vectors
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)

PREFIX = "facegallery"


class MilvusCache:
    """One gallery's Milvus collections (``uri``: see the module docstring)."""

    def __init__(self, uri: str, session: Callable, try_locked: Callable[[Callable[[], None]], bool],
                 prefix: str = PREFIX):
        self.uri, self.prefix = uri, prefix
        self._session = session
        self._try_locked = try_locked
        self._client = None
        self._stamps = None
        self._cached: dict[str, CachedIndex] = {}
        self._to_compact: set[str] = set()
        self._mutex = threading.RLock()

    # -- connection -------------------------------------------------------------------------------------------
    def client(self):
        """The Milvus client, connected on first use (commands that never touch vectors never connect)."""
        with self._mutex:
            if self._client is None:
                from indexer.milvus_index import MilvusStamps, connect

                try:
                    self._client = connect(self.uri)
                except ImportError as exc:
                    raise GalleryError("--vectors milvus needs pymilvus: pip install 'facegallery[milvus]'") from exc
                except Exception as exc:  # Milvus reports connection and lock failures in many classes
                    raise GalleryError(f"cannot open the Milvus vector store {self.uri}: {_reason(exc)} (Milvus "
                                       f"Lite serves one process at a time; several need a Milvus server)") from exc
                self._stamps = MilvusStamps(self._client, self.prefix)
            return self._client

    def stamps(self):
        """The stamps of the collections (connects first)."""
        self.client()
        return self._stamps

    def close(self) -> None:
        with self._mutex:
            if self._client is not None:
                self._client.close()
                self._client = None

    def collection(self, model: str) -> str:
        return f"{self.prefix}_{model}"

    def path(self, model: str) -> str:
        """Where ``model``'s vectors live, for reports (``facegallery reindex``)."""
        return f"{self.uri}#{self.collection(model)}"

    # -- the IndexCache calls ---------------------------------------------------------------------------------
    def stamp(self, model: str) -> Stamp:
        with self._session() as s:
            return Stamp.read(s, model)

    def get(self, model: str):
        """The index to search for ``model``: the collection when it mirrors the database, else see above."""
        with self._mutex:
            stamp = self.stamp(model)
            cached = self._cached.get(model)
            if cached is not None and cached.stamp == stamp:
                return cached.index
            if stamp.count == 0:
                self._cached.pop(model, None)
                return None
            index = self._open_fresh(model, stamp)
            if index is None:
                built: list = []
                if not self._try_locked(lambda: built.append(self.rebuild(model, stamp))):
                    log.info("%s: a writer is updating the Milvus collection; answering from the database", model)
                    return self._memory_copy(model)
                index = built[0]
            self._cached[model] = CachedIndex(index, stamp)
            return index

    def rebuild(self, model: str, stamp: Stamp, kind: str | None = None):
        """Rebuild ``model``'s collection from the database and stamp it (call holding the writer lock)."""
        from indexer.milvus_index import MilvusIndex

        log.info("building the %s Milvus collection from the database (%d vectors)", model, stamp.count)
        client = self.client()
        self.stamps().write(self.collection(model), None)  # a half-built collection is never taken as fresh
        index = None
        with self._session() as s:
            for ids, vectors in iter_usable(s, model):  # unusable rows left out, as in a FAISS rebuild
                if index is None:
                    index = MilvusIndex.create(client, self.collection(model), int(vectors.shape[1]))
                index.add(ids, vectors)
        self.stamps().write(self.collection(model), stamp.to_dict())
        return index

    def reindex(self, model: str, kind: str | None = None):
        with self._mutex:
            self._cached.pop(model, None)
            stamp = self.stamp(model)
            if stamp.count == 0:
                self._drop(model)
                return None
            index = self.rebuild(model, stamp)
            self._cached[model] = CachedIndex(index, stamp)
            return index

    def apply(self, model: str, before, changes: VectorChanges) -> None:
        """Apply a committed write's delta to the collection and stamp it (call holding the writer lock)."""
        from indexer.milvus_index import MilvusIndex

        with self._mutex:
            stamp = self.stamp(model)
            self._cached.pop(model, None)
            if stamp.count == 0:
                self._drop(model)
                return
            added = changes.added()
            if changes.stale or not isinstance(before, MilvusIndex):
                if before is None and added is not None and not self.client().has_collection(self.collection(model)):
                    before = MilvusIndex.create(self.client(), self.collection(model), int(added[1].shape[1]))
                else:
                    self.stamps().write(self.collection(model), None)  # rebuilt from the database on next use
                    return
            self.stamps().write(self.collection(model), None)
            removed = changes.removed_ids()
            if len(removed):
                before.remove(removed)
                self._to_compact.add(model)
            if added is not None:
                before.add(*added)
            self.stamps().write(self.collection(model), stamp.to_dict())
            self._cached[model] = CachedIndex(before, stamp)

    def flush(self) -> None:
        """Rewrite the collections that lost vectors from the database (call holding the writer lock).

        A Milvus delete only marks rows; measured on Milvus Lite 3.2, even ``compact()`` leaves the deleted
        vectors' bytes in the collection's data and index files, while dropping the collection deletes them. So
        a write that removed vectors (forget, a replaced photo) ends with a rebuild, once per write lock.
        """
        with self._mutex:
            for model in sorted(self._to_compact):
                self.reindex(model)
            self._to_compact.clear()

    def drop(self, model: str) -> None:
        with self._mutex:
            self._cached.pop(model, None)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _open_fresh(self, model: str, stamp: Stamp):
        from indexer.milvus_index import MilvusIndex

        client = self.client()
        if self.stamps().read(self.collection(model)) != _plain(stamp.to_dict()):
            return None
        return MilvusIndex.open(client, self.collection(model))

    def _memory_copy(self, model: str) -> VectorIndex:
        with self._session() as s:
            ids, vectors, _ = stored_vectors(s, model)
        return VectorIndex.build(ids, vectors, kind="flat")

    def _drop(self, model: str) -> None:
        from indexer.milvus_index import MilvusIndex

        client = self.client()
        MilvusIndex(client, self.collection(model), 1).drop()
        self.stamps().write(self.collection(model), None)


def _plain(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d, sort_keys=True))


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(cause or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
