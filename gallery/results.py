"""The dataclasses the library returns for recognition, shared by identify, the heads and annotation.

They live apart from the code that computes them so that ``recognize``, ``heads`` and the web app depend on
these plain records instead of on one another. Every record has ``to_dict()`` for ``--json``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def display(path: os.PathLike | str) -> str:
    """A printable, storable form of a path (non-UTF-8 bytes become backslash escapes, never an exception)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Candidate:
    identity: str
    score: float

    def to_dict(self) -> dict:
        return {"identity": self.identity, "score": round(self.score, 4)}


@dataclass(frozen=True)
class HeadAnswer:
    identity: str
    probability: float

    def to_dict(self) -> dict:
        return {"identity": self.identity, "probability": round(self.probability, 4)}


@dataclass(frozen=True)
class ModelAnswer:
    identity: str | None
    status: str  # match | unknown | ambiguous | low_quality (too small or blurred to be named)
    score: float  # similarity to the reported identity, or to the best candidate when unknown
    threshold: float
    candidates: tuple[Candidate, ...]
    head: HeadAnswer | None = None
    random_weights: bool = False

    def to_dict(self) -> dict:
        d = {
            "identity": self.identity, "status": self.status, "score": round(self.score, 4),
            "threshold": self.threshold, "candidates": [c.to_dict() for c in self.candidates],
        }
        if self.head is not None:
            d["head"] = self.head.to_dict()
        if self.random_weights:
            d["random_weights"] = True
        return d


@dataclass(frozen=True)
class FaceResult:
    index: int
    box: tuple[float, float, float, float]
    det_prob: float
    models: dict[str, ModelAnswer]
    fallback: bool = False  # no face was found: the whole image was searched (identify --whole-image-fallback)
    quality: tuple[str, ...] = ()  # why the face is low quality (empty: fine)

    def to_dict(self) -> dict:
        return {
            "index": self.index, "box": [round(v, 1) for v in self.box], "det_prob": round(self.det_prob, 4),
            "fallback": self.fallback, "low_quality": list(self.quality),
            "models": {m: a.to_dict() for m, a in self.models.items()},
        }


@dataclass(frozen=True)
class ImageResult:
    path: str
    faces: list[FaceResult] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    error: str | None = None
    annotated: str | None = None

    def to_dict(self) -> dict:
        d = {"path": self.path, "width": self.width, "height": self.height,
             "faces": [f.to_dict() for f in self.faces]}
        if self.error is not None:
            d["error"] = self.error
        if self.annotated is not None:
            d["annotated"] = self.annotated
        return d


@dataclass(frozen=True)
class IdentifyReport:
    images: list[ImageResult]
    models: tuple[str, ...]
    thresholds: dict[str, float]
    threshold_sources: dict[str, str]
    aggregate: str = "max"
    random_weights: tuple[str, ...] = ()
    # model -> which threshold and why (gallery size, target FPIR, calibrated or given): ThresholdChoice.to_dict()
    threshold_reasons: dict[str, dict] = field(default_factory=dict)
    target_fpir: float | None = None

    def to_dict(self) -> dict:
        return {
            "images": [i.to_dict() for i in self.images], "models": list(self.models),
            "thresholds": dict(self.thresholds), "threshold_sources": dict(self.threshold_sources),
            "threshold_reasons": dict(self.threshold_reasons), "target_fpir": self.target_fpir,
            "aggregate": self.aggregate, "random_weights": list(self.random_weights),
        }
