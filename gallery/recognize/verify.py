"""1:1 verification: are the largest faces of two photos the same person?"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gallery.errors import InvalidInputError, NoFaceError
from gallery.manage.models import resolve_models
from gallery.results import display
from gallery.store import Gallery
from gallery.calibration.thresholds import resolve_thresholds
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


def _largest_face(gallery: Gallery, path):
    name = display(path)
    try:
        img = load_image(path, name=name)
    except ImageLoadError as exc:
        raise InvalidInputError(str(exc)) from exc
    faces = gallery.confident(gallery.detector.detect(img))
    if not faces:
        raise NoFaceError(f"{name}: no face detected")
    return img, max(faces, key=lambda f: f.area)


def verify(gallery: Gallery, image_a, image_b, *, models: Sequence[str] | None = None,
           threshold: float | None = None) -> VerifyReport:
    chosen, _ = resolve_models(gallery, models)
    thr = resolve_thresholds(gallery, chosen, threshold)
    img_a, face_a = _largest_face(gallery, image_a)
    img_b, face_b = _largest_face(gallery, image_b)
    answers = []
    for m in chosen:
        emb = gallery.embedder(m)
        va, vb = emb.embed_crops([emb.crop(img_a, face_a), emb.crop(img_b, face_b)])
        sim = float(np.dot(va, vb))
        t, src = thr[m]
        answers.append(VerifyAnswer(m, sim >= t, sim, t, src, emb.weights.random))
    return VerifyReport(display(image_a), display(image_b), face_a.box, face_b.box, answers)
