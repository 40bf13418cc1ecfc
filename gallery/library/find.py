"""``facegallery find NAME`` / ``find --photo QUERY``: the library photos a person appears in, best first.

For an enrolled person the query is their centroid (the normalised mean of their enrolled crops, what identify
scores against). The library index of the embedder is searched for every face at or above the threshold (by
default identify's open-set threshold for this gallery), and a face is kept only when the person is also its
best enrolled match, so a face closer to someone else is not listed under this name. Faces assigned to the person
are always listed; faces assigned to someone else never are. A photo is listed once, with its best face.

``--photo`` searches with the largest face of a query photo instead: someone who is not enrolled. Its default
threshold is the open-set threshold of a gallery of one person.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from db import queries as q
from gallery.calibration.thresholds import identify_thresholds
from gallery.enroll.scan import key_name, key_path
from gallery.errors import InvalidInputError, PersonNotFoundError
from gallery.library.suggest import library_model, other_weights
from gallery.manage.people import find_person as person_named
from gallery.recognize.centroids import gallery_centroids
from gallery.results import display
from gallery.store import Gallery
from indexer.images import ImageLoadError, load_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundPhoto:
    path: str
    face_id: int
    box: tuple[float, float, float, float]
    score: float
    assigned: bool  # the face is assigned to the person (not only matched)
    key: str = ""  # the stored path (lossless; ``path`` is its printable form)

    def to_dict(self) -> dict:
        return {"path": self.path, "face_id": self.face_id, "box": [round(v, 1) for v in self.box],
                "score": round(self.score, 4), "assigned": self.assigned}


@dataclass(frozen=True)
class FindReport:
    query: str
    model: str | None
    threshold: float | None
    photos: list[FoundPhoto]
    random_weights: bool = False
    album: str | None = None
    album_files: int = 0

    def to_dict(self) -> dict:
        return {"query": self.query, "model": self.model, "threshold": self.threshold,
                "photos": [p.to_dict() for p in self.photos], "random_weights": self.random_weights,
                "album": self.album, "album_files": self.album_files}


def find_person(gallery: Gallery, name: str, *, model: str | None = None, min_score: float | None = None,
                limit: int | None = None) -> FindReport:
    """The library photos of the enrolled person ``name`` (see the module docstring)."""
    with gallery.session() as s:
        person = person_named(s, name)
        if person is None:
            raise PersonNotFoundError(f"no person named {name!r} in the gallery (facegallery people lists them)")
        pid, name = person.id, person.name
    model = library_model(gallery, model)
    if model is None:
        return FindReport(name, None, None, [])
    stale = other_weights(gallery, model)
    if stale is not None:
        raise InvalidInputError(stale)
    cents = gallery_centroids(gallery, model)
    threshold = float(min_score) if min_score is not None else _threshold(gallery, model)
    hits: dict[int, float] = {}
    if cents is not None and pid in cents.names:
        face_ids, vecs, sims = _search(gallery, model, cents.index.reconstruct(pid), threshold)
        if len(face_ids):
            best = cents.index.search(vecs, 1)[1][:, 0]
            hits = {f: sim for f, b, sim in zip(face_ids, best.tolist(), sims) if b == pid}
    with gallery.session() as s:
        assigned = {f.id: (f, p) for f, p in q.library_faces_where(s, person_id=pid)}
        rows = q.library_faces(s, [f for f in hits if f not in assigned])
        vectors = q.library_vectors_of_faces(s, list(assigned)) if assigned and cents is not None else {}
    for face_id in assigned:  # listed whatever their score: the user said so
        raw = vectors.get(face_id, {}).get(model)
        if raw is not None and cents is not None and pid in cents.names:
            hits[face_id] = float(np.frombuffer(raw[1], "<f4") @ cents.index.reconstruct(pid))
        else:
            hits.setdefault(face_id, 1.0)
    rows.update(assigned)
    found = [(face_id, sim) for face_id, sim in hits.items()
             if face_id in rows and rows[face_id][0].person_id in (None, pid)]
    return FindReport(name, model, threshold, _by_photo(found, rows, set(assigned), limit),
                      _random(gallery, model))


def find_by_photo(gallery: Gallery, photo: str | Path, *, model: str | None = None,
                  min_score: float | None = None, limit: int | None = None) -> FindReport:
    """The library photos of whoever is the largest face in ``photo`` (enrolled or not)."""
    model = library_model(gallery, model)
    if model is None:
        return FindReport(display(photo), None, None, [])
    try:
        img = load_image(photo)
    except ImageLoadError as exc:
        raise InvalidInputError(str(exc)) from exc
    faces = gallery.confident(gallery.detector.detect(img))
    if not faces:
        raise InvalidInputError(f"{display(photo)}: no face detected")
    face = max(faces, key=lambda f: f.area)
    stale = other_weights(gallery, model, gallery.embedder(model).weights.sha256)
    if stale is not None:
        raise InvalidInputError(stale)
    from gallery.recognize.identify import face_vectors  # a query photo needs the embedder (torch) anyway

    vec = face_vectors(gallery.embedder(model), img, [face], gallery.settings.batch_size)[0]
    threshold = float(min_score) if min_score is not None else _threshold(gallery, model, single=True)
    face_ids, _, sims = _search(gallery, model, vec, threshold)
    hits = dict(zip(face_ids, sims))
    with gallery.session() as s:
        rows = q.library_faces(s, list(hits))
    found = [(f, sim) for f, sim in hits.items() if f in rows]
    return FindReport(display(photo), model, threshold, _by_photo(found, rows, set(), limit),
                      gallery.embedder(model).weights.random)


def make_album(report: FindReport, album_dir: str | Path, *, copy: bool = False) -> FindReport:
    """A folder with the found photos, best first (``001_name.jpg``): symbolic links, or copies with ``copy``.
    An existing folder is added to; a name already there gets a numbered suffix, never overwritten."""
    folder = Path(album_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create album folder {display(folder)}: {exc.strerror or exc}") from exc
    made = 0
    width = max(3, len(str(len(report.photos))))
    for rank, hit in enumerate(report.photos, 1):
        src = key_path(hit.key or hit.path)
        dest = _free_name(folder, f"{rank:0{width}d}_{src.name}")
        try:
            if copy:
                shutil.copy2(src, dest)
            else:
                os.symlink(os.path.abspath(src), dest)
            made += 1
        except OSError as exc:
            log.warning("album: %s not added: %s", hit.path, exc.strerror or exc)
    return FindReport(report.query, report.model, report.threshold, report.photos, report.random_weights,
                      display(folder), made)


def _free_name(folder: Path, name: str) -> Path:
    dest = folder / name
    stem, suffix, n = dest.stem, dest.suffix, 1
    while os.path.lexists(dest):
        n += 1
        dest = folder / f"{stem}-{n}{suffix}"
    return dest


def _threshold(gallery: Gallery, model: str, single: bool = False) -> float:
    shapes = {model: (1, 1.0)} if single else None
    return float(identify_thresholds(gallery, [model], shapes=shapes)[model].value)


def _random(gallery: Gallery, model: str) -> bool:
    """Whether ``model`` runs with random weights here (asked of the settings: loading it costs torch)."""
    return gallery.settings.weights.get(model) == "random"


def _search(gallery: Gallery, model: str, query: np.ndarray, threshold: float
            ) -> tuple[list[int], np.ndarray, list[float]]:
    """(face ids, their vectors, similarities) of the library faces of ``model`` at or above ``threshold``."""
    index = gallery.index(q.library_key(model))
    if index is None:
        return [], np.zeros((0, len(query)), np.float32), []
    query = np.asarray(query, np.float32)[None, :]
    total, k = len(index), 256
    while True:
        k = min(k, total)
        sims, ids = index.search(query, k)
        sims, ids = sims[0], ids[0]
        if k >= total or sims[-1] < np.float32(threshold):
            break
        k *= 4
    keep = (ids >= 0) & (sims >= np.float32(threshold))
    ids, sims = ids[keep], sims[keep]
    with gallery.session() as s:
        faces = q.library_face_ids_of_vectors(s, model, ids.tolist())
    kept = [(int(i), float(sim)) for i, sim in zip(ids, sims) if int(i) in faces]
    vecs = (np.stack([index.reconstruct(i) for i, _ in kept]) if kept
            else np.zeros((0, query.shape[1]), np.float32))
    return [faces[i] for i, _ in kept], vecs.astype(np.float32), [sim for _, sim in kept]


def _by_photo(found, rows, assigned: set[int], limit: int | None) -> list[FoundPhoto]:
    best: dict[int, tuple[float, int]] = {}
    for face_id, sim in found:
        photo_id = rows[face_id][1].id
        if photo_id not in best or sim > best[photo_id][0]:
            best[photo_id] = (sim, face_id)
    out = []
    for sim, face_id in sorted(best.values(), key=lambda t: (-t[0], t[1])):
        face, photo = rows[face_id]
        out.append(FoundPhoto(key_name(photo.path), face_id, face.box, sim,
                              face_id in assigned, photo.path))
    return out[:limit] if limit else out
