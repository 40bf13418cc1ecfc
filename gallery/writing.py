"""One unit of work for every write to a gallery: what a transaction changed, for the store to apply.

:meth:`gallery.store.Gallery.writing` takes the writer lock, opens one transaction and hands out a
:class:`Write`. The writer changes rows through ``write.session`` (with :mod:`db.queries`) and tells the write
which vectors it added or removed. When the block ends without an error the store bumps each touched embedder's
generation in the same transaction, commits, and only then brings the in-memory indexes up to date; their files
are saved when the outermost writer lock is released. An error rolls everything back and touches no index.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gallery.indexes import VectorChanges


class Write:
    """What one transaction does to the vectors. ``session`` is the transaction's database session."""

    def __init__(self, session) -> None:
        self.session = session
        self.changes: dict[str, VectorChanges] = {}
        self.weights: dict[str, str] = {}  # embedder -> weights sha256 its vectors now hold
        self.reindex: dict[str, str | None] = {}  # embedder -> index kind to rebuild with, after the commit

    def _of(self, model: str) -> VectorChanges:
        return self.changes.setdefault(model, VectorChanges.empty())

    def added(self, model: str, ids: Sequence[int] | np.ndarray, vectors: np.ndarray,
              weights_sha256: str | None = None) -> None:
        """Rows of ``model`` with these ids and vectors were inserted."""
        if not len(ids):
            return
        changes = self._of(model)
        changes.added_ids.append(np.asarray(ids, np.int64))
        changes.added_vectors.append(np.asarray(vectors, np.float32))
        if weights_sha256 is not None:
            self.weights[model] = weights_sha256

    def removed(self, removed: Mapping[str, Sequence[int]]) -> None:
        """Embedding rows were deleted: embedder -> their ids (what :func:`db.queries.delete_photo` returns)."""
        for model, ids in removed.items():
            if len(ids):
                self._of(model).removed.append(np.asarray(ids, np.int64))

    def replaced(self, model: str, weights_sha256: str | None = None) -> None:
        """Many of ``model``'s vectors changed in place: its index is rebuilt from the database."""
        self._of(model).stale = True
        if weights_sha256 is not None:
            self.weights[model] = weights_sha256

    def rebuild_index(self, model: str, kind: str | None = None) -> None:
        """Rebuild ``model``'s index from the database after the commit (``kind``: flat, ivf, or by size)."""
        self.reindex[model] = kind
