"""The front half of enrollment: hash, decode and detect photos chunk by chunk in a background thread.

While the caller embeds and writes chunk N, this thread already prepares chunk N+1 (torch and Pillow release
the GIL for their heavy work), and only ``prefetch`` chunks are ever held, so memory stays flat however large
the folder is. An optional ``finish`` step also runs in that thread (enrollment uses it to cut and augment the
crops, ~20 ms per copy), so the consuming thread is left with the embedding forward passes and the writes.

"Flat" needs one more thing on glibc: images and tensors are allocated in one thread and freed in another, and
the freed memory stays fragmented in malloc's per-thread arenas (RSS grew ~300 MB from 200 to 1,000 photos).
Each finished chunk therefore hands free memory back with ``malloc_trim`` (a no-op elsewhere).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from PIL import Image
from sqlalchemy import select
from tqdm import tqdm

from db import queries as q
from db.models import Face, Person, Photo
from gallery.scan import PhotoJob, Skipped, display
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
    size = check_image_file(job.source, display(job.key))  # a FIFO or device would block the hash below
    try:
        return file_sha256(job.source), size
    except OSError as exc:
        raise ImageLoadError(display(job.key), (exc.strerror or str(exc)).lower()) from exc


def _plan(s, job: PhotoJob, sha: str, size: int, models: Sequence[str]) -> Prepared | None:
    """Decide what the photo needs; None when it is unchanged and complete."""
    photo = s.scalar(
        select(Photo).join(Person, Person.id == Photo.person_id).where(Person.name == job.person, Photo.path == job.key)
    )
    item = Prepared(job=job, image=None, sha256=sha, size_bytes=size, models_needed=set(models))
    if photo is None:
        return item
    if photo.sha256 != sha:
        item.replaces_photo_id = photo.id
        return item
    item.models_needed -= q.embedded_models(s, photo.id)
    if not item.models_needed:
        return None
    face = s.scalar(select(Face).where(Face.photo_id == photo.id).order_by(Face.id).limit(1))
    if face is None:  # a photo row without its face cannot come from a committed enroll; redo it whole
        item.replaces_photo_id = photo.id
        return item
    item.existing_face_id = face.id
    item.faces_detected = photo.faces_detected
    item.face = stored_face(face)
    return item


def stored_face(face: Face) -> DetectedFace:
    """A stored face row as the detector reported it (box, probability, landmarks): crops need no re-detection."""
    return DetectedFace(
        box=(face.x1, face.y1, face.x2, face.y2), prob=face.prob,
        landmarks=tuple(tuple(p) for p in face.landmarks) if face.landmarks else None, fallback=face.fallback,
    )


def prepare_chunk(
    gallery: Gallery, jobs: Sequence[PhotoJob], models: Sequence[str], whole_image_fallback: bool
) -> PreparedChunk:
    out = PreparedChunk()
    todo: list[Prepared] = []
    with gallery.session() as s:
        for job in jobs:
            try:
                sha, size = hash_job(job)
                item = _plan(s, job, sha, size, models)
                if item is None:
                    out.unchanged += 1
                    continue
                item.image = load_image(job.source, name=display(job.key))
            except ImageLoadError as exc:
                out.skipped.append(Skipped(display(job.key), exc.reason))
                continue
            todo.append(item)
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
            out.skipped.append(Skipped(display(it.job.key), NO_FACE))
        else:
            out.items.append(it)
    return out


def prepare_chunks(
    gallery: Gallery, jobs: Sequence[PhotoJob], models: Sequence[str], chunk: int, whole_image_fallback: bool,
    prefetch: int = 1, finish: Callable[[PreparedChunk], None] | None = None,
    prepare: Callable[[Sequence], object] | None = None, desc: str = "enroll",
) -> Iterator[PreparedChunk]:
    """Yield prepared chunks, preparing the next one (and running ``finish`` on it) in a background thread.

    ``prepare`` replaces :func:`prepare_chunk` for other per-photo work (re-embedding reads stored photos).
    """
    results: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    bar = tqdm(total=len(jobs), unit="photo", desc=desc, disable=None if gallery.settings.progress else True)

    def work() -> None:
        try:
            for start in range(0, len(jobs), chunk):
                if stop.is_set():
                    return
                part = jobs[start : start + chunk]
                if prepare is not None:
                    prepared = prepare(part)
                else:
                    prepared = prepare_chunk(gallery, part, models, whole_image_fallback)
                if finish is not None:
                    finish(prepared)
                results.put(("ok", prepared, len(part)))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            results.put(("error", exc, 0))
        finally:
            results.put(("done", None, 0))

    thread = threading.Thread(target=work, name="facegallery-prepare", daemon=True)
    thread.start()
    try:
        while True:
            kind, value, n = results.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
            bar.update(n)
            release_free_memory()
    finally:
        stop.set()
        while thread.is_alive():  # drain so the worker is never stuck on a full queue
            try:
                results.get(timeout=0.1)
            except queue.Empty:
                pass
        bar.close()


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Return memory freed by this process to the OS where the C library can (glibc's ``malloc_trim``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
