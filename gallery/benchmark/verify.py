"""LFW-style 1:1 verification: 10-fold accuracy, ROC AUC and TAR at fixed FAR from a pairs file.

Each distinct image is embedded once (its largest face; the whole image when MTCNN finds none, counted and
reported). The similarity of a pair is the cosine of its two unit vectors, computed as ``facegallery verify``
computes it (``np.dot`` of two float32 vectors), so a threshold calibrated here decides the same pair the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gallery.benchmark.data import Pairs
from gallery.benchmark.embed import embed_images
from gallery.calibration import metrics as bm

FARS = (1e-2, 1e-3)


@dataclass(frozen=True)
class VerifyRow:
    model: str
    accuracy: float
    accuracy_std: float
    accuracy_stderr: float
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    auc: float
    tar_at_far: dict[float, float]
    threshold_at_far: dict[float, float]
    pairs: int
    random_weights: bool = False
    genuine: np.ndarray = field(default=None, repr=False, compare=False)
    impostor: np.ndarray = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "accuracy": round(self.accuracy, 5), "accuracy_std": round(self.accuracy_std, 5),
            "accuracy_stderr": round(self.accuracy_stderr, 5),
            "fold_accuracies": [round(a, 5) for a in self.fold_accuracies],
            "fold_thresholds": [round(t, 5) for t in self.fold_thresholds], "auc": round(self.auc, 5),
            "tar_at_far": {f"{k:g}": round(v, 5) for k, v in self.tar_at_far.items()},
            "threshold_at_far": {f"{k:g}": round(v, 5) for k, v in self.threshold_at_far.items()},
            "pairs": self.pairs, "weights": "random weights" if self.random_weights else "pretrained",
        }


@dataclass(frozen=True)
class VerifyResult:
    rows: list[VerifyRow]
    images: int
    fallback_images: int
    unreadable: dict[str, str]
    pairs_used: int
    pairs_total: int
    folds: int

    def to_dict(self) -> dict:
        return {"rows": [r.to_dict() for r in self.rows], "images": self.images,
                "fallback_images": self.fallback_images, "unreadable": dict(self.unreadable),
                "pairs_used": self.pairs_used, "pairs_total": self.pairs_total, "folds": self.folds}


def run_verification(detector, embedders: dict, pairs: Pairs, root: Path, *, batch_size: int = 32,
                     progress: bool = True) -> VerifyResult:
    images = pairs.images
    emb = embed_images(detector, embedders, [root / p for p in images], batch_size=batch_size, progress=progress,
                       desc="verify: detect+embed")
    where = {p: i for i, p in enumerate(images)}
    a = np.array([where[p] for p in pairs.left])
    b = np.array([where[p] for p in pairs.right])
    rows = []
    keep = None
    for m, vecs in emb.vectors.items():
        scores = np.array([np.dot(vecs[i], vecs[j]) for i, j in zip(a, b)], np.float64)  # float32 products
        keep = np.isfinite(scores)  # pairs with an unreadable image are left out
        rows.append(_row(m, scores[keep], pairs.same[keep], pairs.fold[keep],
                         bool(embedders[m].weights.random)))
    used = int(keep.sum()) if keep is not None else 0
    return VerifyResult(rows, len(images), emb.fallbacks, emb.failed, used, len(pairs), int(len(set(pairs.fold))))


def _row(model: str, scores: np.ndarray, same: np.ndarray, fold: np.ndarray, random: bool) -> VerifyRow:
    folds = bm.kfold_accuracy(scores, same, fold)
    gen, imp = scores[same], scores[~same]
    tar, thr = {}, {}
    for far in FARS:
        tar[far], thr[far] = bm.tar_at_far(gen, imp, far)
    return VerifyRow(model, folds.mean, folds.std, folds.stderr, folds.accuracies, folds.thresholds,
                     bm.auc(gen, imp), tar, thr, len(scores), random, gen, imp)
