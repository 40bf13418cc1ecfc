"""The admission check of a reduced-precision fast path: LFW verification with fp32 vs candidate descriptors.

Both descriptor sets are of the same chips (one row per image, in the same order); the LFW protocol is the one
of :mod:`gallery.benchmark.verify`: a pair's score is the ``np.dot`` of its two float32 unit vectors, and the
accuracy is the 10-fold one of :func:`gallery.calibration.metrics.kfold_accuracy` (each fold's threshold chosen on
the other nine). The candidate is admitted when its accuracy is within
:data:`indexer.embedders.precision.TOLERANCE_POINTS` of fp32's. The min and mean cosine between the two
descriptors of each chip are reported with it: they say how far the numbers moved, the accuracy says whether it
mattered. Issue 12 asks for the full ``pairs.txt`` (6000 pairs); a subset is for tests only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gallery.benchmark.data import Pairs
from gallery.calibration import metrics
from indexer.embedders.base import l2_normalize
from indexer.embedders.precision import TOLERANCE_POINTS


@dataclass(frozen=True)
class PrecisionCheck:
    """LFW 10-fold accuracy (percent) of fp32 and of the candidate on the same pairs, and how close they are.

    ``changed``: pairs whose same/different decision differs between the two at fp32's own fold thresholds. The
    10-fold protocol re-fits each fold's threshold on the other nine, so a candidate's accuracy can move by a few
    pairs from the re-fit alone; ``changed`` separates that from pairs the candidate really scores differently.
    """

    accuracy_fp32: float
    accuracy: float
    min_cosine: float
    mean_cosine: float
    pairs: int
    changed: int
    tolerance_points: float = TOLERANCE_POINTS

    @property
    def delta_points(self) -> float:
        return self.accuracy - self.accuracy_fp32

    @property
    def admitted(self) -> bool:
        return bool(abs(self.delta_points) <= self.tolerance_points + 1e-9)  # percent of 6000: exact enough

    def to_dict(self) -> dict:
        return {"accuracy_fp32": round(self.accuracy_fp32, 4), "accuracy": round(self.accuracy, 4),
                "delta_points": round(self.delta_points, 4), "tolerance_points": self.tolerance_points,
                "min_cosine": round(self.min_cosine, 6), "mean_cosine": round(self.mean_cosine, 6),
                "pairs": self.pairs, "changed_at_fp32_thresholds": self.changed, "admitted": self.admitted}


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per-row cosine of two descriptor sets (float64)."""
    a = l2_normalize(reference).astype(np.float64)
    b = l2_normalize(candidate).astype(np.float64)
    return np.sum(a * b, axis=1)


def pair_indices(pairs: Pairs, images: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers in ``images`` of each pair's left and right image."""
    where = {image: i for i, image in enumerate(images)}
    return np.array([where[p] for p in pairs.left]), np.array([where[p] for p in pairs.right])


def pair_scores(vectors: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine of each pair as ``facegallery verify`` computes it: float32 dot products of unit vectors."""
    unit = l2_normalize(vectors)
    return np.einsum("ij,ij->i", unit[left], unit[right]).astype(metrics.SCORE_DTYPE)


def admission_check(reference: np.ndarray, candidate: np.ndarray, pairs: Pairs, images: list[str], *,
                    tolerance_points: float = TOLERANCE_POINTS) -> PrecisionCheck:
    """Compare fp32 ``reference`` and ``candidate`` descriptors (rows = ``images``) on ``pairs``."""
    if reference.shape != candidate.shape or len(reference) != len(images):
        raise ValueError(f"descriptor sets {reference.shape} and {candidate.shape} for {len(images)} images")
    left, right = pair_indices(pairs, images)
    ref_scores, scores = pair_scores(reference, left, right), pair_scores(candidate, left, right)
    ref = metrics.kfold_accuracy(ref_scores, pairs.same, pairs.fold)
    got = metrics.kfold_accuracy(scores, pairs.same, pairs.fold)
    # kfold_accuracy visits the folds in np.unique order: fold f's threshold is thresholds[rank of f]
    threshold = np.asarray(ref.thresholds)[np.searchsorted(np.unique(pairs.fold), pairs.fold)]
    changed = int(np.sum((ref_scores.astype(np.float64) >= threshold) != (scores.astype(np.float64) >= threshold)))
    cos = cosines(reference, candidate)
    return PrecisionCheck(100.0 * ref.mean, 100.0 * got.mean, float(cos.min()), float(cos.mean()), len(pairs),
                          changed, tolerance_points)
