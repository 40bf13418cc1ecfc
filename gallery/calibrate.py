"""Choosing each embedder's decision threshold for a target false-accept rate (FAR).

A comparison is one probe face against one enrolled *person* (their best-matching stored vector, as identify's
``max`` aggregation does). The threshold is the lowest cosine similarity at which at most ``target_far`` of the
impostor comparisons are accepted (:func:`gallery.bench_metrics.threshold_at_far`); the genuine acceptance rate
(TAR) at that threshold is what the choice costs.

Default target FAR = 1e-3, because:
- identify compares a face with every enrolled person, so an unknown face is wrongly named with probability of
  about N x FAR: ~1 % for a 10-person family gallery, ~7 % for the 70-person seed protocol. 1e-2 would name
  strangers far too often (50 % at N = 70); 1e-4 would cost much genuine recall on small galleries;
- 1e-3 is the smallest FAR that LFW's 3,000 impostor pairs can measure at all (3 accepted pairs). A target that
  the impostor count cannot measure is still answered (the threshold lands just above the highest impostor)
  but flagged ``measurable: false``.

``calibrate_gallery`` calibrates on the gallery itself, leave-one-photo-out: every stored original crop
(``aug_index`` 0) is a probe against all vectors of the *other* photos (their augmented copies included, as in a
real search); genuine = its own person (other photos only), impostor = every other person.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from gallery import bench_metrics as bm
from gallery.errors import EmptyGalleryError, GalleryError
from gallery.heads import StoredVectors, stored_vectors
from gallery.store import Gallery
from gallery.thresholds import store_threshold

log = logging.getLogger(__name__)

DEFAULT_TARGET_FAR = 1e-3
_CELLS = 20_000_000  # similarity-matrix cells per chunk (~80 MB of float32)


@dataclass(frozen=True)
class Calibration:
    model: str
    source: str
    target_far: float
    threshold: float
    far: float
    tar: float
    genuine: int
    impostor: int
    measurable: bool
    random_weights: bool = False
    stored: bool = False
    augment: int | None = None  # augmented copies per enrolled photo behind the scores (None: not a gallery)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("threshold", "far", "tar"):
            d[k] = round(d[k], 6)
        d["weights"] = "random weights" if self.random_weights else "pretrained"
        return d


def calibrate_scores(model: str, genuine: np.ndarray, impostor: np.ndarray, target_far: float, source: str,
                     random_weights: bool = False, augment: int | None = None) -> Calibration:
    if not 0 < target_far < 1:
        raise GalleryError(f"target FAR must be between 0 and 1, got {target_far}")
    if len(genuine) == 0 or len(impostor) == 0:
        raise GalleryError(f"cannot calibrate {model}: {len(genuine)} genuine and {len(impostor)} impostor "
                           f"comparisons (need people with two or more photos, and two or more people)")
    t = bm.threshold_at_far(impostor, target_far)
    return Calibration(model, source, target_far, t, bm.acceptance(impostor, t), bm.acceptance(genuine, t),
                       len(genuine), len(impostor), bm.far_is_measurable(len(impostor), target_far), random_weights,
                       augment=augment)


def per_person_max(probes: np.ndarray, vectors: np.ndarray, owners: np.ndarray,
                   exclude: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(people, S): S[i, j] = best cosine of probe i with any vector of ``people[j]``.

    ``exclude = (probe_groups, vector_groups)`` masks vectors of the probe's own group (its photo) out.
    A person left with no vector for a probe gets -inf.
    """
    order = np.argsort(owners, kind="stable")
    v, own = vectors[order], owners[order]
    people, starts = np.unique(own, return_index=True)
    out = np.empty((len(probes), len(people)), np.float32)
    groups = exclude[1][order] if exclude is not None else None
    step = max(1, _CELLS // max(1, len(v)))
    for lo in range(0, len(probes), step):
        sims = probes[lo:lo + step] @ v.T
        if exclude is not None:
            sims[exclude[0][lo:lo + step, None] == groups[None, :]] = -np.inf
        out[lo:lo + step] = np.maximum.reduceat(sims, starts, axis=1)
    return people, out


def split_scores(people: np.ndarray, sims: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genuine (probe vs its own person) and impostor (vs everyone else) scores; -inf entries are dropped.
    A ``truth`` not in ``people`` (an impostor probe) contributes only impostor scores."""
    own = people[None, :] == truth[:, None]
    gen, imp = sims[own], sims[~own]
    return gen[np.isfinite(gen)].astype(np.float64), imp[np.isfinite(imp)].astype(np.float64)


def gallery_scores(data: StoredVectors) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-photo-out genuine and impostor scores of a gallery's own original crops."""
    probe = data.aug == 0
    people, sims = per_person_max(data.vectors[probe], data.vectors, data.person_ids,
                                  exclude=(data.photo_ids[probe], data.photo_ids))
    return split_scores(people, sims, data.person_ids[probe])


def calibrate_gallery(gallery: Gallery, models: Sequence[str] | None = None,
                      target_far: float = DEFAULT_TARGET_FAR, store: bool = False) -> list[Calibration]:
    """Calibrate each embedder on the gallery (leave-one-photo-out); ``store`` saves the thresholds for identify."""
    chosen = list(models) if models else gallery.models_in_store()
    if not chosen:
        raise EmptyGalleryError("the gallery is empty: enroll people first (facegallery enroll PEOPLE_DIR)")
    out = []
    for m in chosen:
        data = stored_vectors(gallery, m)
        gen, imp = gallery_scores(data)
        out.append(calibrate_scores(m, gen, imp, target_far, "gallery leave-one-photo-out", data.random_weights))
    return store_calibrations(gallery, out) if store else out


def store_calibrations(gallery: Gallery, calibrations: Sequence[Calibration]) -> list[Calibration]:
    """Store each threshold in ``gallery`` (identify then uses it unless --threshold is given)."""
    out = []
    for c in calibrations:
        store_threshold(gallery, c.model, c.threshold)
        log.info("stored %s threshold %.4f (%s)", c.model, c.threshold, c.source)
        out.append(replace(c, stored=True))
    return out
