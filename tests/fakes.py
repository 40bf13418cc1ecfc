"""Small, fast stand-ins for the detector and embedders, for unit tests of the gallery's bookkeeping.

They follow the real interfaces (``detect``/``detect_batch``; ``crop``/``embed_crops``/``weights``), so the code
under test is the real gallery code. Real MTCNN and the real dlib embedder are exercised end to end elsewhere.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from indexer.detect import DetectedFace
from indexer.embedders.weights import WeightsInfo


class FakeDetector:
    """One face covering the middle of any image that is not (almost) uniform; none otherwise."""

    def __init__(self):
        self.calls = 0

    def detect(self, img: Image.Image) -> list[DetectedFace]:
        self.calls += 1
        arr = np.asarray(img.convert("L"), dtype=np.float32)
        if arr.std() < 2.0:
            return []
        w, h = img.size
        return [DetectedFace(box=(w * 0.1, h * 0.1, w * 0.9, h * 0.9), prob=0.99,
                             landmarks=((w * .35, h * .4), (w * .65, h * .4), (w * .5, h * .55),
                                        (w * .38, h * .7), (w * .62, h * .7)))]

    def detect_batch(self, imgs):
        return [self.detect(i) for i in imgs]


class FakeEmbedder:
    """Vector = normalised 4x4 RGB thumbnail of the crop (48-D): similar pictures give similar vectors."""

    dim = 48
    input_size = 16

    def __init__(self, name: str, sha: str = "f" * 64, random: bool = False):
        self.name = name
        self.weights = WeightsInfo(name=f"fake-{name}", source="test", path=None, sha256=sha, random=random)
        self.embedded = 0

    def crop(self, img, face):
        return img.crop(tuple(int(v) for v in face.box)).resize((self.input_size, self.input_size))

    def embed_crops(self, crops, batch_size: int = 32):
        self.embedded += len(crops)
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        v = np.stack([np.asarray(c.convert("RGB").resize((4, 4)), np.float32).ravel() - 127.5 for c in crops])
        v += 1e-3
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fake_factory(store: dict | None = None):
    store = {} if store is None else store

    def factory(name, **_kw):
        if name not in store:
            store[name] = FakeEmbedder(name)
        return store[name]

    return factory


def person_image(seed: int, size=(120, 140)) -> Image.Image:
    """A picture with a per-person colour scheme plus per-photo noise."""
    rng = np.random.default_rng(seed)
    base = np.zeros((size[1], size[0], 3), np.float32)
    person = seed // 100
    prng = np.random.default_rng(person)
    blocks = prng.uniform(0, 255, size=(4, 4, 3))
    base[:] = np.kron(blocks, np.ones((size[1] // 4 + 1, size[0] // 4 + 1, 1)))[: size[1], : size[0]]
    base += rng.normal(0, 8, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
