"""``benchmark --protocol open-set``: the open-set sweep (:mod:`gallery.benchmark.open_set`) on a dataset folder.

Every photo of the chosen people is detected and embedded once (chip and mirrored chip); galleries of each size and
seed are then built in memory and scored the way identify scores. Three thresholds are compared per gallery:

- ``default``: what identify uses when nothing is set, the gallery-size model
  (:class:`gallery.calibration.thresholds.SizeModel`) at the target FPIR, or the fixed default for an embedder
  without one;
- ``calibrated``: what ``facegallery calibrate`` would store for that gallery (leave-one-photo-out on its enrolled
  crops, :func:`gallery.calibration.calibrate.centroid_gallery_scores`, at the target FAR);
- ``fixed``: the embedder's fixed default, the only default before issue 13.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gallery.benchmark.open_set import (
    IDENTIFY_SCORING,
    SIZES,
    OpenSetSplit,
    SweepRow,
    photos_per_person,
    sweep,
)
from gallery.benchmark.photo_vectors import photo_vectors
from gallery.calibration import metrics as bm
from gallery.calibration.calibrate import centroid_gallery_scores
from gallery.calibration.thresholds import DEFAULT_THRESHOLDS, FALLBACK_THRESHOLD, size_models
from gallery.heads.train import StoredVectors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenSetConfig:
    sizes: tuple[int, ...] = SIZES
    seeds: int = 5
    target_fpir: float = 0.01
    target_far: float = 1e-3
    strangers: float = 0.35
    stranger_photos: int = 5


@dataclass(frozen=True)
class OpenSetResult:
    people: int
    photos: int
    fallbacks: int  # photos with no face found (their whole image was embedded)
    scoring: str
    config: OpenSetConfig
    rows: dict[str, list[SweepRow]]  # model -> one row per gallery size
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"people": self.people, "photos": self.photos, "fallback_photos": self.fallbacks,
                "scoring": self.scoring, "config": dict(self.config.__dict__, sizes=list(self.config.sizes)),
                "rows": {m: [r.to_dict() for r in rows] for m, rows in self.rows.items()}, "notes": list(self.notes)}


def run_open_set(people: dict[str, list[Path]], root: Path, detector, embedders: dict, config: OpenSetConfig,
                 *, min_prob: float = 0.90, batch_size: int = 32, progress: bool = True) -> OpenSetResult:
    """The sweep for each embedder on ``people`` (name -> photo paths under ``root``)."""
    keys = {p: [str(Path(f).relative_to(root)) for f in files] for p, files in people.items()}
    flat = sorted(k for v in keys.values() for k in v)
    notes, rows = [], {}
    eligible = len(keys) - int(round(config.strangers * len(keys)))
    sizes = tuple(n for n in config.sizes if n <= eligible)
    if sizes != tuple(config.sizes):
        notes.append(f"gallery sizes over {eligible} people skipped: the dataset has {len(keys)} people, "
                     f"{config.strangers:.0%} of them kept as strangers")
    fallbacks = 0
    for m, emb in embedders.items():
        pv = photo_vectors(detector, emb, root, flat, min_prob=min_prob, batch_size=batch_size, progress=progress)
        fallbacks = int(pv.fallback.sum())
        rules = {"default": _default_rule(m, config.target_fpir), "calibrated": _calibrated_rule(pv, config),
                 "fixed": lambda s, m=m: DEFAULT_THRESHOLDS.get(m, FALLBACK_THRESHOLD)}
        rows[m] = sweep(keys, pv, IDENTIFY_SCORING, sizes, range(config.seeds), config.target_fpir, rules,
                        strangers=config.strangers, stranger_photos=config.stranger_photos)
        if m not in {e for e, _ in size_models()}:
            notes.append(f"{m}: no gallery-size model; 'default' is its fixed threshold")
    return OpenSetResult(len(keys), len(flat), fallbacks, IDENTIFY_SCORING.label(), config, rows, notes)


def _default_rule(model: str, target_fpir: float):
    fitted = size_models().get((model, IDENTIFY_SCORING.aggregate))
    fixed = DEFAULT_THRESHOLDS.get(model, FALLBACK_THRESHOLD)
    if fitted is None:
        return lambda split: fixed
    return lambda split: fitted.threshold(len(split.enrolled), photos_per_person(split), target_fpir)


def _calibrated_rule(pv, config: OpenSetConfig):
    """The threshold ``calibrate`` would store for the split's gallery (NaN when it has no genuine pair)."""
    rows = pv.row()

    def rule(split: OpenSetSplit) -> float:
        names = sorted(split.enrolled)
        idx = np.array([rows[k] for p in names for k in split.enrolled[p]], np.int64)
        owners = np.repeat(np.arange(len(names)), [len(split.enrolled[p]) for p in names])
        data = StoredVectors(pv.vectors[idx], owners, np.arange(len(idx)), np.zeros(len(idx), np.int64),
                             dict(enumerate(names)), 0, None)
        gen, imp = centroid_gallery_scores(data)
        return bm.threshold_at_far(imp, config.target_far) if len(gen) and len(imp) else float("nan")

    return rule
