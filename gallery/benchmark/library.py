"""Helpers of the photo-library benchmark (``python -m benchmarks.library``, issue 15): a synthetic library at
scale, and the time split of ``clusters``.

Real library faces are slow to make (detect + embed every photo), so a 100K-face library is mostly synthetic:
unit vectors drawn from a Gaussian model fitted to real dlib descriptors (:func:`fit_face_model`), one identity
centre per synthetic person plus within-person noise, with the between/within split measured on real people.
They go into the store through the one write path (:func:`insert_library_faces`), so the library index, stamps
and rows are exactly what ``scan`` would have left; only the photos (``root``) do not exist on disk.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from db import queries as q
from gallery.store import Gallery

log = logging.getLogger(__name__)

SYNTHETIC_ROOT = "/synthetic-library"


@dataclass(frozen=True)
class FaceModel:
    """Gaussian model of unit face vectors: identity centre ~ N(mean, between), face ~ centre + N(0, within)."""

    mean: np.ndarray
    between: np.ndarray  # Cholesky factor of the between-person covariance
    within: np.ndarray  # Cholesky factor of the within-person covariance
    within_share: float  # trace(within) / trace(total), measured on the real people


def fit_face_model(vectors: np.ndarray, owners: np.ndarray, ridge: float = 1e-6) -> FaceModel:
    """Fit the model to real vectors ``(n, d)`` of people ``owners`` (some with 2+ vectors): the within-person
    covariance from deviations to each person's mean, the between-person one as total minus within."""
    vectors = np.asarray(vectors, np.float64)
    total = np.cov(vectors, rowvar=False)
    dev = []
    for person in np.unique(owners):
        rows = vectors[owners == person]
        if len(rows) >= 2:  # unbiased: scale deviations by sqrt(m / (m - 1))
            dev.append((rows - rows.mean(axis=0)) * np.sqrt(len(rows) / (len(rows) - 1)))
    if not dev:
        raise ValueError("fit_face_model needs at least one person with 2 or more vectors")
    dev = np.concatenate(dev)
    within = dev.T @ dev / len(dev)
    between = _psd(total - within)
    eye = np.eye(len(total)) * ridge * np.trace(total) / len(total)
    return FaceModel(vectors.mean(axis=0), np.linalg.cholesky(between + eye), np.linalg.cholesky(within + eye),
                     float(np.trace(within) / np.trace(total)))


def synthetic_faces(model: FaceModel, n: int, *, per_identity: int = 10, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 unit vectors and their synthetic identity (``per_identity`` faces each)."""
    rng = np.random.default_rng(seed)
    d = len(model.mean)
    identity = np.arange(n) // per_identity
    centres = model.mean + rng.standard_normal((identity[-1] + 1, d)) @ model.between.T
    vecs = centres[identity] + rng.standard_normal((n, d)) @ model.within.T
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32), identity


def cosine_stats(vectors: np.ndarray, owners: np.ndarray, pairs: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Mean cosine of random same-owner and different-owner pairs (to compare synthetic with real)."""
    rng = np.random.default_rng(seed)
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    a, b = rng.integers(0, len(v), pairs), rng.integers(0, len(v), pairs)
    diff = owners[a] != owners[b]
    same_a, same_b = [], []
    for person in np.unique(owners)[: pairs // 4]:
        rows = np.flatnonzero(owners == person)
        if len(rows) >= 2:
            same_a.append(rows[0])
            same_b.append(rows[1])
    cos = np.einsum("ij,ij->i", v[a[diff]], v[b[diff]])
    same = np.einsum("ij,ij->i", v[same_a], v[same_b]) if same_a else np.zeros(0)
    return {"same": float(same.mean()) if len(same) else float("nan"), "different": float(cos.mean()),
            "different_p99": float(np.percentile(cos, 99))}


def insert_library_faces(gallery: Gallery, model: str, vectors: np.ndarray, *, root: str = SYNTHETIC_ROOT,
                         chunk: int = 10_000) -> int:
    """Store ``vectors`` as library faces of ``model`` (one 250x250 photo ``root/NNNNNNN.jpg`` per face), through
    the write path, one transaction per ``chunk``. Returns the number of faces added."""
    key = q.library_key(model)
    sha = gallery.embedder(model).weights.sha256
    with gallery.session() as s:
        start = len(q.library_paths(s))
    for lo in range(0, len(vectors), chunk):
        part = np.asarray(vectors[lo : lo + chunk], np.float32)
        with gallery.writing([key]) as w:
            face_ids = []
            for i in range(len(part)):
                n = start + lo + i
                photo = q.add_library_photo(w.session, root=root, path=f"{root}/{n:07d}.jpg", sha256=f"{n:064x}",
                                            size_bytes=0, width=250, height=250, faces_detected=1)
                face_ids.append(q.add_library_face(w.session, photo, (70.0, 70.0, 180.0, 180.0), 0.99, None))
            ids = q.add_library_embeddings(w.session, model, sha, face_ids, part)
            w.added(key, ids, part, sha)
        log.info("synthetic library: %d / %d faces", lo + len(part), len(vectors))
    return len(vectors)


def _psd(matrix: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrix (negative eigenvalues set to 0)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.clip(vals, 0, None)) @ vecs.T


@contextmanager
def timed_calls(targets: dict[str, tuple[object, str]]):
    """Wrap ``getattr(obj, attr)`` of each target so the seconds spent in it add up in the yielded dict."""
    spent = dict.fromkeys(targets, 0.0)
    originals = {label: getattr(obj, attr) for label, (obj, attr) in targets.items()}

    def wrap(label, fn):
        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t0
        return inner

    for label, (obj, attr) in targets.items():
        setattr(obj, attr, wrap(label, originals[label]))
    try:
        yield spent
    finally:
        for label, (obj, attr) in targets.items():
            setattr(obj, attr, originals[label])


def clusters_split(gallery: Gallery, model: str = "dlib") -> dict[str, float]:
    """``update_clusters`` in-process, with the seconds spent loading vectors, clustering, and the rest (writing
    the ids, listing the clusters)."""
    from gallery.library import clustering
    from gallery.library import clusters as clusters_mod

    targets = {"load vectors": (q, "library_vectors"), "decode": (clusters_mod, "decode_rows"),
               "cluster": (clustering, "cluster"), "stable ids": (clustering, "stable_ids"),
               "list": (clusters_mod, "list_clusters"), "set ids": (q, "set_clusters")}
    t0 = time.perf_counter()
    with timed_calls(targets) as spent:
        report = clusters_mod.update_clusters(gallery, model=model)
    total = time.perf_counter() - t0
    out = {"total": total, **spent}
    out["write + rest"] = total - sum(spent.values())
    out["faces"] = report.unassigned
    out["clusters"] = len(report.clusters)
    out["clustered"] = report.clustered
    out["method"] = report.method
    return out
