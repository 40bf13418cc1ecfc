"""Fitting the gallery-size threshold model (:class:`gallery.calibration.thresholds.SizeModel`) on a training split.

Points come from two kinds of galleries built on the split's people (the stranger pool of
:func:`gallery.benchmark.open_set.open_set_split` is never enrolled):

- the open-set protocol's own galleries at ``SIZES`` people (4 photos per probed person, distractors with 1-4);
- galleries of exactly ``m`` photos per person for m in ``PHOTOS`` at ``PHOTO_SIZES`` people, which pin the
  photos-per-person term.

For each gallery shape the strangers' top-1 scores are pooled over the seeds, and the threshold at each FPIR of
``TARGETS`` (:func:`gallery.calibration.metrics.threshold_at_far`) is one point. The model is the least-squares
plane through the points in (ln N, ln min(m, cap), ln FPIR).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gallery.benchmark.open_set import (
    OpenSetSplit,
    Scoring,
    open_set_split,
    score_split,
    shuffled_photos,
    stranger_maxima,
)
from gallery.calibration import metrics as bm
from gallery.calibration.thresholds import SizeModel

SIZES = (10, 20, 50, 100, 200, 500, 1000, 2000)
PHOTOS = (1, 2, 4, 8)
PHOTO_SIZES = (10, 30, 60)
TARGETS = (0.005, 0.01, 0.02, 0.05)
PHOTOS_CAP = 8.0


@dataclass(frozen=True)
class FitPoint:
    people: int
    photos_per_person: float
    target_fpir: float
    threshold: float
    strangers: int

    def to_dict(self) -> dict:
        return {"people": self.people, "photos_per_person": round(self.photos_per_person, 3),
                "target_fpir": self.target_fpir, "threshold": round(self.threshold, 5), "strangers": self.strangers}


def fixed_photos_split(people: dict[str, list[str]], size: int, photos: int, seed: int, **split_options
                       ) -> OpenSetSplit | None:
    """``size`` people (outside the stranger pool) enrolled with exactly ``photos`` photos each; None when the split
    has too few people with that many photos."""
    base = open_set_split(people, 1, seed, **split_options)
    pool = {p for p, _ in base.strangers}
    cand = [p for p in sorted(people) if p not in pool and len(people[p]) >= photos]
    if len(cand) < size:
        return None
    order = np.random.default_rng([seed, photos, size]).permutation(len(cand))
    chosen = [cand[i] for i in order[:size]]
    enrolled = {p: sorted(shuffled_photos(people[p], seed, p)[:photos]) for p in chosen}
    return OpenSetSplit(size, seed, enrolled, [], base.strangers, 0)


def fit_points(people: dict[str, list[str]], pv, scoring: Scoring, seeds=range(5), sizes=SIZES, photos=PHOTOS,
               photo_sizes=PHOTO_SIZES, targets=TARGETS) -> list[FitPoint]:
    points = []
    for size in sizes:
        if size > len(people) * 0.6:
            continue
        strangers, ppp = stranger_maxima(people, pv, scoring, size, seeds)
        points += [FitPoint(size, ppp, f, bm.threshold_at_far(strangers, f), len(strangers)) for f in targets]
    for m in photos:
        for size in photo_sizes:
            splits = [fixed_photos_split(people, size, m, seed) for seed in seeds]
            if any(s is None for s in splits):
                continue
            strangers = np.concatenate([score_split(s, pv, scoring).stranger for s in splits])
            points += [FitPoint(size, float(m), f, bm.threshold_at_far(strangers, f), len(strangers))
                       for f in targets]
    return points


def fit_size_model(points: list[FitPoint], embedder: str, aggregate: str, flip: bool,
                   photos_cap: float = PHOTOS_CAP) -> tuple[SizeModel, float]:
    """(the least-squares model, its RMS residual)."""
    x = np.array([[1.0, math.log(p.people), math.log(min(max(p.photos_per_person, 1.0), photos_cap)),
                   -math.log(p.target_fpir)] for p in points])
    y = np.array([p.threshold for p in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    rms = float(np.sqrt(np.mean((x @ coef - y) ** 2)))
    a, b, c, d = (float(v) for v in coef)
    return SizeModel(embedder, aggregate, a, b, c, d, photos_cap, flip), rms
