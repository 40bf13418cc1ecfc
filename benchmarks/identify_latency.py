"""Identify latency for a one-face photo with all three embedders, warm, vs the sum of its stages.

A small gallery (a few LFW people, three embedders) is enrolled first. Each round then times, back to back:

- ``identify(gallery, [photo])``: the public call, everything included;
- its stages called directly on the same photo: decode (``load_image``), detect (MTCNN), per embedder crop +
  ``embed_crops``, per embedder one index search at the depth identify uses.

The overhead is p50(identify) / sum of the stages' p50 - 1: what the library adds around the work it must do
(database look-ups of the hits' owners, thresholds, answer assembly).
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, median, percentile
from benchmarks.embed_stage import build_embedder
from gallery.config import DEFAULT_MODELS, Settings
from gallery.enroll.enroll import enroll_jobs
from gallery.enroll.scan import PhotoJob
from gallery.recognize.identify import identify
from gallery.store import Gallery
from indexer.images import load_image

logger = logging.getLogger(__name__)

SECTION = "identify"
MODELS = DEFAULT_MODELS
SEARCH_K = 64  # identify's first search depth for top_k=5: max(64, 8 * (top_k + 1))


def _stages(gallery: Gallery, photo: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    img = load_image(photo)
    times["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    faces = gallery.confident(gallery.detector.detect(img))
    times["detect"] = time.perf_counter() - t0
    for model in MODELS:
        emb = gallery.embedder(model)
        t0 = time.perf_counter()
        vecs = emb.embed_crops([emb.crop(img, f) for f in faces])
        times[f"embed {model}"] = time.perf_counter() - t0
        index = gallery.index(model)
        t0 = time.perf_counter()
        index.search(vecs[:1], min(SEARCH_K, len(index)))
        times[f"search {model}"] = time.perf_counter() - t0
    return times


def _one_face_query(gallery: Gallery, candidates: list[Path]) -> Path:
    for path in candidates:
        if len(gallery.confident(gallery.detector.detect(load_image(path)))) == 1:
            return path
    raise RuntimeError("no one-face query photo among the candidates")


def run(photos: list[Path], queries: list[Path], device: str, rounds: int) -> tuple[list[Figure], dict]:
    """Enroll ``photos`` (K=0, all three embedders), then time identify on the first one-face photo of ``queries``."""
    with tempfile.TemporaryDirectory() as tmp:
        embedders = {m: build_embedder(m, device, fast=False) for m in MODELS}
        settings = Settings(home=Path(tmp), device=device, progress=False, lock_timeout_s=5)
        gallery = Gallery(settings, embedder_factory=lambda name, **kw: embedders[name])
        jobs = [PhotoJob(person=p.parent.name, key=str(p), source=p) for p in photos]
        enroll_jobs(gallery, jobs, models=list(MODELS), augment=0)
        query = _one_face_query(gallery, queries)
        for _ in range(2):  # warm: models, index caches, first shapes
            identify(gallery, [query], models=list(MODELS))
            _stages(gallery, query)
        total, stages = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            report = identify(gallery, [query], models=list(MODELS))
            total.append(time.perf_counter() - t0)
            stages.append(_stages(gallery, query))
        answer = {m: a.identity for m, a in report.images[0].faces[0].models.items()}
        gallery.close()
    stage_p50 = {name: median([s[name] for s in stages]) for name in stages[0]}
    stage_sum = sum(stage_p50.values())
    per_round = [t / sum(s.values()) for t, s in zip(total, stages)]
    p50, p95 = median(total) * 1e3, percentile(total, 95) * 1e3
    figure = Figure(
        SECTION, f"identify one-face photo, 3 embedders, warm: p50 vs sum of stage p50s ({len(photos)}-photo "
        f"gallery)", p50 / 1e3 / stage_sum,
        f"p50 {p50:.0f} ms, p95 {p95:.0f} ms; stages {stage_sum * 1e3:.0f} ms = "
        + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in stage_p50.items())
        + f"; per-round ratio median {median(per_round):.2f}", goal_max=1.2)
    details = {"query": str(query), "p50_ms": round(p50, 1), "p95_ms": round(p95, 1),
               "stages_p50_ms": {k: round(v * 1e3, 1) for k, v in stage_p50.items()}, "answer": answer,
               "random_weights": [m for m, e in embedders.items() if e.weights.random], "rounds": rounds,
               "gallery_photos": len(photos)}
    return [figure], details
