"""Every vector an open-set experiment needs, computed once per photo and cached on disk.

For each photo: the face enrollment would pick (largest face at ``Settings.min_face_prob``, else the most probable
one MTCNN kept, else the whole image), the embedder's chip, and the descriptors of

- the chip (what enroll stores as copy 0 and identify computes for a query),
- the mirrored chip (flip test-time augmentation),
- ``augment`` augmented copies, made exactly as enrollment makes them (:func:`gallery.enroll.enroll.face_copies`),

plus what a quality rule can look at: detection probability, face size in pixels, blur of the face. Galleries
of any size are then built in memory from these rows, instead of running the enroll path thousands of times.

The cache file is keyed by the embedder's weights, the detector settings, the augmentation and the photo list, so a
stale file is never read.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from gallery.enroll.enroll import face_copies
from gallery.recognize.quality import face_blur
from indexer.detect import DetectedFace, whole_image_face
from indexer.images import ImageLoadError, file_sha256, load_image

log = logging.getLogger(__name__)

CACHE_VERSION = 2
CHUNK = 32


@dataclass(frozen=True)
class PhotoVectors:
    """Row ``i`` describes ``keys[i]``; unreadable photos have NaN vectors and ``ok`` false."""

    keys: list[str]
    vectors: np.ndarray  # (n, d) descriptor of the chip
    flipped: np.ndarray  # (n, d) descriptor of the mirrored chip
    augmented: np.ndarray  # (n, K, d) descriptors of the augmented copies (K may be 0)
    det_prob: np.ndarray  # (n,) detection probability, 0 for a whole-image fallback
    face_px: np.ndarray  # (n,) shorter side of the face box in pixels
    blur: np.ndarray  # (n,) gallery.recognize.quality.face_blur of the face box (0 sharp .. 1 blurred)
    fallback: np.ndarray  # (n,) bool: no face found, the whole image was embedded
    ok: np.ndarray  # (n,) bool: the photo could be read

    def row(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def select(self, keys: Sequence[str]) -> PhotoVectors:
        where = self.row()
        idx = np.array([where[k] for k in keys], dtype=np.int64)
        return PhotoVectors([self.keys[i] for i in idx], *(getattr(self, f)[idx] for f in _ARRAYS))


_ARRAYS = ("vectors", "flipped", "augmented", "det_prob", "face_px", "blur", "fallback", "ok")


def enroll_face(faces: list[DetectedFace], img: Image.Image, min_prob: float) -> DetectedFace:
    """The face enrollment keeps: largest confident, else most probable, else the whole image."""
    sure = [f for f in faces if f.prob >= min_prob]
    if sure:
        return sure[0]
    if faces:
        return max(faces, key=lambda f: f.prob)
    return whole_image_face(img)


def cache_key(embedder, detector, keys: Sequence[str], augment: int, seed: int, min_prob: float,
              transform: str = "") -> str:
    cfg = getattr(detector, "config", None)
    fields = {"v": CACHE_VERSION, "model": embedder.name, "weights": embedder.weights.sha256,
              "detector": repr(cfg), "augment": augment, "seed": seed, "min_prob": min_prob,
              "keys": hashlib.sha256("\n".join(keys).encode()).hexdigest()}
    if transform:
        fields["transform"] = transform
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def photo_vectors(detector, embedder, root: Path, keys: Sequence[str], *, augment: int = 0, seed: int = 0,
                  min_prob: float = 0.90, cache_dir: Path | None = None, batch_size: int = 64,
                  progress: bool = True, transform: Callable[[Image.Image], Image.Image] | None = None,
                  transform_name: str = "") -> PhotoVectors:
    """:class:`PhotoVectors` for ``root / key`` of each key, read from ``cache_dir`` when computed before.
    ``transform`` (named ``transform_name`` in the cache key) degrades each image before detection."""
    keys = list(keys)
    path = None
    if cache_dir is not None:
        key = cache_key(embedder, detector, keys, augment, seed, min_prob, transform_name)
        path = Path(cache_dir) / f"{embedder.name}-{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                log.info("photo vectors from %s", path)
                return PhotoVectors(keys, *(z[f] for f in _ARRAYS))
    out = _compute(detector, embedder, root, keys, augment, seed, min_prob, batch_size, progress, transform)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{f: getattr(out, f) for f in _ARRAYS})
        tmp.replace(path)
    return out


def _compute(detector, embedder, root, keys, augment, seed, min_prob, batch_size, progress,
             transform=None) -> PhotoVectors:
    n, d = len(keys), embedder.dim
    arr = {"vectors": np.full((n, d), np.nan, np.float32), "flipped": np.full((n, d), np.nan, np.float32),
           "augmented": np.full((n, augment, d), np.nan, np.float32), "det_prob": np.zeros(n),
           "face_px": np.zeros(n), "blur": np.zeros(n), "fallback": np.zeros(n, bool), "ok": np.zeros(n, bool)}
    bar = tqdm(total=n, unit="photo", desc="photo vectors", disable=None if progress else True)
    try:
        for start in range(0, n, CHUNK):
            idx, imgs, shas = [], [], []
            for i in range(start, min(n, start + CHUNK)):
                try:
                    img = load_image(root / keys[i], name=keys[i])
                    imgs.append(transform(img) if transform is not None else img)
                    shas.append(file_sha256(root / keys[i]))
                    idx.append(i)
                except (ImageLoadError, OSError) as exc:
                    log.warning("%s: %s", keys[i], exc)
            found = detector.detect_batch(imgs) if imgs else []
            chips, rows = [], []
            for i, img, sha, faces in zip(idx, imgs, shas, found):
                face = enroll_face(faces, img, min_prob)
                copies = face_copies(embedder, img, face, augment, seed, sha)
                chips += [copies[0], ImageOps.mirror(copies[0])] + copies[1:]
                rows.append(i)
                _quality(arr, i, face, img)
            if chips:
                vecs = embedder.embed_crops(chips, batch_size=batch_size).reshape(len(rows), 2 + augment, d)
                arr["vectors"][rows], arr["flipped"][rows], arr["augmented"][rows] = \
                    vecs[:, 0], vecs[:, 1], vecs[:, 2:]
            bar.update(min(n, start + CHUNK) - start)
    finally:
        bar.close()
    return PhotoVectors(keys, *(arr[f] for f in _ARRAYS))


def _quality(arr, i, face, img) -> None:
    arr["det_prob"][i] = 0.0 if face.fallback else face.prob
    arr["face_px"][i] = min(face.width, face.height)
    arr["blur"][i] = face_blur(img, face.box)
    arr["fallback"][i], arr["ok"][i] = face.fallback, True
