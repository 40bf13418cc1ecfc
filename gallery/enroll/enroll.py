"""Enrollment: photos of people -> detected face -> K augmented crops -> embeddings in the DB and FAISS.

Detection runs once per photo; augmentation works on each embedder's own aligned crop (copy 0 is the crop itself).
Work goes in chunks: a background thread hashes, decodes, detects, crops and augments the next chunk while the
current one is embedded, and each chunk is written in one transaction, so an interrupted run keeps every finished
chunk and nothing half-written. Re-running is incremental: an unchanged photo (same path, same sha256, every
requested embedder present) is left alone, a changed one is replaced, missing embedders are added from the stored
face.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from db import queries as q
from gallery.enroll.prepare import Prepared, PreparedChunk, prepare_chunks
from gallery.enroll.scan import PhotoJob, name_problem, person_name, scan_people_dir
from gallery.errors import InvalidInputError, StoreWriteError
from gallery.manage.models import resolve_models
from gallery.results import Skipped, display
from gallery.store import Gallery
from gallery.vectors import vector_problem
from gallery.writing import Write
from indexer.augment import aug_seed
from indexer.augment import augment as augment_crop
from indexer.devices import resolve_device, runs_on_cpu

log = logging.getLogger(__name__)

CHUNK = 16
CHUNK_CUDA = 256  # a GPU wants larger detection and embedding batches; memory still bounded by two chunks


@dataclass(frozen=True)
class EnrolledPhoto:
    person: str
    path: str
    box: tuple[float, float, float, float]
    faces_detected: int
    fallback: bool
    models: tuple[str, ...]
    det_prob: float = 1.0
    low_confidence: bool = False

    def to_dict(self) -> dict:
        return {
            "person": self.person, "path": self.path, "box": [round(v, 1) for v in self.box],
            "det_prob": round(self.det_prob, 4), "faces_detected": self.faces_detected, "fallback": self.fallback,
            "low_confidence": self.low_confidence, "models": list(self.models),
        }


@dataclass(frozen=True)
class EnrollReport:
    enrolled: list[EnrolledPhoto]
    skipped: list[Skipped]
    unchanged: int
    embeddings_added: dict[str, int]
    models: tuple[str, ...]
    models_skipped: dict[str, str] = field(default_factory=dict)
    random_weights: tuple[str, ...] = ()
    people: tuple[str, ...] = ()
    augment: int = 0
    notes: tuple[str, ...] = ()

    @property
    def multi_face(self) -> list[EnrolledPhoto]:
        return [p for p in self.enrolled if p.faces_detected > 1]

    def to_dict(self) -> dict:
        return {
            "enrolled": [p.to_dict() for p in self.enrolled],
            "skipped": [s.to_dict() for s in self.skipped],
            "unchanged": self.unchanged,
            "embeddings_added": dict(self.embeddings_added),
            "models": list(self.models),
            "models_skipped": dict(self.models_skipped),
            "random_weights": list(self.random_weights),
            "multi_face": [{"path": p.path, "faces": p.faces_detected} for p in self.multi_face],
            "people": list(self.people),
            "augment": self.augment,
            "notes": list(self.notes),
        }


def enroll_folder(
    gallery: Gallery,
    people_dir: str | Path,
    *,
    models: Sequence[str] | None = None,
    augment: int = 4,
    seed: int = 0,
    whole_image_fallback: bool = False,
    follow_symlinks: bool = False,
) -> EnrollReport:
    """Enroll every ``people_dir/<person>/<photo>``; see the module docstring for what is incremental.
    Symbolic links leading out of ``people_dir`` are skipped unless ``follow_symlinks``."""
    root = Path(people_dir)
    if not root.is_dir():
        raise InvalidInputError(f"{display(root)}: not a folder (expected one sub-folder per person)")
    notes: list[str] = []
    jobs, skipped, people = scan_people_dir(root, follow_symlinks=follow_symlinks, notes=notes)
    rep = enroll_jobs(
        gallery, jobs, models=models, augment=augment, seed=seed, whole_image_fallback=whole_image_fallback,
        skipped=skipped, people=people,
    )
    return replace(rep, notes=rep.notes + tuple(notes))


def enroll_images(
    gallery: Gallery, person: str, images: Iterable[tuple[str, bytes | Path]], **options
) -> EnrollReport:
    """Enroll uploaded images (``(file name, bytes or path)`` pairs) for one person."""
    person = person_name(person)
    problem = name_problem(person)
    if problem is not None:
        raise InvalidInputError(problem)
    jobs = [PhotoJob(person=person, key=f"upload:{name}", source=src) for name, src in images]
    return enroll_jobs(gallery, jobs, people=[person], **options)


def enroll_jobs(
    gallery: Gallery,
    jobs: list[PhotoJob],
    *,
    models: Sequence[str] | None = None,
    augment: int = 4,
    seed: int = 0,
    whole_image_fallback: bool = False,
    skipped: list[Skipped] | None = None,
    people: Sequence[str] = (),
) -> EnrollReport:
    if augment < 0:
        raise InvalidInputError("--augment must be >= 0")
    gallery.create()  # the first enroll makes the gallery
    chosen, models_skipped = resolve_models(gallery, models)
    jobs, repeated = _distinct(jobs)
    state = _RunState(gallery, chosen, augment, seed, list(skipped or []) + repeated)
    with gallery.write_lock():  # held across chunks: index files are saved once, when it is released
        chunks = prepare_chunks(gallery, jobs, chosen, chunk_size(gallery), whole_image_fallback,
                                finish=partial(_cut_crops, state))
        with closing(chunks):
            for chunk in chunks:
                state.skipped.extend(chunk.skipped)
                state.unchanged += chunk.unchanged
                if chunk.items:
                    _write_chunk(state, chunk.items)
    embedders = [gallery.embedder(m) for m in chosen]
    return EnrollReport(
        enrolled=state.enrolled, skipped=state.skipped, unchanged=state.unchanged,
        embeddings_added={m: state.added.get(m, 0) for m in chosen}, models=tuple(chosen),
        models_skipped=models_skipped,
        random_weights=tuple(e.name for e in embedders if e.weights.random),
        people=tuple(people), augment=augment,
    )


def _distinct(jobs: list[PhotoJob]) -> tuple[list[PhotoJob], list[Skipped]]:
    """The jobs with a stored path not seen before in this run, and a skipped entry for each repeat."""
    seen: set[tuple[str, str]] = set()
    out, repeated = [], []
    for job in jobs:
        if (job.person, job.key) in seen:
            repeated.append(Skipped(job.name, f"same stored path as another photo of {job.person} in this run"))
        else:
            seen.add((job.person, job.key))
            out.append(job)
    return out, repeated


def chunk_size(gallery: Gallery) -> int:
    if runs_on_cpu(gallery.settings.device):  # decided without importing torch (the CPU path never needs it)
        return CHUNK
    return CHUNK_CUDA if resolve_device(gallery.settings.device).type == "cuda" else CHUNK


@dataclass
class _RunState:
    gallery: Gallery
    models: list[str]
    augment: int
    seed: int
    skipped: list[Skipped]
    unchanged: int = 0
    enrolled: list[EnrolledPhoto] = field(default_factory=list)
    added: dict[str, int] = field(default_factory=dict)


def _cut_crops(state: _RunState, chunk: PreparedChunk) -> None:
    """Fill each item's crops (the face crop, then its K augmented copies) for every model it needs."""
    for it in chunk.items:
        for model in state.models:
            if model in it.models_needed:
                it.crops[model] = _item_crops(state, model, it)


def _item_crops(state: _RunState, model: str, it: Prepared) -> list:
    return face_copies(state.gallery.embedder(model), it.image, it.face, state.augment, state.seed, it.sha256)


def face_copies(embedder, image, face, augment: int, seed: int, sha256: str) -> list:
    """What enrollment embeds for one face: the embedder's crop (aug index 0), then its ``augment`` copies,
    seeded per photo from the run seed and the photo's sha256."""
    crop = embedder.crop(image, face)
    return [crop] + augment_crop(crop, augment, aug_seed(seed, sha256))


def _embed_chunk(state: _RunState, items: list[Prepared]) -> dict[str, list[np.ndarray]]:
    """Per model, per item: the (1 + K, dim) embeddings of the face crop and its augmented copies."""
    out: dict[str, list[np.ndarray]] = {}
    for model in state.models:
        emb = state.gallery.embedder(model)
        todo = [i for i, it in enumerate(items) if model in it.models_needed]
        crops, sizes = [], []
        for i in todo:
            it = items[i]
            copies = it.crops.pop(model, None) or _item_crops(state, model, it)
            crops.extend(copies)
            sizes.append(len(copies))
        vecs = emb.embed_crops(crops, batch_size=state.gallery.settings.batch_size) if crops else None
        per_item: list[np.ndarray | None] = [None] * len(items)
        offset = 0
        for i, n in zip(todo, sizes):
            per_item[i] = vecs[offset : offset + n]
            offset += n
        out[model] = per_item
    return out


def _write_chunk(state: _RunState, items: list[Prepared]) -> None:
    """One chunk, one transaction: each photo's face row (a replaced photo's old rows deleted) and its vectors.

    Vectors are checked first: a photo with an unusable one (NaN from bad weights, a wrong size, a zero vector)
    is skipped with the reason and nothing of it is written. When the database refuses the chunk (a constraint),
    its photos are written one transaction each, so only the photo at fault is skipped and the run goes on.
    """
    usable = _usable(state, items, _embed_chunk(state, items))
    try:
        _commit(state, usable)
    except StoreWriteError as exc:
        if len(usable) == 1:
            state.skipped.append(Skipped(usable[0][0].job.name, str(exc)))
            return
        log.warning("the database refused a chunk (%s); writing its photos one by one", exc)
        for one in usable:
            try:
                _commit(state, [one])
            except StoreWriteError as exc_one:
                state.skipped.append(Skipped(one[0].job.name, str(exc_one)))


def _commit(state: _RunState, items: list[tuple[Prepared, dict[str, np.ndarray]]]) -> None:
    gallery = state.gallery
    if not items:
        return
    added: dict[str, int] = {}
    with gallery.writing(state.models) as w:
        for it, vecs in items:
            face_id = _face_row(w, it)
            for model in it.models_needed:
                sha = gallery.embedder(model).weights.sha256
                ids = q.add_embeddings(w.session, face_id, model, sha, vecs[model])
                w.added(model, ids, vecs[model], sha)
                added[model] = added.get(model, 0) + len(ids)
    for model, n in added.items():  # counted once committed
        state.added[model] = state.added.get(model, 0) + n
    min_prob = gallery.settings.min_face_prob
    for it, _ in items:
        f = it.face
        state.enrolled.append(
            EnrolledPhoto(it.job.person, it.job.name, f.box, it.faces_detected, f.fallback,
                          tuple(sorted(it.models_needed)), float(f.prob), not f.fallback and f.prob < min_prob)
        )


def _usable(state: _RunState, items: list[Prepared], vectors: dict[str, list[np.ndarray]]
            ) -> list[tuple[Prepared, dict[str, np.ndarray]]]:
    """(item, model -> its vectors) for the items whose every vector is usable; the others become skipped."""
    out = []
    for i, it in enumerate(items):
        mine = {m: vectors[m][i] for m in it.models_needed}
        problems = [(m, vector_problem(v, state.gallery.embedder(m).dim)) for m, v in mine.items()]
        bad = [(m, why) for m, why in problems if why is not None]
        if bad:
            m, why = bad[0]
            log.warning("not enrolling %s: its %s embedding %s", it.job.name, m, why)
            state.skipped.append(Skipped(it.job.name, f"the {m} embedding {why} (check the {m} weights)"))
        else:
            out.append((it, mine))
    return out


def _face_row(w: Write, it: Prepared) -> int:
    """The id of the face row to attach new embeddings to: the stored one, or a new photo + face (replacing a
    changed photo, whose rows are deleted)."""
    if it.existing_face_id is not None:
        return it.existing_face_id
    if it.replaces_photo_id is not None:
        w.removed(q.delete_photo_by_id(w.session, it.replaces_photo_id))
    f = it.face
    return q.add_photo_with_face(
        w.session, it.job.person, path=it.job.key, sha256=it.sha256, size_bytes=it.size_bytes,
        width=it.image.width, height=it.image.height, faces_detected=it.faces_detected,
        box=f.box, prob=float(f.prob), landmarks=f.landmarks, fallback=f.fallback,
    )
