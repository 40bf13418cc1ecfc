"""Giving library faces a person: ``name CLUSTER NAME``, ``move FACE NAME``, ``unassign FACE``; merging clusters.

Assigning a face enrolls it: the person gets an enrolled photo ``<library path>#face<id>`` holding that face
and a copy of its library vectors (one per embedder, copy 0: no augmented copies), so identify names that face
from then on. A face whose photo is already one of the person's enrolled reference photos (the same bytes) is
assigned without a second enrolled copy: nothing counts twice. ``unassign`` deletes the enrolled copy again and
puts the face back among the unassigned (a face of one of the person's own reference photos is assigned again by
the next refresh: to undo that, remove the reference photo). Each command is one transaction; suggestions are refreshed after it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from db import queries as q
from gallery.enroll.scan import name_problem, person_name, reference_path, source_key
from gallery.errors import InvalidInputError
from gallery.library.suggest import MIN_IOU
from gallery.manage.people import find_person
from gallery.store import Gallery
from gallery.writing import Write
from indexer.detect import box_iou

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssignReport:
    person: str
    faces: list[int]  # library faces now assigned to the person
    enrolled: int  # enrolled photos made from them
    already_enrolled: int  # faces whose photo was already one of the person's reference photos
    new_person: bool
    moved_from: dict[int, str] = field(default_factory=dict)  # face id -> the person it was assigned to before
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"person": self.person, "faces": list(self.faces), "enrolled": self.enrolled,
                "already_enrolled": self.already_enrolled, "new_person": self.new_person,
                "moved_from": {str(k): v for k, v in self.moved_from.items()}, "notes": list(self.notes)}


@dataclass(frozen=True)
class UnassignReport:
    face_id: int
    person: str | None  # who it was assigned to (None: it was not assigned)
    enrolled_removed: bool

    def to_dict(self) -> dict:
        return {"face_id": self.face_id, "person": self.person, "enrolled_removed": self.enrolled_removed}


@dataclass(frozen=True)
class MergeReport:
    into: int
    merged: int
    faces: int

    def to_dict(self) -> dict:
        return {"into": self.into, "merged": self.merged, "faces": self.faces}


def _checked_name(name: str) -> str:
    name = person_name(name)
    problem = name_problem(name)
    if problem is not None:
        raise InvalidInputError(problem)
    return name


def name_cluster(gallery: Gallery, cluster_id: int, name: str) -> AssignReport:
    """Assign every face of cluster ``cluster_id`` to ``name`` (an existing person or a new one)."""
    with gallery.session() as s:
        faces = [f.id for f, _ in q.library_faces_where(s, cluster_id=int(cluster_id))]
    if not faces:
        raise InvalidInputError(f"no cluster {cluster_id} (facegallery clusters lists them)")
    return assign_faces(gallery, faces, name)


def move_face(gallery: Gallery, face_id: int, name: str) -> AssignReport:
    """Assign one library face to ``name``, taking it from whoever it was assigned to."""
    return assign_faces(gallery, [face_id], name)


def assign_faces(gallery: Gallery, face_ids: Sequence[int], name: str) -> AssignReport:
    """Assign library faces to ``name`` and enroll them (see the module docstring)."""
    from gallery.library.suggest import refresh_library_matches

    name = _checked_name(name)
    with gallery.write_lock():
        with gallery.session() as s:
            rows = q.library_faces(s, face_ids)
            missing = sorted(set(int(f) for f in face_ids) - set(rows))
            if missing:
                raise InvalidInputError(f"no library face {missing[0]} (facegallery clusters --json lists face ids)")
            existing = find_person(s, name)
            models = q.embedders_in_store(s)
        name = existing.name if existing is not None else name
        models = sorted(set(models) | _face_models(gallery, face_ids))
        notes: list[str] = []
        with gallery.writing(models) as w:
            person = q.get_or_create_person(w.session, name)
            moved: dict[int, str] = {}
            enrolled = already = 0
            for face_id in sorted(rows):
                face, photo = q.library_faces(w.session, [face_id])[face_id]
                if face.person_id == person.id:
                    continue
                if face.person_id is not None:
                    moved[face_id] = _unassign(w, face, photo)[0]
                if _is_reference(w.session, face, photo.sha256, person.id):
                    already += 1
                else:
                    enrolled += _enroll_face(w, name, face, photo, notes)
                q.set_library_faces(w.session, [face_id], person_id=person.id, suggested_person_id=None,
                                    suggested_score=None, cluster_id=None)
        refresh_library_matches(gallery)
    return AssignReport(name, sorted(rows), enrolled, already, existing is None, moved, tuple(dict.fromkeys(notes)))


def unassign_face(gallery: Gallery, face_id: int) -> UnassignReport:
    """Take a library face from its person (deleting the enrolled copy made from it) and leave it unassigned."""
    from gallery.library.suggest import refresh_library_matches

    with gallery.write_lock():
        with gallery.session() as s:
            row = q.library_faces(s, [face_id]).get(int(face_id))
            models = q.embedders_in_store(s)
        if row is None:
            raise InvalidInputError(f"no library face {face_id} (facegallery clusters --json lists face ids)")
        if row[0].person_id is None:
            return UnassignReport(int(face_id), None, False)
        with gallery.writing(models) as w:
            face, photo = q.library_faces(w.session, [face_id])[int(face_id)]
            person, removed = _unassign(w, face, photo)
        refresh_library_matches(gallery)
    return UnassignReport(int(face_id), person, removed)


def merge_clusters(gallery: Gallery, into: int, other: int) -> MergeReport:
    """Move every face of cluster ``other`` into cluster ``into`` (the web page's merge); remembered, so the next
    clustering run keeps the two together (:func:`gallery.library.clusters.keep_merges`)."""
    if int(into) == int(other):
        raise InvalidInputError("cannot merge a cluster with itself")
    with gallery.writing() as w:
        a = [f.id for f, _ in q.library_faces_where(w.session, cluster_id=int(into))]
        b = [f.id for f, _ in q.library_faces_where(w.session, cluster_id=int(other))]
        for cid, faces in ((into, a), (other, b)):
            if not faces:
                raise InvalidInputError(f"no cluster {cid} (facegallery clusters lists them)")
        q.set_library_faces(w.session, b, cluster_id=int(into))
        from gallery.library.clusters import MERGES_KEY, merged_faces

        merges = merged_faces(w.session) | {f: int(into) for f in a + b}  # re-applied by the next clustering
        merges = {f: int(into) if c == int(other) else c for f, c in merges.items()}
        q.set_setting(w.session, MERGES_KEY, json.dumps({str(f): c for f, c in sorted(merges.items())}))
    return MergeReport(int(into), int(other), len(a) + len(b))


def _face_models(gallery: Gallery, face_ids: Sequence[int]) -> set[str]:
    with gallery.session() as s:
        return {m for per in q.library_vectors_of_faces(s, face_ids).values() for m in per}


def _is_reference(s, face, sha256: str, person_id: int) -> bool:
    """Whether the person already has this face enrolled: an enrolled photo with these bytes whose face overlaps
    it (IoU >= 0.3): one of their reference photos, or a copy made from the library before."""
    box = face.box
    return any(pid == person_id and box_iou(box, ref) >= MIN_IOU
               for pid, ref in q.enrolled_faces_by_sha(s, [sha256]).get(sha256, []))


def _enroll_face(w: Write, name: str, face, photo, notes: list[str]) -> int:
    """Add the enrolled photo made from ``face`` with a copy of its vectors; returns 1 (0 when it has none)."""
    vectors = q.library_vectors_of_faces(w.session, [face.id]).get(face.id, {})
    usable = {}
    for model, (sha, raw) in sorted(vectors.items()):
        held = q.stored_weights(w.session, model)
        if held is not None and held != sha:  # never mix vectors of two weights in one index
            notes.append(f"{model}: the library vectors were made with other weights than the enrolled ones "
                         f"(facegallery reembed, then scan again); not enrolled with {model}")
            continue
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if vec.size and np.isfinite(vec).all() and np.linalg.norm(vec) > 0:
            usable[model] = (sha, vec)
    if not usable:
        return 0
    ref = reference_path(photo.path, face.id)
    old = q.photo_of(w.session, name, ref)
    if old is not None:  # left by an earlier assignment that was undone outside these commands
        w.removed(q.delete_photo(w.session, old))
    enrolled_face = q.add_photo_with_face(
        w.session, name, path=ref, sha256=photo.sha256, size_bytes=photo.size_bytes, width=photo.width,
        height=photo.height, faces_detected=photo.faces_detected, box=face.box,
        prob=float(face.prob), landmarks=face.landmarks, fallback=False)
    for model, (sha, vec) in usable.items():
        ids = q.add_embeddings(w.session, enrolled_face, model, sha, vec[None, :])
        w.added(model, ids, vec[None, :], sha)
    return 1


def _unassign(w: Write, face, photo) -> tuple[str, bool]:
    """Clear the face's person and delete the enrolled copy made from it; returns the former person's name and
    whether an enrolled copy was deleted."""
    names = q.person_names(w.session, [face.person_id])
    name = names.get(face.person_id, "?")
    box = face.box
    # the copy made from this face, and any made from the same face under an older path (a renamed folder, a
    # duplicate file): else the next refresh would assign it again and identify would keep the name
    copies = [p for p, ref in q.enrolled_copies(w.session, face.person_id, photo.sha256)
              if p.path == reference_path(photo.path, face.id)
              or (source_key(p.path) != p.path and box_iou(box, ref) >= MIN_IOU)]
    for old in copies:
        w.removed(q.delete_photo(w.session, old))
    q.set_library_faces(w.session, [face.id], person_id=None, suggested_person_id=None, suggested_score=None)
    return name, bool(copies)
