"""One-GPU benchmark, under 8 minutes: stock loop vs batched MTCNN vs bf16 embedding vs the pipeline end to end.

    python -m benchmarks.gpu --data-dir /path/to/data --out gpu_benchmark.md      # on a CUDA machine
    python -m benchmarks.gpu --device cpu --quick --data-dir ... --out gpu_smoke.md  # smoke test (tests run this)

Steps, all on real LFW photos (250x250), decoded once up front except where decoding is part of the step:

1. the stock per-photo loop (``mtcnn(img)`` then facenet at batch 1, K=0) on ``--stock-photos`` photos;
2. batched MTCNN (``Detector.detect_batch``) at two batch sizes;
3. the embedding stage: facenet raw forward and ``embed_crops`` at a large batch, fp32 vs ``fast=True``
   (channels_last + bfloat16 autocast on CUDA), and the fast mode's cosine to fp32 on the same real crops;
4. the pipeline end to end (``enroll_jobs`` with ``fast=True``: decode, detect, crop, embed, SQLite, FAISS) at
   K=0 on ``--photos`` photos and at K=10 on a tenth of them.

Goals from the issue: >= 1,000 photos/s end to end with facenet, >= 30,000 faces/s for the embedding stage
(reference on an H200: stock loop 23.6 photos/s, batched MTCNN 233 photos/s). Weights: real ones when found
(``--weights-dir`` or the library cache), else facenet's seeded random init, which is as fast but meaningless
for accuracy; the table says which.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Figure, command_line, default_data_dir, lfw_photos, loadavg, machine, median
from benchmarks.embed_stage import build_embedder, fidelity
from benchmarks.enroll_e2e import PipelineRunner, StockLoop
from benchmarks.report import markdown_block, text_table
from indexer.detect import Detector, DetectorConfig
from indexer.images import load_image

logger = logging.getLogger(__name__)

SECTION = "gpu"


@dataclass(frozen=True)
class Sizes:
    photos: int = 2000
    stock_photos: int = 200
    detect_batches: tuple[int, ...] = (32, 128)
    embed_batch: int = 512
    embed_rounds: int = 5


FULL = Sizes()
QUICK = Sizes(photos=6, stock_photos=2, detect_batches=(2, 4), embed_batch=4, embed_rounds=1)


def _timed(fn) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def stock_and_detect(photos: list[Path], images, device: str, sizes: Sizes) -> tuple[list[Figure], float]:
    stock = StockLoop(device)
    stock.run(photos[:1], 0)  # warm
    stock_rate = sizes.stock_photos / _timed(lambda: stock.run(photos[:sizes.stock_photos], 0))
    figures = [Figure(SECTION, "stock loop: mtcnn(img) + facenet batch 1, K=0 (photos/s; H200 ref 23.6)",
                      stock_rate, f"{sizes.stock_photos} photos", unit="photos/s")]
    for batch in sizes.detect_batches:
        detector = Detector(DetectorConfig(device=device, batch_size=batch))
        detector.detect_batch(images[:batch])  # warm
        rate = len(images) / _timed(lambda: detector.detect_batch(images))
        figures.append(Figure(SECTION, f"batched MTCNN, batch {batch} vs stock loop (photos/s; H200 ref 233)",
                              rate / stock_rate, f"{rate:.1f} vs {stock_rate:.1f} photos/s"))
    return figures, stock_rate


def embedding(images, device: str, sizes: Sizes) -> list[Figure]:
    faces = [(img, found[0]) for img, found in zip(images, Detector(DetectorConfig(device=device)).detect_batch(
        images[:sizes.embed_batch])) if found]
    plain, fast = build_embedder("facenet", device, False), build_embedder("facenet", device, True)
    crops = [plain.crop(img, face) for img, face in faces]
    crops = (crops * (sizes.embed_batch // max(1, len(crops)) + 1))[:sizes.embed_batch]
    tensor = plain.preprocess(crops)
    rates = {}
    for name, fn in (("raw fp32", lambda: plain.forward(tensor)), ("raw fast", lambda: fast.forward(tensor)),
                     ("embed_crops fast", lambda: fast.embed_crops(crops, batch_size=sizes.embed_batch))):
        fn()  # warm (cuDNN autotuning, lazy init)
        rates[name] = len(crops) / median([_timed(fn) for _ in range(sizes.embed_rounds)])
    fid = fidelity(plain, fast, plain.preprocess([plain.crop(img, face) for img, face in faces]))
    label = f"facenet ({plain.weights.name}), batch {len(crops)}"
    return [
        Figure(SECTION, f"{label}: raw forward, fast (bf16 on CUDA) (faces/s)", rates["raw fast"],
               f"fp32 {rates['raw fp32']:.0f} faces/s", goal_min=30000, unit="faces/s"),
        Figure(SECTION, f"{label}: embed_crops from PIL crops, fast (faces/s)", rates["embed_crops fast"],
               "includes uint8 stacking, host-to-device copy, L2", goal_min=30000, unit="faces/s"),
        Figure(SECTION, f"{label}: fast vs fp32 raw forward (speed-up)", rates["raw fast"] / rates["raw fp32"],
               f"{rates['raw fast']:.0f} vs {rates['raw fp32']:.0f} faces/s"),
        Figure(SECTION, f"{label}: fast vs fp32 min cosine on {len(faces)} real crops", fid.min_cosine,
               f"max relative error {fid.max_rel_error:.1e}; different faces' distance {fid.face_spread:.1e}",
               goal_min=0.999, unit="cosine"),
    ]


def end_to_end(photos: list[Path], device: str, stock_rate: float) -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, subset in ((0, photos), (10, photos[: max(4, len(photos) // 10)])):
            runner = PipelineRunner(Path(tmp) / f"k{k}", device, fast=True)
            runner.run(subset[:2], k)  # warm (first chunk shapes); those two are then unchanged and skipped
            rest = subset[2:]
            rate = len(rest) / _timed(lambda: runner.run(rest, k))
            runner.close()
            figures.append(Figure(SECTION, f"pipeline end to end --fast, K={k}, {len(rest)} photos (photos/s)", rate,
                                  f"{rate / stock_rate:.1f}x the stock loop (K=0)",
                                  goal_min=1000 if k == 0 else None, unit="photos/s"))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding lfw/")
    parser.add_argument("--out", type=Path, default=Path("gpu_benchmark.md"), help="markdown table written here")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    sizes = QUICK if args.quick else FULL
    started = time.time()
    photos = lfw_photos(args.data_dir, sizes.photos, per_person=1)
    images = [load_image(p) for p in photos]
    figures, stock_rate = stock_and_detect(photos, images, args.device, sizes)
    figures += embedding(images, args.device, sizes)
    figures += end_to_end(photos, args.device, stock_rate)
    header = {**machine(), "device": args.device, "load average": loadavg(),
              "command": command_line("benchmarks.gpu", argv if argv is not None else sys.argv[1:]),
              "duration": f"{(time.time() - started) / 60:.1f} min", "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    print(text_table(figures))
    args.out.write_text("# GPU benchmark (benchmarks/gpu.py)\n\n" + markdown_block(figures, header, {}) + "\n")


if __name__ == "__main__":
    main()
