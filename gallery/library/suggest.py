"""What the gallery already knows about library faces: the enrolled reference photos among them, and the enrolled
person each other face resembles.

* A library photo with the same bytes as an enrolled photo of a person holds that person's face: the library face
  whose box overlaps the enrolled face (IoU >= 0.3) is *assigned* to them. It is the same face, so nothing new is
  enrolled and nothing is counted twice.
* Every other unassigned face is *suggested* for the enrolled person whose centroid it matches best, when that
  score clears identify's open-set threshold (the same threshold, following the gallery's size, that identify
  uses for a query face). A suggestion is never an enrollment: it is shown in ``people`` and ``clusters`` and
  refreshed whenever the library or the people change through these commands.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from db import queries as q
from gallery.calibration.thresholds import identify_thresholds
from gallery.recognize.centroids import gallery_centroids
from gallery.store import Gallery
from gallery.vectors import decode_rows
from indexer.detect import box_iou as iou

log = logging.getLogger(__name__)

MIN_IOU = 0.3
PREFERRED = ("dlib", "facenet", "resnet50")  # real weights first: dlib is the one measured here


@dataclass(frozen=True)
class LibraryMatches:
    from_references: int  # faces assigned this time because their photo is an enrolled reference photo
    suggested: int  # unassigned faces with a suggested person now
    model: str | None  # the embedder the suggestions come from
    threshold: float | None

    def to_dict(self) -> dict:
        return {"from_references": self.from_references, "suggested": self.suggested, "model": self.model,
                "threshold": self.threshold}


def library_model(gallery: Gallery, requested: str | None = None) -> str | None:
    """The embedder library commands use: ``requested``, else the first library embedder by preference (dlib,
    the one with real weights here), else None when the library holds no vectors."""
    with gallery.session() as s:
        present = q.library_models(s)
    if requested is not None:
        if requested not in present:
            from gallery.errors import InvalidInputError

            have = ", ".join(present) or "none (run facegallery scan first)"
            raise InvalidInputError(f"the library holds no {requested} vectors; it has: {have}")
        return requested
    for m in PREFERRED + tuple(present):
        if m in present:
            return m
    return None


def other_weights(gallery: Gallery, model: str, weights_sha256: str | None = None) -> str | None:
    """Why the library's ``model`` vectors cannot be compared with the enrolled ones (or with ``weights_sha256``,
    a query's): they were made with other weights (``reembed`` since, or a weights change); None when they can."""
    with gallery.session() as s:
        library = set(q.weights_in_store(s, q.library_key(model)))
        other = {weights_sha256} if weights_sha256 is not None else set(q.weights_in_store(s, model))
    if library and other and library != other:
        return (f"the library's {model} vectors were made with other weights than the "
                f"{'query' if weights_sha256 else 'enrolled'} ones: run facegallery scan on the library again")
    return None


def refresh_library_matches(gallery: Gallery) -> LibraryMatches:
    """Assign the faces of enrolled reference photos, then recompute every unassigned face's suggestion."""
    with gallery.writing() as w:
        assigned = _assign_references(w.session)
    model = library_model(gallery)
    if model is None:
        return LibraryMatches(len(assigned), 0, None, None)
    stale = other_weights(gallery, model)
    if stale is not None:  # comparing them would suggest nonsense: the suggestions stay as they were
        log.warning("no suggestions: %s", stale)
        return LibraryMatches(len(assigned), 0, model, None)
    cents = gallery_centroids(gallery, model)
    threshold = None
    with gallery.session() as s:
        current = q.current_suggestions(s)
        face_ids, rows = q.library_vectors(s, model, unassigned_only=True)
    new: dict[int, tuple[int | None, float | None]] = {f: (None, None) for f in current}
    if cents is not None and rows:
        threshold = identify_thresholds(gallery, [model])[model].value
        ids, vecs, _bad = decode_rows(rows, q_dim(rows))
        sims, people = cents.index.search(vecs, 1)
        for f, sim, pid in zip(ids.tolist(), sims[:, 0].tolist(), people[:, 0].tolist()):
            if pid >= 0 and np.float32(sim) >= np.float32(threshold):
                new[f] = (int(pid), float(sim))
    changed = [(f, p, sc) for f, (p, sc) in new.items() if current.get(f) != (p, sc)]
    if changed:
        with gallery.writing() as w:
            q.set_suggestions(w.session, changed)
    suggested = sum(1 for p, _ in new.values() if p is not None)
    log.info("library: %d face(s) from reference photos, %d suggested (%s)", len(assigned), suggested, model)
    return LibraryMatches(len(assigned), suggested, model, threshold)


def q_dim(rows) -> int:
    """The vector length most of ``rows`` have."""
    lengths = np.array([len(r[1]) for r in rows])
    values, counts = np.unique(lengths, return_counts=True)
    return int(values[np.argmax(counts)]) // 4


def _assign_references(s) -> list[int]:
    """Assign each enrolled reference face to the library face it overlaps most (one per enrolled face)."""
    best: dict[tuple[int, int, tuple], tuple[float, int]] = {}
    for face_id, photo_id, box, person_id, ref_box in q.reference_overlaps(s):
        key = (photo_id, person_id, ref_box)
        score = iou(box, ref_box)
        if score >= MIN_IOU and score > best.get(key, (0.0, 0))[0]:
            best[key] = (score, face_id)
    done: set[int] = set()
    for (_, person_id, _), (_, face_id) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        if face_id not in done:
            q.set_library_faces(s, [face_id], person_id=person_id, suggested_person_id=None, suggested_score=None,
                                cluster_id=None)
            done.add(face_id)
    return sorted(done)
