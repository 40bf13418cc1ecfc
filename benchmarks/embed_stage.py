"""Embedding stage: the pipeline's ``embed_crops`` vs the raw forward, the fast mode vs stock fp32, dlib batching.

Crops are real: MTCNN detections on LFW photos, cut by each embedder's own ``crop``. Per embedder and round:

- ``pipeline``: ``embed_crops`` on the PIL crops (uint8 stacking, normalisation, forward, L2) at batch ``b``;
- ``raw``: the model's forward alone on the already preprocessed tensor of the same ``b`` crops;
- ``raw fast``: the same forward with ``fast=True`` (torch embedders; ONNX Runtime on the CPU, see
  indexer/embedders/base.py), and with the torch-rewrite fallback (``FACEGALLERY_FAST_ENGINE=torch``);
- ``raw batch 1``: the same crops one forward each, as the stock tutorial loop runs them;
- facenet on CPU only, for context: bfloat16 autocast, and the stock forward on all cores when fewer are used;
- dlib: its batched ``compute_face_descriptor`` vs one chip per call.

Fidelity of the fast mode is checked on the same real crops. Random weights make a network's outputs nearly
identical for every input (cosine ~0.999 between two different faces), so "cosine >= 0.999" would pass for any
junk. The report therefore also gives the relative error of the raw output and compares it with the distance
between the outputs of two *different* faces: an error far below that spread cannot change a nearest neighbour.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import Figure, interleaved, median, paired_ratio
from indexer.detect import Detector, DetectorConfig
from indexer.embedders import Embedder, WeightsNotFoundError, create_embedder
from indexer.embedders.onnx_cpu import OrtModel
from indexer.images import load_image

logger = logging.getLogger(__name__)

SECTION = "embedding"


@dataclass(frozen=True)
class Fidelity:
    """Fast vs plain raw outputs on real crops."""

    max_rel_error: float  # max over crops of |fast - plain| / |plain| (raw outputs, before normalisation)
    min_cosine: float  # min over crops of cosine(fast, plain)
    face_spread: float  # median distance between the unit outputs of two different faces (plain)

    def to_dict(self) -> dict:
        return {"max_rel_error": self.max_rel_error, "min_cosine": self.min_cosine, "face_spread": self.face_spread}


def build_embedder(name: str, device: str, fast: bool, weights_dir: Path | None = None) -> Embedder:
    """Real weights when they can be found, else the seeded random init (reported as such)."""
    try:
        return create_embedder(name, device=device, weights_dir=weights_dir, fast=fast)
    except WeightsNotFoundError:
        if name == "dlib":
            raise
        return create_embedder(name, device=device, weights="random", fast=fast)


@contextlib.contextmanager
def fast_engine_env(engine: str):
    """Build fast embedders with ``FACEGALLERY_FAST_ENGINE=engine`` (read when the model loads)."""
    before = os.environ.get("FACEGALLERY_FAST_ENGINE")
    os.environ["FACEGALLERY_FAST_ENGINE"] = engine
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FACEGALLERY_FAST_ENGINE", None)
        else:
            os.environ["FACEGALLERY_FAST_ENGINE"] = before


def real_faces(photos: list[Path], device: str) -> list[tuple[Image.Image, object]]:
    """(image, largest face) for each photo where MTCNN finds one."""
    detector = Detector(DetectorConfig(device=device))
    images = [load_image(p) for p in photos]
    return [(img, faces[0]) for img, faces in zip(images, detector.detect_batch(images)) if faces]


def fidelity(plain: Embedder, fast: Embedder, tensor: torch.Tensor) -> Fidelity:
    a, b = plain.forward(tensor).astype(np.float64), fast.forward(tensor).astype(np.float64)
    rel = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-30)
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.sum(ua * ub, axis=1)
    pairs = [np.linalg.norm(ua[i] - ua[j]) for i in range(len(ua)) for j in range(i + 1, len(ua))]
    return Fidelity(float(rel.max()), float(cos.min()), float(np.median(pairs)) if pairs else float("nan"))


def measure_torch(name: str, faces, device: str, batch: int, rounds: int, threads: int,
                  weights_dir: Path | None = None) -> tuple[list[Figure], dict]:
    plain = build_embedder(name, device, False, weights_dir)
    fast = build_embedder(name, device, True, weights_dir)
    engine = "onnxruntime" if isinstance(fast.load(), OrtModel) else "torch rewrite"
    with fast_engine_env("torch"):
        torch_fast = build_embedder(name, device, True, weights_dir)
        torch_fast.load()
    crops = [plain.crop(img, face) for img, face in faces][:batch]
    tensor = plain.preprocess(crops)
    times = interleaved({
        "pipeline": lambda: plain.embed_crops(crops, batch_size=batch),
        "raw": lambda: plain.forward(tensor),
        "raw_fast": lambda: fast.forward(tensor),
        "raw_torch_fast": lambda: torch_fast.forward(tensor),
        "raw_batch1": lambda: [plain.forward(tensor[i:i + 1]) for i in range(len(crops))],
    }, rounds)
    fid = fidelity(plain, fast, plain.preprocess([plain.crop(img, face) for img, face in faces]))
    n = len(crops)
    rate = {k: n / median(v) for k, v in times.items()}
    label = f"{name} ({plain.weights.name}), batch {n}"
    figures = [
        _speedup(f"{label}: pipeline embed_crops vs raw forward (faces/s)", times, n, "raw", "pipeline",
                 goal_min=0.8),
        _speedup(f"{label}: fast forward ({engine}) vs stock eager fp32 (speed-up)", times, n, "raw", "raw_fast",
                 goal_min=1.5),
        _speedup(f"{label}: torch-rewrite fast forward (FACEGALLERY_FAST_ENGINE=torch, the fallback) vs stock "
                 "eager fp32 (speed-up)", times, n, "raw", "raw_torch_fast"),
        Figure(SECTION, f"{label}: fast vs fp32 min cosine on {len(faces)} real LFW crops", fid.min_cosine,
               f"max relative error of raw output {fid.max_rel_error:.1e}; distance between two different "
               f"faces' unit outputs (median) {fid.face_spread:.1e}", goal_min=0.999, unit="cosine"),
        _speedup(f"{label}: stock forward at batch {n} vs batch 1 (speed-up; the stock loop runs batch 1)", times,
                 n, "raw_batch1", "raw"),
    ]
    if device == "cpu" and name == "facenet":
        figures += context_figures(plain, tensor, label, threads, max(2, rounds // 2))
    details = {"weights": plain.weights.name, "random_weights": plain.weights.random, "batch": n,
               "faces_per_s": {k: round(v, 2) for k, v in rate.items()}, "fidelity": fid.to_dict()}
    return figures, details


def context_figures(plain: Embedder, tensor: torch.Tensor, label: str, threads: int, rounds: int) -> list[Figure]:
    """Why the CPU fast mode stays fp32, and what the thread count does under this machine's load."""
    n = len(tensor)
    times = interleaved({"raw": lambda: plain.forward(tensor), "bf16": lambda: _bf16_forward(plain, tensor)},
                        rounds)
    figures = [Figure(SECTION, f"{label}: bf16 autocast vs stock fp32 forward (speed-up; why CPU fast mode is fp32)",
                      paired_ratio(times["raw"], times["bf16"]),
                      f"{n / median(times['bf16']):.1f} vs {n / median(times['raw']):.1f} faces/s")]
    cores = os.cpu_count() or 1
    if threads < cores:
        times = interleaved({"raw": lambda: plain.forward(tensor),
                             "all": lambda: _with_threads(cores, lambda: plain.forward(tensor), threads)}, rounds)
        figures.append(Figure(
            SECTION, f"{label}: stock forward, {threads} thread(s) vs {cores} threads (context: machine load)",
            paired_ratio(times["all"], times["raw"]),
            f"{n / median(times['raw']):.1f} vs {n / median(times['all']):.1f} faces/s"))
    return figures


def measure_dlib(faces, batch: int, rounds: int) -> tuple[list[Figure], dict]:
    emb = build_embedder("dlib", "cpu", False)
    chips = [emb.crop(img, face) for img, face in faces][:batch]
    tensor = emb.preprocess(chips)
    variants = {
        "pipeline": lambda: emb.embed_crops(chips, batch_size=batch),
        "raw": lambda: emb.forward(tensor),
        "one_by_one": lambda: [emb.forward(tensor[i:i + 1]) for i in range(len(chips))],
    }
    times = interleaved(variants, rounds)
    n = len(chips)
    rate = {k: n / median(v) for k, v in times.items()}
    figures = [
        _speedup(f"dlib (real weights), batch {n}: pipeline embed_crops vs raw forward (faces/s)", times, n, "raw",
                 "pipeline", goal_min=0.8),
        _speedup(f"dlib, batch {n}: batched descriptor call vs one chip per call (speed-up)", times, n,
                 "one_by_one", "raw"),
    ]
    return figures, {"batch": n, "faces_per_s": {k: round(v, 2) for k, v in rate.items()}}


def _speedup(title: str, times: dict[str, list[float]], n: int, base: str, variant: str, **goal) -> Figure:
    """``variant`` vs ``base`` on the same ``n`` crops: the median per-round speed-up, both rates for context."""
    rate = {k: n / median(times[k]) for k in (base, variant)}
    return Figure(SECTION, title, paired_ratio(times[base], times[variant]),
                  f"{rate[variant]:.1f} vs {rate[base]:.1f} faces/s", **goal)


def _bf16_forward(emb: Embedder, tensor: torch.Tensor) -> np.ndarray:
    model = emb.load()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(tensor).float().numpy()


def _with_threads(threads: int, fn, restore: int):
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(restore)


def run(photos: list[Path], device: str, batch: int, rounds: int, threads: int,
        models: tuple[str, ...] = ("facenet", "resnet50", "dlib")) -> tuple[list[Figure], dict]:
    faces = real_faces(photos, device)
    if len(faces) < 2:
        raise RuntimeError(f"MTCNN found faces in only {len(faces)} of {len(photos)} photos")
    figures: list[Figure] = []
    details: dict = {"photos": len(photos), "faces": len(faces)}
    for name in models:
        logger.info("embedding stage: %s", name)
        if name == "dlib":
            figs, det = measure_dlib(faces, batch, rounds)
        else:
            figs, det = measure_torch(name, faces, device, batch, rounds, threads)
        figures += figs
        details[name] = det
    return figures, details
