"""``facegallery scan LIBRARY``: every face of every photo under a folder tree, into the library tables.

The pipeline is enrollment's (:mod:`gallery.enroll.prepare`): a background thread hashes, decodes and detects
the next chunk of photos while this one is embedded, and each chunk is written in one transaction, so a killed
scan keeps every finished chunk and nothing half-written; the next scan goes on from there. A photo is known by
its absolute path and sha256: an unchanged photo is skipped, a changed one is replaced, one that is gone from the
folder is removed with its faces, and an embedder the library lacks is added from the stored faces without
detecting again. Each face's vector is identify's query vector (the chip, flip-averaged for dlib), so the
open-set thresholds mean the same for library faces as for a query photo.

After the photos, :mod:`gallery.library.suggest` assigns the faces of photos that are also enrolled reference
photos (same bytes) to their person, and suggests a person for the other faces.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from db import queries as q
from gallery.enroll.prepare import load_planned, progress_bar, stored_face
from gallery.enroll.scan import HIDDEN_NAMES, PhotoJob, key_name, key_path, path_key
from gallery.errors import InvalidInputError, StoreWriteError
from gallery.manage.models import resolve_models
from gallery.prefetch import batched, prefetch
from gallery.recognize.identify import chip_vectors
from gallery.results import Skipped, display
from gallery.store import Gallery
from gallery.vectors import vector_problem
from indexer.detect import DetectedFace
from indexer.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

CHUNK = 16


@dataclass(frozen=True)
class ScannedPhoto:
    path: str
    faces: int
    models: tuple[str, ...]
    replaced: bool = False

    def to_dict(self) -> dict:
        return {"path": self.path, "faces": self.faces, "models": list(self.models), "replaced": self.replaced}


@dataclass(frozen=True)
class ScanReport:
    root: str
    scanned: list[ScannedPhoto]
    unchanged: int
    removed: list[str]
    skipped: list[Skipped]
    faces_added: int
    vectors_added: dict[str, int]
    models: tuple[str, ...]
    models_skipped: dict[str, str] = field(default_factory=dict)
    random_weights: tuple[str, ...] = ()
    from_references: int = 0
    suggested: int = 0
    other_files: int = 0

    @property
    def photos_without_face(self) -> int:
        return sum(1 for p in self.scanned if p.faces == 0)

    def to_dict(self) -> dict:
        return {
            "root": self.root, "scanned": [p.to_dict() for p in self.scanned], "unchanged": self.unchanged,
            "removed": list(self.removed), "skipped": [s.to_dict() for s in self.skipped],
            "faces_added": self.faces_added, "vectors_added": dict(self.vectors_added), "models": list(self.models),
            "models_skipped": dict(self.models_skipped), "random_weights": list(self.random_weights),
            "from_references": self.from_references, "suggested": self.suggested,
            "photos_without_face": self.photos_without_face, "other_files": self.other_files,
        }


@dataclass
class _Item:
    job: PhotoJob
    sha256: str
    size_bytes: int
    models: set[str]
    image: Image.Image | None = None
    faces: list[DetectedFace] = field(default_factory=list)
    face_ids: list[int] | None = None  # stored faces (only embedders are missing)
    crops: dict[str, list[Image.Image]] = field(default_factory=dict)  # per model, one chip per face
    replaces: int | None = None  # id of the stored photo this changed one replaces


@dataclass
class _Chunk:
    items: list[_Item] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unchanged: int = 0


def walk_library(root: Path, *, follow_symlinks: bool = False) -> tuple[list[Path], list[Skipped], int]:
    """Every image file under ``root`` (any depth, sorted), what was left out with a reason, and how many other
    (non-image) files were passed over. Hidden files and folders are passed over silently; a symbolic link that
    leads out of ``root`` is skipped unless ``follow_symlinks`` (folders already visited are never re-entered)."""
    real_root = os.path.realpath(root)
    photos: list[Path] = []
    skipped: list[Skipped] = []
    other = 0
    seen: set[str] = set()
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            skipped.append(Skipped(display(folder), f"cannot list folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name.lower() in HIDDEN_NAMES:
                continue
            if entry.is_symlink() and not follow_symlinks:
                target = os.path.realpath(entry.path)
                if os.path.commonpath([real_root, target]) != real_root:
                    skipped.append(Skipped(display(entry.path), "symbolic link out of the library folder "
                                                                "(--follow-symlinks scans it)"))
                    continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(Path(entry.path))
            elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                photos.append(Path(entry.path))
            else:
                other += 1
    photos.sort()
    return photos, skipped, other


def scan_library(
    gallery: Gallery,
    library_dir: str | Path,
    *,
    models: Sequence[str] | None = None,
    follow_symlinks: bool = False,
) -> ScanReport:
    """Scan ``library_dir`` into the gallery's library (see the module docstring)."""
    from gallery.library.suggest import refresh_library_matches  # after the write: needs identify's thresholds

    root = Path(library_dir)
    if not root.is_dir():
        raise InvalidInputError(f"{display(root)}: not a folder")
    gallery.create()
    chosen, models_skipped = resolve_models(gallery, models)
    paths, skipped, other = walk_library(root, follow_symlinks=follow_symlinks)
    root_key = path_key(root)
    jobs = [PhotoJob(person="", key=path_key(p), source=p) for p in paths]
    state = _Run(gallery, chosen, skipped)
    with gallery.write_lock():
        _drop_other_weights(state)
        removed = _remove_gone(state, root_key, {j.key for j in jobs})
        chunks = prefetch(batched(jobs, CHUNK), lambda part: (_prepare(state, part), len(part)),
                          name="facegallery-scan")
        with closing(chunks), progress_bar(gallery, len(jobs), "scan") as bar:
            for chunk, n in chunks:
                state.skipped.extend(chunk.skipped)
                state.unchanged += chunk.unchanged
                if chunk.items:
                    _write_chunk(state, root_key, chunk.items)
                bar.update(n)
        matches = refresh_library_matches(gallery)
    return ScanReport(
        root=display(root), scanned=state.scanned, unchanged=state.unchanged, removed=removed,
        skipped=state.skipped, faces_added=state.faces_added,
        vectors_added={m: state.vectors_added.get(m, 0) for m in chosen}, models=tuple(chosen),
        models_skipped=models_skipped,
        random_weights=tuple(m for m in chosen if gallery.embedder(m).weights.random),
        from_references=matches.from_references, suggested=matches.suggested, other_files=other,
    )


@dataclass
class _Run:
    gallery: Gallery
    models: list[str]
    skipped: list[Skipped]
    unchanged: int = 0
    scanned: list[ScannedPhoto] = field(default_factory=list)
    faces_added: int = 0
    vectors_added: dict[str, int] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [q.library_key(m) for m in self.models]


def _drop_other_weights(state: _Run) -> None:
    """Library vectors made with other weights than the embedder's now (after ``reembed`` or a weights change) are
    deleted, so this scan embeds those faces again from their stored boxes: one index never mixes two weights."""
    for model in state.models:
        sha = state.gallery.embedder(model).weights.sha256
        with state.gallery.session() as s:
            held = q.weights_in_store(s, q.library_key(model))
        if held and held != (sha,):
            with state.gallery.writing() as w:
                w.removed({q.library_key(model): q.delete_library_vectors(w.session, model)})
            log.warning("the library's %s vectors were made with other weights: embedding them again", model)


def _remove_gone(state: _Run, root_key: str, present: set[str]) -> list[str]:
    """Delete the library photos under ``root_key`` whose file is no longer there (one transaction)."""
    prefix = os.fsencode(key_path(root_key)).rstrip(b"/") + b"/"
    with state.gallery.session() as s:
        stored = {p: i for p, i in q.library_paths(s).items() if os.fsencode(key_path(p)).startswith(prefix)}
    gone = sorted(p for p in stored if p not in present and not os.path.lexists(key_path(p)))
    if gone:
        with state.gallery.writing(state.keys) as w:
            w.removed(q.delete_library_photos(w.session, [stored[p] for p in gone]))
        log.info("removed %d library photo(s) that are gone from %s", len(gone), key_name(root_key))
    return [key_name(p) for p in gone]


def _plan(s, job: PhotoJob, sha: str, size: int, models: Sequence[str]) -> _Item | None:
    photo = q.library_photo_at(s, job.key)
    item = _Item(job=job, sha256=sha, size_bytes=size, models=set(models))
    if photo is None:
        return item
    if photo.sha256 != sha:
        item.replaces = photo.id
        return item
    faces = q.library_faces_of_photo(s, photo.id)
    if not faces:  # no face was found in it: done, whichever embedders are asked for
        return None
    item.models -= q.library_embedded_models(s, photo.id)
    if not item.models:
        return None
    item.face_ids = [f.id for f in faces]
    item.faces = [stored_face(f) for f in faces]
    return item


def _prepare(state: _Run, jobs: Sequence[PhotoJob]) -> _Chunk:
    """Hash, plan, decode and detect one chunk (runs in the prefetch thread)."""
    out = _Chunk()
    todo, out.skipped, out.unchanged = load_planned(
        state.gallery, jobs, lambda s, job, sha, size: _plan(s, job, sha, size, state.models))
    detect = [it for it in todo if it.face_ids is None]
    found = state.gallery.detector.detect_batch([it.image for it in detect]) if detect else []
    for it, faces in zip(detect, found):
        it.faces = state.gallery.confident(faces)
    for it in todo:  # cut here, in the background thread, like enrollment's crops
        for model in it.models:
            emb = state.gallery.embedder(model)
            it.crops[model] = [emb.crop(it.image, f) for f in it.faces]
    out.items = todo
    return out


def _vectors(state: _Run, items: list[_Item]) -> dict[str, list[np.ndarray | None]]:
    """model -> per item, its faces' vectors (None where the item does not need the model). The chips were cut
    in the prefetch thread; each model embeds the whole chunk's chips in one batched call."""
    out: dict[str, list[np.ndarray | None]] = {}
    for model in state.models:
        emb = state.gallery.embedder(model)
        todo = [i for i, it in enumerate(items) if model in it.models]
        crops = [c for i in todo for c in items[i].crops.pop(model)]
        vecs = chip_vectors(emb, crops, state.gallery.settings.batch_size)
        per: list[np.ndarray | None] = [None] * len(items)
        offset = 0
        for i in todo:
            n = len(items[i].faces)
            per[i] = vecs[offset:offset + n]
            offset += n
        out[model] = per
    return out


def _write_chunk(state: _Run, root_key: str, items: list[_Item]) -> None:
    vectors = _vectors(state, items)
    good = []
    for i, it in enumerate(items):
        bad = [(m, vector_problem(v, state.gallery.embedder(m).dim)) for m in it.models
               if (v := vectors[m][i]) is not None and len(v)]
        bad = [(m, why) for m, why in bad if why is not None]
        if bad:
            state.skipped.append(Skipped(it.job.name, f"the {bad[0][0]} embedding {bad[0][1]} (check the weights)"))
        else:
            good.append((i, it))
    try:
        _commit(state, root_key, good, vectors)
    except StoreWriteError as exc:
        if len(good) <= 1:
            state.skipped.extend(Skipped(it.job.name, str(exc)) for _, it in good)
            return
        for one in good:
            try:
                _commit(state, root_key, [one], vectors)
            except StoreWriteError as exc_one:
                state.skipped.append(Skipped(one[1].job.name, str(exc_one)))


def _commit(state: _Run, root_key: str, items: list[tuple[int, _Item]], vectors) -> None:
    if not items:
        return
    gallery = state.gallery
    added: dict[str, int] = {}
    faces_added = 0
    with gallery.writing(state.keys) as w:
        for i, it in items:
            face_ids = it.face_ids
            if face_ids is None:
                if it.replaces is not None:
                    w.removed(q.delete_library_photos(w.session, [it.replaces]))
                photo_id = q.add_library_photo(
                    w.session, root=root_key, path=it.job.key, sha256=it.sha256, size_bytes=it.size_bytes,
                    width=it.image.width, height=it.image.height, faces_detected=len(it.faces))
                face_ids = [q.add_library_face(w.session, photo_id, f.box, float(f.prob), f.landmarks)
                            for f in it.faces]
                faces_added += len(face_ids)
            for model in it.models:
                vecs = vectors[model][i]
                if vecs is None or not len(vecs):
                    continue
                sha = gallery.embedder(model).weights.sha256
                ids = q.add_library_embeddings(w.session, model, sha, face_ids, vecs)
                w.added(q.library_key(model), ids, vecs, sha)
                added[model] = added.get(model, 0) + len(ids)
    state.faces_added += faces_added
    for model, n in added.items():
        state.vectors_added[model] = state.vectors_added.get(model, 0) + n
    for _, it in items:
        state.scanned.append(ScannedPhoto(it.job.name, len(it.faces), tuple(sorted(it.models)),
                                          it.replaces is not None))
