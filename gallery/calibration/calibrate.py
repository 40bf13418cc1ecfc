"""Choosing each embedder's decision threshold for a target false-accept rate (FAR).

A comparison is one probe face against one enrolled *person* (their best-matching stored vector, as identify's
``max`` aggregation does). The threshold is the lowest cosine similarity at which at most ``target_far`` of the
impostor comparisons are accepted (:func:`gallery.calibration.metrics.threshold_at_far`); the genuine acceptance rate
(TAR) at that threshold is what the choice costs.

Default target FAR = 1e-3, because:
- identify compares a face with every enrolled person, so an unknown face is wrongly named with probability of
  about N x FAR: ~1 % for a 10-person family gallery, ~7 % for the 70-person seed protocol. 1e-2 would name
  strangers far too often (50 % at N = 70); 1e-4 would cost much genuine recall on small galleries;
- 1e-3 is the smallest FAR that LFW's 3,000 impostor pairs can measure at all (3 accepted pairs). A target that
  the impostor count cannot measure is still answered (the threshold lands just above the highest impostor)
  but flagged ``measurable: false``.

``calibrate_gallery`` calibrates on the gallery itself, leave-one-photo-out: every stored original crop
(``aug_index`` 0) is a probe against the *other* photos, scored the way identify scores (``centroid``, its
default: the centroid of the person's other original crops; ``max``: their best vector, augmented copies
included); genuine = its own person (other photos only), impostor = every other person.

Every calibration also carries the FAR/FRR curve of its scores (:mod:`gallery.calibration.curve`); storing a
calibration writes the threshold into the gallery's database and the curve into ``<home>/calibration.json``, where
the web app's threshold slider reads the expected error rates at any threshold.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone

import numpy as np

from db import queries as q
from gallery.calibration import metrics as bm
from gallery.calibration.curve import FarFrrCurve, far_frr_curve, write_curves
from gallery.calibration.thresholds import store_thresholds
from gallery.config import DEFAULT_TARGET_FAR
from gallery.errors import EmptyGalleryError, GalleryError, WeightsMismatchError
from gallery.heads.train import StoredVectors, stored_vectors
from gallery.store import Gallery

log = logging.getLogger(__name__)

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
    weights_sha256: str | None = None  # of the embedder behind the scores
    curve: FarFrrCurve | None = field(default=None, repr=False, compare=False)
    curve_file: str | None = None  # calibration.json the curve was written to (when stored)

    def to_dict(self) -> dict:
        """JSON fields; the curve only as its point count (the arrays go to calibration.json / report.json)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "curve"}
        for k in ("threshold", "far", "tar"):
            d[k] = round(d[k], 6)
        d["weights"] = "random weights" if self.random_weights else "pretrained"
        d["curve_points"] = self.curve.points if self.curve is not None else 0
        return d

    def curve_entry(self) -> dict:
        """This calibration's curve as a ``calibration.json`` / report.json entry (see app.reports)."""
        if self.curve is None:
            raise GalleryError(f"the {self.model} calibration has no FAR/FRR curve")
        return {**self.curve.to_dict(),
                "source": f"{self.source}, {self.genuine} genuine / {self.impostor} impostor comparisons",
                "weights_sha256": self.weights_sha256, "random_weights": self.random_weights,
                "threshold": self.threshold, "target_far": self.target_far, "augment": self.augment,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def calibrate_scores(model: str, genuine: np.ndarray, impostor: np.ndarray, target_far: float, source: str,
                     random_weights: bool = False, augment: int | None = None, *,
                     weights_sha256: str | None = None) -> Calibration:
    """The threshold at ``target_far``, its FAR and TAR, and the FAR/FRR curve of the scores."""
    if not 0 < target_far < 1:
        raise GalleryError(f"target FAR must be between 0 and 1, got {target_far}")
    if len(genuine) == 0 or len(impostor) == 0:
        raise GalleryError(f"cannot calibrate {model}: {len(genuine)} genuine and {len(impostor)} impostor "
                           f"comparisons (need people with two or more photos, and two or more people)")
    t = bm.threshold_at_far(impostor, target_far)
    return Calibration(model, source, target_far, t, bm.acceptance(impostor, t), bm.acceptance(genuine, t),
                       len(genuine), len(impostor), bm.far_is_measurable(len(impostor), target_far), random_weights,
                       augment=augment, weights_sha256=weights_sha256,
                       curve=far_frr_curve(genuine, impostor, include=(t,)))


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


def centroid_gallery_scores(data: StoredVectors) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-photo-out genuine and impostor scores against person centroids of original crops."""
    orig = data.aug == 0
    vecs, owners = data.vectors[orig].astype(np.float64), data.person_ids[orig]
    people, inverse = np.unique(owners, return_inverse=True)
    sums = np.zeros((len(people), vecs.shape[1]))
    np.add.at(sums, inverse, vecs)
    counts = np.bincount(inverse, minlength=len(people))
    cents = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    gen, imp = [], []
    step = max(1, _CELLS // max(1, len(people)))
    for lo in range(0, len(vecs), step):
        v, own = vecs[lo:lo + step], inverse[lo:lo + step]
        sims = v @ cents.T
        mask = np.ones_like(sims, bool)
        mask[np.arange(len(v)), own] = False
        imp.append(sims[mask])
        rest = sums[own] - v  # the person's other photos
        keep = counts[own] > 1
        norms = np.linalg.norm(rest[keep], axis=1)
        gen.append(np.einsum("ij,ij->i", v[keep], rest[keep]) / np.maximum(norms, 1e-12))
    return np.concatenate(gen), np.concatenate(imp)


def calibrate_gallery(gallery: Gallery, models: Sequence[str] | None = None,
                      target_far: float = DEFAULT_TARGET_FAR, store: bool = False,
                      aggregate: str = "centroid") -> list[Calibration]:
    """Calibrate each embedder on the gallery (leave-one-photo-out, scored like identify's ``aggregate``:
    ``centroid`` or ``max``); ``store`` saves the thresholds for identify."""
    if aggregate not in ("centroid", "max"):
        raise GalleryError(f"calibrate scores with centroid or max, not {aggregate!r}")
    chosen = list(models) if models else gallery.models_in_store()
    if not chosen:
        raise EmptyGalleryError("the gallery is empty: enroll people first (facegallery enroll PEOPLE_DIR)")
    out = []
    for m in chosen:
        data = stored_vectors(gallery, m)
        gen, imp = centroid_gallery_scores(data) if aggregate == "centroid" else gallery_scores(data)
        out.append(calibrate_scores(m, gen, imp, target_far, f"gallery leave-one-photo-out ({aggregate})",
                                    data.random_weights, weights_sha256=data.weights_sha256))
    return store_calibrations(gallery, out) if store else out


def store_calibrations(gallery: Gallery, calibrations: Sequence[Calibration]) -> list[Calibration]:
    """Store each threshold in ``gallery`` (identify then uses it unless --threshold is given) and merge each
    curve into ``<home>/calibration.json`` (the web app's slider reads it)."""
    with gallery.writing() as w:
        # under the lock: a reembed may have changed the weights since scoring
        current = {c.model: q.stored_weights(w.session, c.model) for c in calibrations}
        for c in calibrations:
            if c.weights_sha256 and current[c.model] and c.weights_sha256 != current[c.model]:
                raise WeightsMismatchError(
                    f"the {c.model} threshold was measured with weights {c.weights_sha256[:12]}, but the gallery's "
                    f"{c.model} vectors now come from {current[c.model][:12]}; nothing stored (calibrate again)")
        store_thresholds(w, {c.model: c.threshold for c in calibrations})
        for c in calibrations:
            log.info("stored %s threshold %.4f (%s)", c.model, c.threshold, c.source)
        entries = {c.model: c.curve_entry() for c in calibrations if c.curve is not None}
        path = write_curves(gallery.settings.home, entries) if entries else None
    return [replace(c, stored=True, curve_file=str(path) if path and c.model in entries else None)
            for c in calibrations]
