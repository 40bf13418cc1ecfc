"""Scale benchmark for indexer.vector_index: build time, memory, single-query latency and recall@1 per kind.

Synthetic, face-like embeddings: "groups" (coarse look-alike populations) hold identities, identities hold
noisy photos, all L2-normalised. Cosine of two photos of one person is ~0.65, of two people in one group ~0.2,
so near neighbours are structured rather than uniform and recall means something. Queries are new photos of
enrolled identities ("known": the identification case the recall goal is about) plus photos of people who are
not in the gallery ("unknown": their nearest neighbour is an arbitrary stranger, reported separately).

    python -m benchmarks.search_scale --sizes 100000 1000000

Importing this module does no work; ``run`` returns the rows, ``main`` prints them as a table.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Sequence

import faiss
import numpy as np

from indexer.vector_index import VectorIndex, default_nlist, default_nprobe

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf")  # HNSW was measured and dropped: see indexer/vector_index.py
PHOTOS_PER_IDENTITY = 8
GROUPS = 64
IDENTITY_SPREAD = 1.5  # identity centre = group direction + this much isotropic noise (unit-norm scale)
PHOTO_NOISE = 0.7  # photo = identity centre + this much noise
UNKNOWN_FRACTION = 0.25
IVF_NPROBES = (8, 16, 32, 64, 128)
TOP_K = 10
#: OpenMP threads while timing single queries. faiss does one query's work on one thread anyway, but with more
#: threads every call opens a parallel region, and on an oversubscribed machine (2 cores, load ~5 here) the
#: barrier costs ~20 ms per call (5k x 512 flat: 24 ms with 2 threads vs 1.3 ms with 1). Builds use all threads.
LATENCY_THREADS = 1
LATENCY_REPEATS = 3  # flat is timed once: its scans take 10-1000 ms, so preemption blurs them little


def _normalised(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _noisy(centres: np.ndarray, which: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    dim = centres.shape[1]
    x = rng.standard_normal((which.size, dim), dtype=np.float32)
    x *= np.float32(scale / np.sqrt(dim))
    x += centres[which]
    return _normalised(x)


def identity_centres(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` identity directions spread around GROUPS group directions."""
    groups = _normalised(rng.standard_normal((GROUPS, dim), dtype=np.float32))
    return _noisy(groups, rng.integers(0, GROUPS, count), IDENTITY_SPREAD, rng)


def synthetic_gallery(n: int, dim: int, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors (n, dim) float32, identity centres)``; photo i belongs to identity i // PHOTOS_PER_IDENTITY."""
    rng = np.random.default_rng(seed)
    centres = identity_centres(-(-n // PHOTOS_PER_IDENTITY), dim, rng)
    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):  # chunked so peak memory stays ~ the output array
        rows = np.arange(start, min(n, start + chunk))
        vectors[rows] = _noisy(centres, rows // PHOTOS_PER_IDENTITY, PHOTO_NOISE, rng)
    return vectors, centres


def synthetic_queries(centres: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, known)``: new photos of enrolled identities (known=True) and of strangers."""
    rng = np.random.default_rng(seed + 1)
    known = rng.random(count) >= UNKNOWN_FRACTION
    strangers = identity_centres(count, centres.shape[1], rng)
    pool = np.vstack([centres[rng.integers(0, len(centres), count)], strangers])
    which = np.where(known, np.arange(count), count + np.arange(count))
    return _noisy(pool, which, PHOTO_NOISE, rng), known


def exact_top1(vectors: np.ndarray, queries: np.ndarray, chunk: int = 131_072) -> np.ndarray:
    """Row of the exact nearest vector (max inner product) for each query: a numpy oracle, no faiss."""
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.zeros(len(queries), np.int64)
    for start in range(0, len(vectors), chunk):
        sims = queries @ vectors[start:start + chunk].T
        top = sims.argmax(axis=1)
        val = sims[np.arange(len(queries)), top]
        better = val > best
        best[better], arg[better] = val[better], top[better] + start
    return arg


def _settings(index: VectorIndex, nprobes: Sequence[int]) -> list[int | None]:
    if index.kind == "ivf":
        return sorted({p for p in (*nprobes, default_nprobe(index.nlist)) if p <= index.nlist})
    return [None]


def _timed_search(index: VectorIndex, query: np.ndarray, nprobe: int | None) -> tuple[float, int]:
    if nprobe is not None:
        index.nprobe = nprobe
    t0 = time.perf_counter()
    _, labels = index.search(query[None, :], TOP_K)
    return (time.perf_counter() - t0) * 1e3, int(labels[0, 0])


def _latency_ms(index: VectorIndex, queries: np.ndarray, settings: list[int | None],
                repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """``(times (settings, queries) in ms, top-1 ids)`` of one-query searches. Settings are interleaved per
    query, so load drifting on a shared machine hits them all alike; best of ``repeats`` filters preemption."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(LATENCY_THREADS)
    times = np.full((len(settings), len(queries)), np.inf)
    top1 = np.empty((len(settings), len(queries)), np.int64)
    try:
        for q in queries[:5]:  # warm caches and lazy allocations
            index.search(q[None, :], TOP_K)
        for _ in range(repeats):
            for i, q in enumerate(queries):
                for s, nprobe in enumerate(settings):
                    took, top1[s, i] = _timed_search(index, q, nprobe)
                    times[s, i] = min(times[s, i], took)
    finally:
        faiss.omp_set_num_threads(threads)
    return times, top1


def _measure_kind(kind: str, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                  known: np.ndarray, nprobes: Sequence[int]) -> list[dict]:
    t0 = time.perf_counter()
    index = VectorIndex.build(ids, vectors, kind=kind)
    build_s = time.perf_counter() - t0
    index_bytes = int(faiss.serialize_index(index.faiss_index).size)
    settings = _settings(index, nprobes)
    times, top1 = _latency_ms(index, queries, settings, repeats=1 if kind == "flat" else LATENCY_REPEATS)
    rows = []
    for s, nprobe in enumerate(settings):
        hit = top1[s] == ids[truth]
        rows.append({"size": len(ids), "dim": vectors.shape[1], "kind": kind,
                     "params": "exact" if nprobe is None else f"nlist={index.nlist} nprobe={nprobe}",
                     "build_s": round(build_s, 2), "index_mb": round(index_bytes / 2**20, 1),
                     "p50_ms": round(float(np.percentile(times[s], 50)), 3),
                     "p95_ms": round(float(np.percentile(times[s], 95)), 3),
                     "recall1_known": round(float(hit[known].mean()), 4),
                     "recall1_unknown": round(float(hit[~known].mean()), 4) if (~known).any() else None,
                     "threads": faiss.omp_get_max_threads(), "loadavg_1m": round(os.getloadavg()[0], 2)})
        logger.info("%s", rows[-1])
    return rows


def run(sizes: Sequence[int] = (100_000, 1_000_000), dim: int = 512, queries: int = 200, seed: int = 0,
        kinds: Sequence[str] = KINDS, nprobes: Sequence[int] = IVF_NPROBES) -> list[dict]:
    """One row per (size, kind, search setting); see the module docstring for the data."""
    rows: list[dict] = []
    for n in sizes:
        t0 = time.perf_counter()
        vectors, centres = synthetic_gallery(n, dim, seed)
        q, known = synthetic_queries(centres, queries, seed)
        truth = exact_top1(vectors, q)
        ids = (1 + 3 * np.arange(n)).astype(np.int64)  # row-id-like, not positions
        logger.info("n=%d: data and exact answers in %.1fs (ivf nlist would be %d)", n, time.perf_counter() - t0,
                    default_nlist(n))
        for kind in kinds:
            rows += _measure_kind(kind, ids, vectors, q, truth, known, nprobes)
    return rows


COLUMNS = ("size", "kind", "params", "build_s", "index_mb", "p50_ms", "p95_ms", "recall1_known",
           "recall1_unknown")


def format_table(rows: Sequence[dict]) -> str:
    """Rows as an aligned text table."""
    cells = [list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--nprobes", type=int, nargs="+", default=list(IVF_NPROBES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = run(args.sizes, args.dim, args.queries, args.seed, args.kinds, args.nprobes)
    print(f"# faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, {os.cpu_count()} CPUs, "
          f"1-min load average {os.getloadavg()[0]:.1f} at the end; latency = best of {LATENCY_REPEATS} per query "
          f"(flat: 1), top-{TOP_K}, one query per call, {LATENCY_THREADS} OpenMP thread(s) while timing")
    print(format_table(rows))


if __name__ == "__main__":
    main()
