"""1:1 verification: are the largest faces of two photos the same person?"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gallery.calibration.thresholds import resolve_thresholds
from gallery.errors import GalleryError, InvalidInputError, NoFaceError
from gallery.manage.models import resolve_models
from gallery.results import display
from gallery.store import Gallery
from gallery.vectors import vector_problem
from indexer.images import ImageLoadError, load_image


@dataclass(frozen=True)
class VerifyAnswer:
    model: str
    same: bool
    similarity: float
    threshold: float
    threshold_source: str
    random_weights: bool = False

    def to_dict(self) -> dict:
        return {"model": self.model, "same": self.same, "similarity": round(self.similarity, 4),
                "threshold": self.threshold, "threshold_source": self.threshold_source,
                "random_weights": self.random_weights}


@dataclass(frozen=True)
class VerifyReport:
    image_a: str
    image_b: str
    box_a: tuple[float, float, float, float]
    box_b: tuple[float, float, float, float]
    answers: list[VerifyAnswer]

    def to_dict(self) -> dict:
        return {"image_a": self.image_a, "image_b": self.image_b, "box_a": list(self.box_a),
                "box_b": list(self.box_b), "answers": [a.to_dict() for a in self.answers]}


def _named(src) -> tuple[str, object]:
    """(label, source): a path, or an upload as ``(file name, bytes)``."""
    return src if isinstance(src, tuple) else (display(src), src)


def _largest_face(gallery: Gallery, src):
    name, source = _named(src)
    try:
        img = load_image(source, name=name)
    except ImageLoadError as exc:
        raise InvalidInputError(str(exc)) from exc
    faces = gallery.confident(gallery.detector.detect(img))
    if not faces:
        raise NoFaceError(f"{name}: no face detected")
    return img, max(faces, key=lambda f: f.area)


def verify(gallery: Gallery, image_a, image_b, *, models: Sequence[str] | None = None,
           threshold: float | None = None) -> VerifyReport:
    """Images are paths or uploads as ``(file name, bytes)``."""
    chosen, _ = resolve_models(gallery, models)
    thr = resolve_thresholds(gallery if gallery.exists else None, chosen, threshold)  # 1:1 needs no gallery
    img_a, face_a = _largest_face(gallery, image_a)
    img_b, face_b = _largest_face(gallery, image_b)
    answers = []
    for m in chosen:
        emb = gallery.embedder(m)
        vecs = emb.embed_crops([emb.crop(img_a, face_a), emb.crop(img_b, face_b)])
        problem = vector_problem(vecs, emb.dim)
        if problem is not None:  # a NaN similarity compares as "different" and would read as an answer
            raise GalleryError(f"the {m} embedding {problem}: no similarity can be computed; check the {m} weights")
        va, vb = vecs
        sim = float(np.dot(va, vb))
        t, src = thr[m]
        answers.append(VerifyAnswer(m, sim >= t, sim, t, src, emb.weights.random))
    return VerifyReport(_named(image_a)[0], _named(image_b)[0], face_a.box, face_b.box, answers)
