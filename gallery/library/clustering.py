"""Face clustering over L2-normalised vectors (issue 15): pure algorithms, no database.

The default, ``knn-average``, is average-linkage agglomerative clustering on cosine similarity, restricted to the
edges of a FAISS k-nearest-neighbour graph, so its cost grows with n*k, never n^2:

- the average pairwise cosine between two clusters of unit vectors equals the dot product of their mean vectors
  (sum_ij a_i.b_j / |A||B| = mean(A).mean(B)), so the linkage of two clusters is exact from two means, whatever
  their size; the kNN graph only decides which clusters are compared (those joined by at least one edge);
- merging runs in rounds: each cluster finds its best neighbour, and mutual best pairs above the threshold merge
  at once (reciprocal agglomerative clustering; for a reducible linkage such as average this is the sequential
  result), until no edge clears the threshold;
- ``size_penalty`` raises the bar for merges of small clusters: the linkage of two singletons is one noisy pair,
  that of two 10-face clusters an average of 100 pairs, whose error shrinks like sqrt(1/|A| + 1/|B|). A merge
  needs the lower bound ``linkage - size_penalty * sqrt((1/|A| + 1/|B|) / 2) >= threshold`` (two singletons pay
  the full ``size_penalty``; the form was chosen over 1/sqrt(min) and 1/min on LFW DevTrain people).

Faces left in clusters smaller than ``min_size`` are labelled -1 (unclustered: a person seen once is noise here).

The other methods are the baselines the default was chosen against (``benchmarks/clustering.py``): chinese whispers
(on the same kNN graph, in numpy, or dlib's own all-pairs ``chinese_whispers_clustering`` when dlib is installed),
DBSCAN / HDBSCAN on cosine distance and scikit-learn's agglomerative clustering (these three build O(n^2) or
O(n log n) structures: baselines for a few tens of thousands of faces, not for a million).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("knn-average", "chinese-whispers", "chinese-whispers-dlib", "dbscan", "hdbscan", "agglomerative-average",
           "agglomerative-complete")
DEFAULT_METHOD = "knn-average"
EXACT_KNN_MAX = 20_000  # above this many vectors the kNN graph comes from an approximate (HNSW) index


@dataclass(frozen=True)
class ClusterParams:
    """Knobs of every method; each method reads the ones it needs. Thresholds are cosine similarities.

    ``threshold``: knn-average / agglomerative: the linkage a merge needs; chinese whispers: the similarity an
    edge needs; DBSCAN: ``eps = 1 - threshold`` (cosine distance). ``k``: neighbours per face in the kNN graph.
    ``min_size``: smaller clusters are labelled -1. ``size_penalty``: see the module docstring (knn-average).
    ``min_samples``: DBSCAN / HDBSCAN core-point neighbourhood. ``iterations``, ``seed``: chinese whispers.
    """

    threshold: float = 0.9375
    k: int = 10
    min_size: int = 2
    size_penalty: float = 0.01
    min_samples: int = 2
    iterations: int = 100
    seed: int = 0

    @classmethod
    def for_model(cls, model: str = "dlib", method: str = DEFAULT_METHOD) -> ClusterParams:
        """The defaults of ``method`` for the embedder ``model``: tuned ones for dlib, untuned guesses otherwise."""
        _check_method(method)
        if (model, method) in TUNED:
            return TUNED[(model, method)]
        return UNTUNED.get(model, cls(threshold=0.5, size_penalty=0.03))


# Tuned on the photos of LFW View 1 peopleDevTrain.txt people only (benchmarks/clustering.py: best BCubed F with
# BCubed precision >= 0.98), flip-averaged dlib descriptors as scan stores them. Never on the test people.
TUNED: dict[tuple[str, str], ClusterParams] = {
    ("dlib", "knn-average"): ClusterParams(threshold=0.9375, size_penalty=0.01, k=10),
    ("dlib", "chinese-whispers"): ClusterParams(threshold=0.9575, k=30),
    ("dlib", "chinese-whispers-dlib"): ClusterParams(threshold=0.955),
    ("dlib", "dbscan"): ClusterParams(threshold=0.965, min_samples=2),
    ("dlib", "hdbscan"): ClusterParams(min_samples=3),
    ("dlib", "agglomerative-average"): ClusterParams(threshold=0.9475),
    ("dlib", "agglomerative-complete"): ClusterParams(threshold=0.94),
}
# FaceNet / ResNet50 have no real weights here, so nothing could be tuned: untuned guesses, as much stricter than
# identify's default thresholds (0.40 / 0.80, gallery/calibration/thresholds.py) as dlib's tuned value is than its
# 0.925, scaled by their wider spread of cosines. Measure them (benchmarks/clustering.py) before relying on them.
UNTUNED: dict[str, ClusterParams] = {
    "facenet": ClusterParams(threshold=0.50, size_penalty=0.03),
    "resnet50": ClusterParams(threshold=0.85, size_penalty=0.02),
}


def cluster(vectors: np.ndarray, method: str = DEFAULT_METHOD, params: ClusterParams | None = None) -> np.ndarray:
    """(n, d) float32 L2-normalised rows -> int64 labels (n,); -1 = unclustered (in a cluster under ``min_size``).
    Labels are 0..m-1 by cluster size, largest first, ties by smallest member index."""
    _check_method(method)
    params = params or ClusterParams.for_model("dlib", method)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected an (n, d) array, got shape {x.shape}")
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return _relabel(np.zeros(1, np.int64), params.min_size)
    raw = _RUNNERS[method](x, params)
    return _relabel(np.asarray(raw, np.int64), params.min_size)


def knn_graph(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows by inner product: (sims (n, k) float32, neighbours (n, k) int64),
    best first, self excluded. Exact (``IndexFlatIP``) up to ``EXACT_KNN_MAX`` rows, HNSW above. Rows with fewer
    than ``k`` others are padded with neighbour -1 and similarity -inf."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kk = min(k + 1, n)
    if n <= EXACT_KNN_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        index.hnsw.efSearch = max(64, 2 * kk)
    index.add(x)
    sims, nbrs = index.search(x, kk)
    return _drop_self(sims, nbrs.astype(np.int64), k)


def _drop_self(sims: np.ndarray, nbrs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (or, when the search missed it, its last column); pad to ``k`` columns."""
    n, kk = nbrs.shape
    rows = np.arange(n)[:, None]
    is_self = nbrs == rows
    drop = np.where(is_self.any(1), is_self.argmax(1), kk - 1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), drop] = False
    s = sims[keep].reshape(n, kk - 1)
    nb = nbrs[keep].reshape(n, kk - 1)
    missing = nb < 0
    s = np.where(missing, -np.inf, s).astype(np.float32)
    if kk - 1 < k:
        s = np.hstack([s, np.full((n, k - kk + 1), -np.inf, np.float32)])
        nb = np.hstack([nb, np.full((n, k - kk + 1), -1, np.int64)])
    return s, nb


def stable_ids(old: dict[int, int], face_ids: np.ndarray, labels: np.ndarray, next_id: int) -> dict[int, int]:
    """Map this run's ``labels`` (of ``face_ids``) to persistent cluster ids, ``old`` being face_id -> cluster id of
    the previous run. Each new cluster takes the old id most of its members held (greedy by overlap, each old id
    used once, ties to the smaller old id, then to the smaller label); clusters left without one get fresh ids from
    ``next_id`` upward, in label order. Returns face_id -> cluster id for clustered faces (labels >= 0)."""
    face_ids = np.asarray(face_ids, np.int64)
    labels = np.asarray(labels, np.int64)
    if face_ids.shape != labels.shape:
        raise ValueError(f"face_ids {face_ids.shape} and labels {labels.shape} differ in shape")
    overlap: dict[tuple[int, int], int] = {}
    for f, lab in zip(face_ids.tolist(), labels.tolist()):
        if lab >= 0 and f in old:
            key = (lab, old[f])
            overlap[key] = overlap.get(key, 0) + 1
    given: dict[int, int] = {}
    taken: set[int] = set()
    for (lab, cid), _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0])):
        if lab not in given and cid not in taken:
            given[lab] = cid
            taken.add(cid)
    fresh = int(next_id)
    for lab in sorted(set(labels[labels >= 0].tolist())):
        if lab not in given:
            given[lab] = fresh
            fresh += 1
    return {f: given[lab] for f, lab in zip(face_ids.tolist(), labels.tolist()) if lab >= 0}


def _relabel(raw: np.ndarray, min_size: int) -> np.ndarray:
    """Any labels (-1 = noise) -> 0..m-1 by size desc then smallest member; clusters under ``min_size`` -> -1."""
    n = len(raw)
    out = np.full(n, -1, np.int64)
    ok = raw >= 0
    if not ok.any():
        return out
    uniq, first, inverse, counts = np.unique(raw[ok], return_index=True, return_inverse=True, return_counts=True)
    first_member = np.flatnonzero(ok)[first]
    order = np.lexsort((first_member, -counts))
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    big = counts >= max(1, min_size)
    rank_kept = np.cumsum(big[order]) - 1  # renumber the kept ones densely, same order
    new = np.full(len(uniq), -1, np.int64)
    new[order[big[order]]] = rank_kept[big[order]]
    out[ok] = new[inverse]
    return out


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; known: {', '.join(METHODS)}")


# -- knn-average -------------------------------------------------------------------------------------------------

def knn_average(x: np.ndarray, p: ClusterParams, graph: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Average linkage on the kNN graph, merged in rounds of mutual best pairs (see the module docstring)."""
    n = len(x)
    sims, nbrs = graph if graph is not None else knn_graph(x, min(p.k, n - 1))
    a = np.repeat(np.arange(n, dtype=np.int64), nbrs.shape[1])
    b = nbrs.ravel()
    ok = b >= 0
    edges = _unique_edges(a[ok], b[ok], n)
    sums = x.astype(np.float64)
    sizes = np.ones(n, np.int64)
    parent = np.arange(n, dtype=np.int64)
    esim = _edge_sims(sums, sizes, edges)
    rounds = 0
    while len(edges):
        score = esim - p.size_penalty * np.sqrt((1.0 / sizes[edges[:, 0]] + 1.0 / sizes[edges[:, 1]]) / 2)
        pairs = _mutual_best(edges, score, p.threshold, n)
        if not len(pairs):
            break
        rounds += 1
        keep, gone = pairs[:, 0], pairs[:, 1]  # keep < gone
        sums[keep] += sums[gone]
        sizes[keep] += sizes[gone]
        parent[gone] = keep
        edges, esim = _merge_edges(edges, esim, gone, keep, sums, sizes, n)
    log.debug("knn-average: %d rounds", rounds)
    return _resolve(parent)


def _unique_edges(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo[lo != hi] * n + hi[lo != hi])
    return np.stack([key // n, key % n], 1)


def _edge_sims(sums: np.ndarray, sizes: np.ndarray, edges: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Average linkage of each edge's two clusters: the dot product of their mean vectors."""
    out = np.empty(len(edges), np.float64)
    for s in range(0, len(edges), chunk):
        e = edges[s:s + chunk]
        out[s:s + chunk] = np.einsum("ij,ij->i", sums[e[:, 0]], sums[e[:, 1]]) / (sizes[e[:, 0]] * sizes[e[:, 1]])
    return out


def _mutual_best(edges: np.ndarray, score: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Pairs (i < j) that are each other's best neighbour with a score >= threshold (ties: smaller neighbour id)."""
    ok = score >= threshold
    if not ok.any():
        return np.zeros((0, 2), np.int64)
    e, s = edges[ok], score[ok]
    src = np.concatenate([e[:, 0], e[:, 1]])
    dst = np.concatenate([e[:, 1], e[:, 0]])
    sc = np.concatenate([s, s])
    order = np.lexsort((dst, -sc, src))
    src, dst = src[order], dst[order]
    head = np.ones(len(src), bool)
    head[1:] = src[1:] != src[:-1]
    best = np.full(n, -1, np.int64)
    best[src[head]] = dst[head]
    cand = src[head]
    mutual = cand[(best[best[cand]] == cand) & (cand < best[cand])]
    return np.stack([mutual, best[mutual]], 1)


def _merge_edges(edges, esim, gone, keep, sums, sizes, n):
    """Relabel edges after merging ``gone[i]`` into ``keep[i]``; recompute the linkage of edges that changed."""
    remap = np.arange(n, dtype=np.int64)
    remap[gone] = keep
    dirty = np.zeros(n, bool)
    dirty[keep] = True
    touched = dirty[edges[:, 0]] | dirty[edges[:, 1]] | (remap[edges[:, 0]] != edges[:, 0]) | \
        (remap[edges[:, 1]] != edges[:, 1])
    clean_e, clean_s = edges[~touched], esim[~touched]
    t = remap[edges[touched]]
    t = _unique_edges(t[:, 0], t[:, 1], n)
    return np.concatenate([clean_e, t]), np.concatenate([clean_s, _edge_sims(sums, sizes, t)])


def _resolve(parent: np.ndarray) -> np.ndarray:
    """Follow merge pointers to each point's root."""
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


# -- chinese whispers --------------------------------------------------------------------------------------------

def chinese_whispers(x: np.ndarray, p: ClusterParams, graph: tuple[np.ndarray, np.ndarray] | None = None,
                     blocks: int = 16) -> np.ndarray:
    """Chinese whispers (Biemann 2006, dlib's ``chinese_whispers``) on the kNN edges with similarity >= threshold,
    unit weights as in dlib's face example. Each sweep visits the nodes in a seeded random order, in ``blocks``
    groups updated together (numpy), until a sweep changes nothing or ``iterations`` sweeps."""
    n = len(x)
    sims, nbrs = graph if graph is not None else knn_graph(x, min(p.k, n - 1))
    a = np.repeat(np.arange(n, dtype=np.int64), nbrs.shape[1])
    b, s = nbrs.ravel(), sims.ravel()
    ok = (b >= 0) & (s >= p.threshold)
    e = _unique_edges(a[ok], b[ok], n)
    src = np.concatenate([e[:, 0], e[:, 1]])
    dst = np.concatenate([e[:, 1], e[:, 0]])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    start = np.searchsorted(src, np.arange(n + 1))
    labels = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(p.seed)
    for _ in range(p.iterations):
        changed = 0
        for group in np.array_split(rng.permutation(n), blocks):
            changed += _vote(group, start, dst, labels, n)
        if not changed:
            break
    return labels


def _vote(group: np.ndarray, start: np.ndarray, dst: np.ndarray, labels: np.ndarray, n: int) -> int:
    """Give each node of ``group`` the label most of its neighbours carry (ties: the smaller label)."""
    counts = start[group + 1] - start[group]
    group = group[counts > 0]
    counts = counts[counts > 0]
    if not len(group):
        return 0
    node = np.repeat(group, counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    lab = labels[dst[np.repeat(start[group], counts) + offs]]
    key, votes = np.unique(node * n + lab, return_counts=True)
    kn, kl = key // n, key % n
    order = np.lexsort((kl, -votes, kn))
    kn, kl = kn[order], kl[order]
    head = np.ones(len(kn), bool)
    head[1:] = kn[1:] != kn[:-1]
    new = kl[head]
    changed = int((labels[kn[head]] != new).sum())
    labels[kn[head]] = new
    return changed


def chinese_whispers_dlib(x: np.ndarray, p: ClusterParams) -> np.ndarray:
    """dlib's own ``chinese_whispers_clustering`` (all pairs, O(n^2)) at the Euclidean distance matching
    ``threshold``: for unit vectors |a - b| = sqrt(2 - 2 cos), so cosine 0.875 is dlib's 0.5."""
    try:
        import dlib
    except ImportError as exc:
        raise RuntimeError("chinese-whispers-dlib needs dlib: pip install 'facegallery[dlib]'") from exc
    dist = math.sqrt(max(0.0, 2.0 - 2.0 * p.threshold))
    return np.asarray(dlib.chinese_whispers_clustering([dlib.vector(v.tolist()) for v in x], dist), np.int64)


# -- scikit-learn baselines --------------------------------------------------------------------------------------

def dbscan(x: np.ndarray, p: ClusterParams) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=1.0 - p.threshold, min_samples=p.min_samples, metric="cosine").fit_predict(x)


def hdbscan(x: np.ndarray, p: ClusterParams) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    # Euclidean distance on unit vectors is a monotone function of cosine distance: same trees, faster code path.
    return HDBSCAN(min_cluster_size=max(2, p.min_size), min_samples=p.min_samples, copy=True).fit_predict(x)


def agglomerative(x: np.ndarray, p: ClusterParams, linkage: str) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, distance_threshold=1.0 - p.threshold, metric="cosine",
                                    linkage=linkage)
    return model.fit_predict(x)


_RUNNERS = {
    "knn-average": knn_average,
    "chinese-whispers": chinese_whispers,
    "chinese-whispers-dlib": chinese_whispers_dlib,
    "dbscan": dbscan,
    "hdbscan": hdbscan,
    "agglomerative-average": lambda x, p: agglomerative(x, p, "average"),
    "agglomerative-complete": lambda x, p: agglomerative(x, p, "complete"),
}

