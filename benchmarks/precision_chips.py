"""Real dlib chips of LFW images, computed once and cached outside the project (for benchmarks/dlib_precision.py).

    python -m benchmarks.precision_chips --data-dir DATA   # every pairs.txt image + the calibration set, ~10 min

A chip is what the dlib embedder gets in the pipeline: MTCNN's largest face (the whole image when MTCNN finds
none, as the verification benchmark does), cut by the embedder's own ``crop`` (5-point shape predictor and
``get_face_chip``), 150x150 RGB uint8. Two sets:

- ``pairs``: every image of LFW View 2 ``pairs.txt`` (7701 images), on which the admission check evaluates;
- ``calibration``: images of LFW View 1 training people (``peopleDevTrain.txt``) who appear nowhere in
  ``pairs.txt``, the only chips the int8 quantiser is calibrated on. No person is in both sets.

Cached as ``<cache>/lfw_dlib_chips_<set>.npy`` (N, 150, 150, 3) plus a ``.json`` listing the images in order;
``<cache>`` is ``$FACEGALLERY_BENCH_CACHE``, else ``~/.cache/facegallery-bench``. A cache whose image list differs
from the one asked for is recomputed, never trusted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import default_data_dir

logger = logging.getLogger(__name__)

CHUNK = 32


def cache_dir() -> Path:
    return Path(os.environ.get("FACEGALLERY_BENCH_CACHE", "~/.cache/facegallery-bench")).expanduser()


def pairs_images(data_dir: Path) -> list[str]:
    from gallery.benchmark.data import read_pairs

    lfw = data_dir / "lfw"
    return read_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled").images


def calibration_images(data_dir: Path) -> list[str]:
    """Every image of the View 1 training people who have no image in pairs.txt (1118 images of 1053 people)."""
    lfw = data_dir / "lfw"
    excluded = {image.split("/")[0] for image in pairs_images(data_dir)}
    rows = [line.split() for line in (lfw / "peopleDevTrain.txt").read_text().splitlines()[1:] if line.strip()]
    return [f"{name}/{name}_{i:04d}.jpg" for name, count in rows if name not in excluded
            for i in range(1, int(count) + 1)]


def image_set(data_dir: Path, name: str) -> list[str]:
    return {"pairs": pairs_images, "calibration": calibration_images}[name](data_dir)


def load_chips(data_dir: Path, name: str, *, compute: bool = True) -> tuple[list[str], np.ndarray] | None:
    """(images, chips) of set ``name``, from the cache or computed now (None when absent and ``compute`` is off)."""
    images = image_set(data_dir, name)
    path = cache_dir() / f"lfw_dlib_chips_{name}.npy"
    index = path.with_suffix(".json")
    if path.is_file() and index.is_file() and json.loads(index.read_text()).get("images") == images:
        return images, np.load(path, mmap_mode="r")
    if not compute:
        return None
    compute_chips(data_dir / "lfw" / "lfw-deepfunneled", images, path)
    return images, np.load(path, mmap_mode="r")


def compute_chips(root: Path, images: list[str], path: Path) -> None:
    """Chips of ``images`` (relative to ``root``) written to ``path`` chunk by chunk, then its index."""
    from indexer.detect import Detector, DetectorConfig, whole_image_face
    from indexer.embedders.dlib_model import DlibEmbedder
    from indexer.images import load_image

    detector, embedder = Detector(DetectorConfig(device="cpu")), DlibEmbedder.create(engine="torch", device="cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), 150, 150, 3))
    fallbacks, started = 0, time.time()
    for start in range(0, len(images), CHUNK):
        imgs = [load_image(root / p) for p in images[start:start + CHUNK]]
        for i, (img, faces) in enumerate(zip(imgs, detector.detect_batch(imgs))):
            fallbacks += not faces
            face = faces[0] if faces else whole_image_face(img)
            out[start + i] = np.asarray(embedder.crop(img, face), dtype=np.uint8)
        if (start // CHUNK) % 20 == 0:
            logger.info("%s: %d / %d chips, %.0f s", path.name, start + len(imgs), len(images), time.time() - started)
    out.flush()
    del out
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps({"images": images, "fallbacks": fallbacks,
                                                     "crop": "MTCNN largest face, DlibEmbedder.crop"}))
    logger.info("%s: %d chips (%d whole-image fallbacks) in %.0f s", path, len(images), fallbacks,
                time.time() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding lfw/")
    parser.add_argument("--sets", nargs="+", default=["calibration", "pairs"], choices=["calibration", "pairs"])
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for name in args.sets:
        images, chips = load_chips(args.data_dir, name)
        print(f"{name}: {len(images)} chips in {cache_dir()}")


if __name__ == "__main__":
    main()
