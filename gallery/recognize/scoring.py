"""How a query's similarity to a person is computed: pure numpy, shared by identify and the open-set benchmark.

- **Flip averaging**: a face's descriptor is the normalised mean of the descriptors of its chip and of the mirrored
  chip (:func:`flip_average`).
- **Aggregation per person**: ``max`` (best single stored vector), ``mean3`` (mean of the three best) or
  ``centroid`` (cosine to the normalised mean of the person's vectors, :func:`centroids`).
- **Adaptive S-norm** (:func:`s_norm`): a score relative to the top of the query's and the person's score
  distributions against a fixed cohort of people who are not enrolled.

All cosine similarities of unit vectors, float32 in, float64 out.
"""
from __future__ import annotations

import numpy as np

AGGREGATES = ("centroid", "max", "mean3")
MEAN_TOP = {"mean3": 3}


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def flip_average(vectors: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """The flip test-time augmentation: normalised mean of a chip's and its mirror image's descriptors."""
    return l2n(np.asarray(vectors, np.float32) + np.asarray(mirrored, np.float32))


def group(owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, distinct owners, start of each owner's run in ``order``) for vectors labelled by ``owners``."""
    owners = np.asarray(owners)
    order = np.argsort(owners, kind="stable")
    people, starts = np.unique(owners[order], return_index=True)
    return order, people, starts


def centroids(vectors: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct owners, their centroids): the normalised mean of each owner's vectors."""
    order, people, starts = group(owners)
    sums = np.add.reduceat(np.asarray(vectors, np.float64)[order], starts, axis=0)
    return people, l2n(sums.astype(np.float32))


def person_scores(queries: np.ndarray, vectors: np.ndarray, owners: np.ndarray, aggregate: str,
                  chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(people, scores (n_queries, n_people)) of every query against every owner of ``vectors``."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
    queries = np.asarray(queries, np.float32)
    if aggregate == "centroid":
        people, cents = centroids(vectors, owners)
        return people, (queries @ cents.T).astype(np.float64)
    order, people, starts = group(owners)
    vecs = np.asarray(vectors, np.float32)[order]
    out = np.empty((len(queries), len(people)))
    for lo in range(0, len(queries), chunk):
        sims = queries[lo:lo + chunk] @ vecs.T
        out[lo:lo + chunk] = _reduce(sims, starts, aggregate)
    return people, out


def _reduce(sims: np.ndarray, starts: np.ndarray, aggregate: str) -> np.ndarray:
    if aggregate == "max":
        return np.maximum.reduceat(sims, starts, axis=1)
    k = MEAN_TOP[aggregate]
    ends = np.r_[starts[1:], sims.shape[1]]
    out = np.empty((len(sims), len(starts)))
    for j, (a, b) in enumerate(zip(starts, ends)):
        part = sims[:, a:b]
        top = part if b - a <= k else -np.partition(-part, k - 1, axis=1)[:, :k]
        out[:, j] = top.mean(axis=1)
    return out


def cohort_stats(vectors: np.ndarray, cohort: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each vector's ``top`` highest cosines to the cohort (adaptive S-norm)."""
    sims = np.asarray(vectors, np.float32) @ np.asarray(cohort, np.float32).T
    top = min(top, sims.shape[1])
    best = -np.partition(-sims, top - 1, axis=1)[:, :top].astype(np.float64)
    return best.mean(axis=1), np.maximum(best.std(axis=1), 1e-6)


def s_norm(scores: np.ndarray, query_stats: tuple[np.ndarray, np.ndarray],
           template_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Adaptive symmetric normalisation of ``scores`` (n_queries, n_people):
    ``((s - mu_q) / sd_q + (s - mu_p) / sd_p) / 2``."""
    mq, sq = query_stats
    mp, sp = template_stats
    return 0.5 * ((scores - mq[:, None]) / sq[:, None] + (scores - mp[None, :]) / sp[None, :])
