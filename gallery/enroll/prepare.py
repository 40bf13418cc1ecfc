"""The front half of enrollment: hash, decide what each photo needs, decode and detect, chunk by chunk.

:func:`prepare_chunks` runs this in a background thread (:mod:`gallery.prefetch`) while the caller embeds and
writes the previous chunk. An optional ``finish`` step also runs in that thread (enrollment uses it to cut and
augment the crops, ~20 ms per copy), so the consuming thread is left with the forward passes and the writes.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field

from PIL import Image
from tqdm import tqdm

from db import queries as q
from gallery.enroll.scan import PhotoJob, legacy_key
from gallery.prefetch import batched, prefetch
from gallery.results import Skipped
from gallery.store import Gallery
from indexer.detect import DetectedFace, whole_image_face
from indexer.images import ImageLoadError, check_image_file, file_sha256, load_image

log = logging.getLogger(__name__)

NO_FACE = "no face detected"


@dataclass
class Prepared:
    job: PhotoJob
    image: Image.Image
    sha256: str
    size_bytes: int
    models_needed: set[str]
    face: DetectedFace | None = None
    faces_detected: int = 0
    existing_face_id: int | None = None
    replaces_photo_id: int | None = None
    crops: dict[str, list[Image.Image]] = field(default_factory=dict)  # per model, filled by a ``finish`` step


@dataclass
class PreparedChunk:
    items: list[Prepared] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unchanged: int = 0


def hash_job(job: PhotoJob) -> tuple[str, int]:
    """The sha256 and size of the job's bytes or file (a missing, special or unreadable file: ImageLoadError)."""
    if isinstance(job.source, bytes):
        return hashlib.sha256(job.source).hexdigest(), len(job.source)
    size = check_image_file(job.source, job.name)  # a FIFO or device would block the hash below
    try:
        return file_sha256(job.source), size
    except OSError as exc:
        raise ImageLoadError(job.name, (exc.strerror or str(exc)).lower()) from exc


def _plan(s, job: PhotoJob, sha: str, size: int, models: Sequence[str]) -> Prepared | None:
    """Decide what the photo needs; None when it is unchanged and complete."""
    photo = q.photo_of(s, job.person, job.key)
    item = Prepared(job=job, image=None, sha256=sha, size_bytes=size, models_needed=set(models))
    if photo is None:
        legacy = legacy_key(job.key)
        old = q.photo_of(s, job.person, legacy) if legacy is not None else None
        if old is not None and old.sha256 == sha:  # stored by an older version under its lossy name: move it
            item.replaces_photo_id = old.id
        return item
    if photo.sha256 != sha:
        item.replaces_photo_id = photo.id
        return item
    item.models_needed -= q.embedded_models(s, photo.id)
    if not item.models_needed:
        return None
    face = q.first_face(s, photo.id)
    if face is None:  # a photo row without its face cannot come from a committed enroll; redo it whole
        item.replaces_photo_id = photo.id
        return item
    item.existing_face_id = face.id
    item.faces_detected = photo.faces_detected
    item.face = stored_face(face)
    return item


def stored_face(face) -> DetectedFace:
    """A stored face row (enrolled or library) as the detector reported it (box, probability, landmarks): crops
    need no re-detection."""
    return DetectedFace(
        box=face.box, prob=face.prob, landmarks=tuple(tuple(p) for p in face.landmarks) if face.landmarks else None,
        fallback=getattr(face, "fallback", False),
    )


def load_planned(gallery: Gallery, jobs: Sequence[PhotoJob], plan: Callable) -> tuple[list, list[Skipped], int]:
    """Hash each job, ask ``plan(session, job, sha256, size)`` what it needs (None: unchanged and complete, only
    counted), and decode the image of every job that needs work into its item's ``image``. Returns (items,
    skipped, unchanged); a file that cannot be read or decoded is a skipped entry with the reason (enroll, scan)."""
    items, skipped, unchanged = [], [], 0
    with gallery.session() as s:
        for job in jobs:
            try:
                sha, size = hash_job(job)
                item = plan(s, job, sha, size)
                if item is None:
                    unchanged += 1
                    continue
                item.image = load_image(job.source, name=job.name)
            except ImageLoadError as exc:
                skipped.append(Skipped(job.name, exc.reason))
                continue
            items.append(item)
    return items, skipped, unchanged


def prepare_chunk(
    gallery: Gallery, jobs: Sequence[PhotoJob], models: Sequence[str], whole_image_fallback: bool
) -> PreparedChunk:
    out = PreparedChunk()
    todo, out.skipped, out.unchanged = load_planned(
        gallery, jobs, lambda s, job, sha, size: _plan(s, job, sha, size, models))
    need_detect = [it for it in todo if it.face is None]
    detections = gallery.detector.detect_batch([it.image for it in need_detect]) if need_detect else []
    for it, faces in zip(need_detect, detections):
        sure = gallery.confident(faces)
        it.faces_detected = len(sure)
        if sure:
            it.face = sure[0]  # largest confident face; the others are reported through faces_detected
        elif faces:
            it.face = max(faces, key=lambda f: f.prob)  # low-confidence: reported as such
            it.faces_detected = 1
        elif whole_image_fallback:
            it.face = whole_image_face(it.image)
    for it in todo:
        if it.face is None:
            out.skipped.append(Skipped(it.job.name, NO_FACE))
        else:
            out.items.append(it)
    return out


def prepare_chunks(
    gallery: Gallery, jobs: Sequence[PhotoJob], models: Sequence[str], chunk: int, whole_image_fallback: bool,
    finish: Callable[[PreparedChunk], None] | None = None,
) -> Iterator[PreparedChunk]:
    """Yield prepared chunks of ``jobs``, preparing the next one (and running ``finish`` on it, e.g. cutting
    the crops) in a background thread while the caller embeds and writes this one."""
    def work(part: Sequence[PhotoJob]) -> tuple[PreparedChunk, int]:
        prepared = prepare_chunk(gallery, part, models, whole_image_fallback)
        if finish is not None:
            finish(prepared)
        return prepared, len(part)

    chunks = prefetch(batched(jobs, chunk), work, name="facegallery-enroll")
    with closing(chunks), progress_bar(gallery, len(jobs), "enroll") as bar:
        for prepared, n in chunks:
            yield prepared
            bar.update(n)


def progress_bar(gallery: Gallery, total: int, desc: str) -> tqdm:
    """A photo progress bar on stderr (off with ``Settings.progress`` false or when stderr is not a TTY)."""
    return tqdm(total=total, unit="photo", desc=desc, disable=None if gallery.settings.progress else True)
