"""Enrollment end to end on real photos: the gallery pipeline vs the stock tutorial loop, and peak memory.

The stock loop is what a facenet-pytorch tutorial does, one photo at a time: decode, ``mtcnn(img)`` (the default
``MTCNN(image_size=160, margin=0)``, largest face), the same K augmented copies of that crop as the pipeline
makes, then the model at batch 1 for every crop. It keeps its vectors in a list: no database, no index, so it
is flattered, not handicapped.

The pipeline is ``gallery.enroll.enroll_jobs`` into a fresh gallery: hashing, decoding, batched detection, crops
and augmentation in a background thread, batched embedding, one transaction per chunk, FAISS update.

Load on a shared machine drifts, so the photos are cut into segments and each segment is run by every variant
in turn (the stock loop on its first quarter); the ratio is the median of the per-segment ratios.

Peak memory: ``python -m benchmarks.enroll_e2e --rss N`` enrolls N photos in a fresh process and prints, as
JSON, its RSS once the models are loaded and the peak RSS of the enrollment itself (the kernel's high-water mark
VmHWM, reset after loading; ``ru_maxrss`` since start where that reset is not allowed). :func:`peak_rss` runs it
as a subprocess.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import Figure, lfw_photos, median, set_torch_threads
from benchmarks.embed_stage import build_embedder
from gallery.config import Settings
from gallery.enroll.enroll import enroll_jobs
from gallery.enroll.scan import PhotoJob
from gallery.store import Gallery
from indexer.augment import aug_seed, augment
from indexer.detect import Detector, DetectorConfig

logger = logging.getLogger(__name__)

SECTION = "enrollment"
MODEL = "facenet"


class StockLoop:
    """The per-photo tutorial loop (see module docstring)."""

    def __init__(self, device: str) -> None:
        from facenet_pytorch import MTCNN

        # post_process=False keeps 0..255 pixels so the crop can be augmented as an image; the standardisation
        # post_process would apply, (x - 127.5) / 128, is applied below instead.
        self.mtcnn = MTCNN(image_size=160, margin=0, post_process=False, device=device)
        self.model = build_embedder(MODEL, device, fast=False).load()
        self.device = device

    def run(self, photos: list[Path], k: int, seed: int = 0) -> list[np.ndarray]:
        vectors = []
        for path in photos:
            img = Image.open(path).convert("RGB")
            face = self.mtcnn(img)
            if face is None:
                continue
            crop = Image.fromarray(face.permute(1, 2, 0).clamp(0, 255).byte().numpy())
            for copy in [crop] + augment(crop, k, aug_seed(seed, str(path))):
                x = (torch.from_numpy(np.array(copy)).permute(2, 0, 1).float() - 127.5) / 128.0
                with torch.no_grad():
                    vectors.append(self.model(x.unsqueeze(0).to(self.device)).cpu().numpy())
        return vectors


class PipelineRunner:
    """Enroll into one gallery per variant, reusing one detector and embedder so models load once."""

    def __init__(self, home: Path, device: str, fast: bool) -> None:
        self.detector = Detector(DetectorConfig(min_prob=0.7, device=device))
        self.embedder = build_embedder(MODEL, device, fast=fast)
        settings = Settings(home=home, device=device, progress=False, fast=fast, lock_timeout_s=5)
        self.gallery = Gallery(settings, detector=self.detector, embedder_factory=lambda name, **kw: self.embedder)

    def run(self, photos: list[Path], k: int) -> int:
        jobs = [PhotoJob(person=p.parent.name, key=str(p), source=p) for p in photos]
        report = enroll_jobs(self.gallery, jobs, models=[MODEL], augment=k)
        return len(report.enrolled)

    def close(self) -> None:
        self.gallery.close()


def compare(photos: list[Path], warm: list[Path], device: str, k: int, segments: int,
            stock_fraction: float = 0.25) -> tuple[list[Figure], dict]:
    """Stock loop vs pipeline (plain and ``fast``), segment by segment; ``warm`` photos are enrolled first."""
    parts = [list(p) for p in np.array_split(np.array(photos, dtype=object), segments)]
    seconds: dict[str, list[float]] = {"stock": [], "plain": [], "fast": []}
    counts = dict.fromkeys(seconds, 0)
    with tempfile.TemporaryDirectory() as tmp:
        stock = StockLoop(device)
        runners = {"plain": PipelineRunner(Path(tmp) / "plain", device, fast=False),
                   "fast": PipelineRunner(Path(tmp) / "fast", device, fast=True)}
        stock.run(warm[:1], k)  # model loading and first-shape setup are not what is measured
        for runner in runners.values():
            runner.run(warm, k)
        for part in parts:
            stock_part = part[: max(1, round(len(part) * stock_fraction))]
            t0 = time.perf_counter()
            stock.run(stock_part, k)
            seconds["stock"].append((time.perf_counter() - t0) / len(stock_part))
            counts["stock"] += len(stock_part)
            for name, runner in runners.items():
                t0 = time.perf_counter()
                runner.run(part, k)
                seconds[name].append((time.perf_counter() - t0) / len(part))
                counts[name] += len(part)
            logger.info("segment: %s s/photo", {n: round(v[-1], 3) for n, v in seconds.items()})
        for runner in runners.values():
            runner.close()
    rate = {n: 1.0 / median(v) for n, v in seconds.items()}
    ratio = {n: median([s / p for s, p in zip(seconds["stock"], seconds[n])]) for n in ("plain", "fast")}
    label = f"{len(photos)} LFW photos, K={k}, {MODEL}"
    figures = [
        Figure(SECTION, f"{label}: pipeline --fast vs stock tutorial loop (photos/s)", ratio["fast"],
               f"{rate['fast']:.2f} vs {rate['stock']:.2f} photos/s", goal_min=5.0),
        Figure(SECTION, f"{label}: pipeline (plain) vs stock tutorial loop (photos/s)", ratio["plain"],
               f"{rate['plain']:.2f} vs {rate['stock']:.2f} photos/s", goal_min=5.0),
    ]
    return figures, {"photos_per_s": {n: round(v, 3) for n, v in rate.items()}, "photos_timed": counts,
                     "segments": segments, "augment": k}


def peak_rss(data_dir: Path, counts: list[int], k: int, device: str, threads: int, fast: bool = True) -> tuple[
        list[Figure], dict]:
    """Peak RSS of a fresh process enrolling each of ``counts`` photos (one subprocess each)."""
    results = []
    for n in counts:
        cmd = [sys.executable, "-m", "benchmarks.enroll_e2e", "--rss", str(n), "--augment", str(k), "--device",
               device, "--threads", str(threads), "--data-dir", str(data_dir)] + (["--fast"] if fast else [])
        logger.info("memory run: %s", " ".join(cmd[1:]))
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = results[0], results[-1]
    figure = Figure(
        SECTION, f"peak RSS, {large['photos']} vs {small['photos']} photos (K={k}, {MODEL}, one process each)",
        large["peak_rss_mb"] / small["peak_rss_mb"],
        f"{large['peak_rss_mb']:.0f} vs {small['peak_rss_mb']:.0f} MB peak while enrolling; RSS after loading "
        f"the models {large['ready_rss_mb']:.0f} / {small['ready_rss_mb']:.0f} MB; {large['photos_per_s']:.2f} "
        f"photos/s",
        goal_max=1.1)
    return [figure], {"runs": results}


def _rss_main(args: argparse.Namespace) -> None:
    set_torch_threads(args.threads)
    photos = lfw_photos(args.data_dir, args.rss + 2)
    photos, warm = photos[:-2], photos[-2:]
    with tempfile.TemporaryDirectory() as tmp:
        runner = PipelineRunner(Path(tmp), args.device, fast=args.fast)
        runner.run(warm, args.augment)  # models loaded, first shapes set up
        ready = _proc_status_mb("VmRSS")
        reset = _reset_peak()
        t0 = time.perf_counter()
        enrolled = runner.run(photos, args.augment)
        elapsed = time.perf_counter() - t0
        runner.close()
    # The peak of the enrollment itself when the kernel lets us reset the high-water mark, else since start.
    peak = _proc_status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"photos": len(photos), "enrolled": enrolled, "augment": args.augment,
                      "ready_rss_mb": round(ready, 1), "peak_rss_mb": round(peak, 1),
                      "photos_per_s": round(len(photos) / elapsed, 3)}))


def _proc_status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB; NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so it measures what follows; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="peak-RSS run of one enrollment (used by benchmarks.run)")
    parser.add_argument("--rss", type=int, required=True, help="number of LFW photos to enroll")
    parser.add_argument("--augment", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--data-dir", type=Path, required=True)
    logging.basicConfig(level=logging.WARNING)
    _rss_main(parser.parse_args(argv))


if __name__ == "__main__":
    main()
