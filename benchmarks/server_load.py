"""Load on the HTTP service: identify throughput and latency with N concurrent clients, micro-batching on vs off.

Loopback only (127.0.0.1), bounded in requests and time. A temporary gallery gets ``--people`` LFW people (three
photos each, dlib, no augmentation) and an API key; two servers are started on it with ``facegallery serve
--workers W``, one with micro-batching and one with ``--no-batching``. Each round then runs, back to back (the
machine's load drifts, so the variants are interleaved and the medians over rounds reported):

- ``sequential``: one client, one request at a time, against the batching server;
- ``batching on`` / ``batching off``: ``--clients`` clients x ``--requests`` requests each, all at once.

Every request is one LFW photo (250 x 250, one face) of an enrolled person (their fourth photo). After the rounds,
``--enroll-during`` photos of new people are enrolled through the batching server while the concurrent load runs;
after each enroll response the same photo is identified until it is named (bounded by 5 s; "inf" = not named):
the largest such delay is reported. Requests are spread over the workers by the kernel, so "through another
worker" is likely but not forced.

    python -m benchmarks.server_load --data-dir DATA [--clients 16 --requests 20 --workers 2 --rounds 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.common import command_line, default_data_dir, free_port, loadavg, median, percentile, served

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    name: str
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def _people(data_dir: Path, count: int, skip: int = 0) -> list[tuple[str, list[Path]]]:
    root = data_dir / "lfw" / "lfw-deepfunneled"
    out = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))
        if len(files) >= 4:
            out.append((person.name, files))
    return out[skip:skip + count]


@contextmanager
def _server(home: Path, workers: int, batching: bool, log_path: Path):
    port = free_port()
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "--gallery", str(home), "-q", "serve",
           "--port", str(port), "--workers", str(workers), "--max-queue", "256"] + ([] if batching else
                                                                                    ["--no-batching"])
    with served(cmd, {"OMP_NUM_THREADS": "1"}, log_path, port, ready_s=300) as base:
        yield base


def _load(name: str, base: str, token: str, photos: list[bytes], clients: int, requests: int) -> Run:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            start.wait()
            for i in range(requests):
                photo = photos[(k * requests + i) % len(photos)]
                t0 = time.perf_counter()
                try:
                    ok = c.post("/v1/identify", files=[("images", ("q.jpg", photo))]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return Run(name, time.perf_counter() - t0, latencies, errors[0])


def _enroll_during_load(base: str, token: str, photos: list[bytes], clients: int, requests: int,
                        newcomers: list[tuple[str, list[Path]]]) -> tuple[Run, list[float], int]:
    """Concurrent identify load while newcomers are enrolled one photo each; returns the load, the delays until
    each newcomer was named, and the enroll errors."""
    delays: list[float] = []
    enroll_errors = [0]
    auth = {"Authorization": f"Bearer {token}"}

    def writer() -> None:
        with httpx.Client(base_url=base, headers=auth, timeout=300) as c:
            for name, files in newcomers:
                res = c.post(f"/v1/people/{name}/photos", params={"model": "dlib", "augment": 0},
                             files=[("photos", (files[0].name, files[0].read_bytes()))])
                if res.status_code != 200:
                    enroll_errors[0] += 1
                    continue
                done, probe = time.perf_counter(), files[0].read_bytes()  # the same photo: visibility, not accuracy
                while time.perf_counter() - done < 5:
                    got = c.post("/v1/identify", files=[("images", ("p.jpg", probe))]).json()
                    faces = got["images"][0]["faces"]
                    if faces and faces[0]["models"]["dlib"]["identity"] == name:
                        delays.append(time.perf_counter() - done)
                        break
                else:
                    delays.append(float("inf"))

    w = threading.Thread(target=writer)
    w.start()
    run = _load("batching on + enroll", base, token, photos, clients, requests)
    w.join()
    return run, delays, enroll_errors[0]


def _batch_stats(base: str, workers: int) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    for _ in range(10 * workers):  # health is answered by whichever worker the kernel picks
        doc = httpx.get(f"{base}/v1/health", timeout=10).json()
        seen[doc["worker"]] = doc["batches"]
        if len(seen) == workers:
            break
    return seen


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20, help="per client and round")
    ap.add_argument("--sequential", type=int, default=40, help="requests of the one-at-a-time client per round")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--enroll-during", type=int, default=10, help="photos of new people enrolled under load")
    ap.add_argument("--out", type=Path, default=None, help="also write the report (markdown) to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from gallery.config import Settings
    from gallery.enroll.enroll import enroll_images
    from gallery.manage.keys import create_key
    from gallery.store import Gallery

    people = _people(args.data_dir, args.people)
    newcomers = _people(args.data_dir, args.enroll_during, skip=args.people)
    queries = [files[3].read_bytes() for _, files in people]
    with tempfile.TemporaryDirectory(prefix="fg-load-") as tmp, ExitStack() as stack:
        home = Path(tmp) / "g"
        t0 = time.perf_counter()
        with Gallery(Settings(home=home, progress=False)) as g:
            for name, files in people:
                enroll_images(g, name, [(f.name, f.read_bytes()) for f in files[:3]], models=["dlib"], augment=0)
            token = create_key(g, "load").token
        log.info("enrolled %d people in %.1f s", len(people), time.perf_counter() - t0)
        on = stack.enter_context(_server(home, args.workers, True, Path(tmp) / "on.log"))
        off = stack.enter_context(_server(home, args.workers, False, Path(tmp) / "off.log"))
        for base in (on, off):  # warm every worker's first request path
            _load("warm", base, token, queries, 2 * args.workers, 3)
        runs: dict[str, list[Run]] = {"sequential": [], "batching on": [], "batching off": []}
        for r in range(args.rounds):
            runs["sequential"].append(_load("sequential", on, token, queries, 1, args.sequential))
            runs["batching on"].append(_load("batching on", on, token, queries, args.clients, args.requests))
            runs["batching off"].append(_load("batching off", off, token, queries, args.clients, args.requests))
            log.info("round %d: %s", r + 1, ", ".join(f"{k} {v[-1].rps:.1f} req/s" for k, v in runs.items()))
        stats = _batch_stats(on, args.workers)
        enrolled = None
        if newcomers:
            enrolled = _enroll_during_load(on, token, queries, args.clients, args.requests, newcomers)
    report = _report(args, argv, runs, stats, enrolled)
    if args.out is not None:
        args.out.write_text(report)
    print(report)


def _row(name: str, rs: list[Run]) -> list[str]:
    lat = [x for r in rs for x in r.latencies]
    return [name, str(sum(len(r.latencies) for r in rs)), str(sum(r.errors for r in rs)),
            f"{median([r.rps for r in rs]):.1f}", f"{1000 * percentile(lat, 50):.0f}",
            f"{1000 * percentile(lat, 95):.0f}"]


def _report(args, argv, runs, stats, enrolled) -> str:
    rows = [_row(k, v) for k, v in runs.items()]
    on = median([r.rps for r in runs["batching on"]])
    seq, off = median([r.rps for r in runs["sequential"]]), median([r.rps for r in runs["batching off"]])
    lines = [f"# Service load: identify over HTTP ({args.workers} workers, dlib + MTCNN, {args.people} people)", "",
             f"`{command_line('benchmarks.server_load', argv or sys.argv[1:])}`", "",
             f"Load average at the end: {loadavg()} on {os.cpu_count()} cores (shared with other work).", "",
             "| variant | requests | errors | req/s (median of rounds) | p50 ms | p95 ms |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"- batching on vs one-at-a-time client: {on / seq:.2f}x",
              f"- batching on vs off ({args.clients} clients): {on / off:.2f}x"]
    for pid, batches in sorted(stats.items()):
        parts = [f"{k} {v['calls_per_run']} calls/run (largest {v['largest']})" for k, v in batches.items()]
        lines.append(f"- worker {pid} batching: " + ", ".join(parts))
    if enrolled is not None:
        run, delays, errs = enrolled
        lines += ["", "| variant | requests | errors | req/s | p50 ms | p95 ms |", "|---|---|---|---|---|---|",
                  "| " + " | ".join(_row(run.name, [run])) + " |", "",
                  f"- {len(delays)} photos of new people enrolled during that load, {errs} enroll errors; each named "
                  f"by identify after its enroll response within: max {max(delays):.3f} s, median "
                  f"{median(delays):.3f} s"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
