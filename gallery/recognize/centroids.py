"""Per-person centroids: identify's default way of scoring a face against a person (issue 13).

A person's template is the normalised mean of the vectors of their enrolled photos' own crops (``aug_index`` 0).
Augmented copies are left out: on the LFW open-set protocol they did not help the centroid (-0.4 points of TPIR at
FPIR 1 % with 1000 people, neutral below; benchmarks/open_set.py). The stored vectors stay what enroll wrote
(one descriptor per crop), so every existing gallery works unchanged: centroids are derived at query time.

Centroids live in memory, in a flat or IVF :class:`indexer.vector_index.VectorIndex` keyed by person id, rebuilt from
the database whenever the embedder's :class:`gallery.indexes.Stamp` (generation, count, weights) changes.
"""
from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from db import queries as q
from gallery.indexes import Stamp
from gallery.recognize.scoring import centroids
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Gallery -> {model: Centroids}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Centroids:
    stamp: Stamp
    index: VectorIndex  # ids: person ids
    names: dict[int, str]
    photos: int  # original crops behind the centroids

    @property
    def people(self) -> int:
        return len(self.names)


def gallery_centroids(gallery, model: str) -> Centroids | None:
    """The centroids of ``model``'s people, up to date with the database (None when it holds no vectors)."""
    with gallery.session() as s:
        stamp = Stamp.read(s, model)
        with _LOCK:
            cached = _CACHE.get(gallery, {}).get(model)
        if cached is not None and cached.stamp == stamp:
            return cached
        owners, vectors = q.original_vectors(s, model)
        if len(owners):  # a damaged row (non-finite or zero) is left out rather than breaking every search
            good = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).sum(axis=1) > 0)
            owners, vectors = owners[good], vectors[good]
        names = q.person_names(s, np.unique(owners).tolist()) if len(owners) else {}
    if not len(owners):
        return None
    people, cents = centroids(vectors, owners)
    built = Centroids(stamp, VectorIndex.build(people.astype(np.int64), cents), names, len(owners))
    log.debug("%s centroids: %d people from %d photos", model, built.people, built.photos)
    with _LOCK:
        _CACHE.setdefault(gallery, {})[model] = built
    return built


def centroid_scores(cents: Centroids, vec: np.ndarray, top_k: int) -> dict[str, float]:
    """The best ``top_k + 1`` people for one query vector: cosine to each person's centroid."""
    k = min(top_k + 1, len(cents.index))
    sims, ids = cents.index.search(np.asarray(vec, np.float32)[None, :], k)
    return {cents.names[int(i)]: float(v) for i, v in zip(ids[0], sims[0]) if i >= 0 and int(i) in cents.names}
