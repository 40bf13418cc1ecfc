"""What makes a stored or computed vector usable: the right length, finite values, a direction (non-zero norm).

Vectors are checked before they enter a transaction (enroll, reembed), so a NaN from bad weights is a skipped
photo, never a committed row. Rows already stored are decoded with :func:`decode_rows`, which sets the unusable
ones aside with a reason instead of failing: an index is built from the others, ``check`` names them and
``check --repair`` deletes them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from db import queries as q

MIN_NORM = 1e-12


def vector_problem(vectors: np.ndarray, dim: int) -> str | None:
    """Why the rows of ``vectors`` cannot be stored or searched, or None when every row can."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != dim:
        return f"has shape {tuple(x.shape)}, expected (n, {dim})"
    if not np.issubdtype(x.dtype, np.floating):
        return f"is not floating point ({x.dtype})"
    if not np.isfinite(x).all():
        return "holds NaN or infinity"
    if (np.linalg.norm(x.astype(np.float64), axis=1) <= MIN_NORM).any():
        return "is a zero vector (no direction for cosine similarity)"
    return None


def decode_rows(rows: Sequence[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Stored ``(id, raw float32 bytes)`` rows -> (ids, (n, dim) vectors) of the usable ones, and
    ``(id, reason)`` for each row that cannot be used."""
    bad: list[tuple[int, str]] = []
    good: list[tuple[int, bytes]] = []
    for row_id, raw in rows:
        raw = bytes(raw or b"")
        if len(raw) == 4 * dim:
            good.append((int(row_id), raw))
        else:
            bad.append((int(row_id), f"is {len(raw)} bytes long, expected {4 * dim} ({dim} float32 values)"))
    if not good:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), bad
    ids = np.fromiter((i for i, _ in good), np.int64, len(good))
    vecs = np.frombuffer(b"".join(r for _, r in good), dtype="<f4").reshape(len(good), dim).astype(np.float32)
    finite = np.isfinite(vecs).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vecs, 0).astype(np.float64), axis=1)
    usable = finite & (norms > MIN_NORM)
    for i in np.flatnonzero(~usable):
        bad.append((int(ids[i]), "holds NaN or infinity" if not finite[i] else
                    "is a zero vector (no direction for cosine similarity)"))
    bad.sort()
    return ids[usable], vecs[usable], bad


def unusable_rows(s, model: str) -> list[tuple[int, str]]:
    """``(id, reason)`` of every stored vector of ``model`` that cannot be used, read chunk by chunk."""
    dim = q.vector_dim(s, model)
    if dim is None:
        return []
    return [b for rows in q.iter_vector_rows(s, model) for b in decode_rows(rows, dim)[2]]


def iter_usable(s, model: str, bad: list[tuple[int, str]] | None = None):
    """Yield ``(ids, vectors)`` chunks of every usable stored vector of ``model`` in id order; the unusable rows
    are appended to ``bad`` as ``(id, reason)``. Memory stays at one chunk however large the gallery is.

    The expected dimension is the one most stored rows have (the embedder is not loaded for this)."""
    dim = q.vector_dim(s, model)
    if dim is None:
        return
    for rows in q.iter_vector_rows(s, model):
        ids, vecs, b = decode_rows(rows, dim)
        if bad is not None:
            bad += b
        if len(ids):
            yield ids, vecs


def stored_vectors(s, model: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Every usable stored vector of ``model`` (ids, vectors, in id order) and ``(id, reason)`` for the others."""
    bad: list[tuple[int, str]] = []
    chunks = list(iter_usable(s, model, bad))
    if not chunks:
        dim = q.vector_dim(s, model) or 0
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), bad
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]), bad
