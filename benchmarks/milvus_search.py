"""One-query search latency at gallery scale: the FAISS flat index vs a Milvus Lite collection (FLAT, IP).

Seeded random unit vectors of the dlib embedder's size (128-D; ``--n`` of them, 100K by default) go into both;
``--queries`` single-vector searches at identify's first depth (k = 64) are then timed, interleaved (FAISS, then
Milvus, per query), and the p50 / p95 of each reported with the top-1 agreement. Milvus Lite runs in this process
behind a local gRPC server, so its figure includes that round trip; a Milvus cluster adds the network's.

    python -m benchmarks.milvus_search [--n 100000 --queries 200]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import command_line, loadavg, percentile
from indexer.milvus_index import MilvusIndex, connect
from indexer.vector_index import VectorIndex

K = 64


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="append the table to this file")
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    queries = vecs[rng.choice(args.n, args.queries, replace=False)] + rng.normal(0, 0.05, (args.queries, args.dim))
    t0 = time.perf_counter()
    flat = VectorIndex.build(ids, vecs, kind="flat")
    faiss_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="fg-milvus-") as tmp:
        client = connect(str(Path(tmp) / "v.db"))
        t0 = time.perf_counter()
        milvus = MilvusIndex.build(client, "bench", ids, vecs)
        milvus_build = time.perf_counter() - t0
        times = {"faiss flat": [], "milvus lite": []}
        agree = 0
        for q in queries.astype(np.float32):
            t0 = time.perf_counter()
            _, a = flat.search(q[None, :], K)
            times["faiss flat"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, b = milvus.search(q[None, :], K)
            times["milvus lite"].append(time.perf_counter() - t0)
            agree += int(a[0, 0] == b[0, 0])
        client.close()
    lines = [f"# One-query search, {args.n} x {args.dim} vectors, k = {K} ({args.queries} queries)", "",
             f"`{command_line('benchmarks.milvus_search', argv or sys.argv[1:])}`; load {loadavg()}", "",
             "| store | build s | p50 ms | p95 ms |", "|---|---|---|---|"]
    for name, build in (("faiss flat", faiss_build), ("milvus lite", milvus_build)):
        t = times[name]
        lines.append(f"| {name} | {build:.1f} | {1000 * percentile(t, 50):.2f} | {1000 * percentile(t, 95):.2f} |")
    lines += ["", f"- top-1 id equal in {agree} of {args.queries} queries"]
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)
    print(text)


if __name__ == "__main__":
    main()
