"""Re-embedding a gallery's stored faces with the weights loaded now (after importing other weights).

Nothing is detected again: each stored photo is re-opened from its stored path and checked against its sha256,
and every stored vector is recomputed from the stored face box with the embedder's own crop and the augmented
copies enrollment made (same per-photo seed and aug indices). New vectors go to a temporary memmap in the index
folder (a ``.tmp`` name the store sweeps after a crash); the database changes only in one final transaction that
swaps every vector and weights hash, drops the rows of photos whose source is gone, changed or unreadable, drops
calibrated thresholds and bumps each generation (FAISS files and trained heads go stale). Until that commit the
gallery is exactly as before: an interrupt loses time, never data, and no embedder holds vectors of two weights.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from db import queries as q
from gallery.calibration.curve import forget_curves
from gallery.calibration.thresholds import setting_key
from gallery.enroll.enroll import chunk_size, face_copies
from gallery.enroll.prepare import hash_job, progress_bar, stored_face
from gallery.enroll.scan import PhotoJob, key_name, key_path, source_key
from gallery.errors import GalleryError, SourcesMissingError
from gallery.heads.train import head_path
from gallery.prefetch import batched, prefetch
from gallery.results import Skipped
from gallery.store import Gallery
from gallery.vectors import vector_problem
from indexer.detect import DetectedFace
from indexer.embedders import available_embedders
from indexer.embedders.weights import WeightsNotFoundError
from indexer.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

UPLOAD_REASON = "uploaded image: its file is not kept (enroll it again)"


@dataclass(frozen=True)
class ModelReembed:
    model: str
    old_weights: tuple[str, ...]
    new_weights: str
    photos: int
    vectors: int
    vectors_removed: int
    photos_removed: int
    skipped: tuple[Skipped, ...]
    generation: int
    threshold_dropped: float | None = None
    head_stale: bool = False
    random_weights: bool = False

    def to_dict(self) -> dict:
        return asdict(self)  # nested Skipped become dicts; tuples are JSON arrays


@dataclass(frozen=True)
class ReembedReport:
    reembedded: tuple[ModelReembed, ...]
    up_to_date: tuple[str, ...]
    models_skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def vectors(self) -> int:
        return sum(m.vectors for m in self.reembedded)

    def to_dict(self) -> dict:
        return {**asdict(self), "vectors": self.vectors}


@dataclass
class _PhotoPlan:
    photo_id: int
    path: str
    sha256: str
    faces: dict[int, DetectedFace] = field(default_factory=dict)
    rows: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # model -> (face id, aug, position)


@dataclass
class _Run:
    gallery: Gallery
    models: list[str]
    seed: int
    batch_size: int
    plans: list[_PhotoPlan]
    ids: dict[str, np.ndarray]  # model -> embedding id at each memmap position
    old: dict[str, tuple[str, ...]]  # model -> the weights sha256s its stored vectors held before
    out: dict[str, np.ndarray] = field(default_factory=dict)
    done: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[int, Skipped] = field(default_factory=dict)  # photo id -> why its source cannot be used
    scratch: list[Path] = field(default_factory=list)


def reembed(gallery: Gallery, models: Sequence[str] | None = None, *, batch_size: int | None = None,
            force: bool = False, seed: int = 0, chunk: int | None = None,
            drop_missing: bool = False) -> ReembedReport:
    """Recompute every stored vector of each chosen embedder (default: every one in the gallery) whose stored
    weights differ from the loaded ones (``force``: regardless). ``seed`` is the ``--seed`` enrollment used.

    A photo whose source cannot be re-read (moved, changed, an upload) stops the run with
    :class:`SourcesMissingError` and nothing changed, unless ``drop_missing``: then its vectors of the embedders
    whose weights changed are deleted (they cannot be recomputed and the old ones no longer match). Vectors
    made with the weights loaded now are never deleted.
    """
    start = time.perf_counter()
    with gallery.write_lock():
        todo, up_to_date, models_skipped = _choose(gallery, models, force)
        if not todo:
            return ReembedReport((), tuple(up_to_date), models_skipped, time.perf_counter() - start)
        run = _plan(gallery, todo, seed, batch_size or gallery.settings.batch_size)
        if not drop_missing:
            _refuse_missing(run, {p.photo_id: w for p in run.plans if (w := _quick_check(p)) is not None})
        try:
            _allocate(run)
            _compute(run, chunk or chunk_size(gallery))
            if not drop_missing:
                _refuse_missing(run, run.skipped)
            stats, emptied = _commit(run)
        finally:
            run.out.clear()  # drop the memmaps before their files
            for path in run.scratch:
                path.unlink(missing_ok=True)
        for m in run.models:
            gallery.index(m)  # rebuilt from the new vectors and saved now, not by the next reader
        # their FAR/FRR curves went with the thresholds (readers also ignore curves of other weights)
        forget_curves(gallery.settings.home, [m for m in run.models if stats[m][3] is not None])
    done = tuple(_model_report(run, m, stats[m], emptied) for m in run.models)
    return ReembedReport(done, tuple(up_to_date), models_skipped, time.perf_counter() - start)


def _quick_check(plan: _PhotoPlan) -> Skipped | None:
    """The cheap part of the source check, before any work: uploads and files that are not there."""
    if plan.path.startswith("upload:"):
        return Skipped(plan.path, UPLOAD_REASON)
    source = source_key(plan.path)  # a face named from the library: its library photo
    return None if key_path(source).is_file() else Skipped(key_name(source), "file not found")


def _refuse_missing(run: _Run, missing: dict[int, Skipped]) -> None:
    if missing:
        first = next(iter(missing.values()))
        raise SourcesMissingError(
            f"{len(missing)} of {len(run.plans)} photos cannot be re-read (e.g. {first.path}: {first.reason}); "
            f"nothing was changed. Restore them, or run with --drop-missing to delete their "
            f"{'/'.join(run.models)} vectors")


def _choose(gallery: Gallery, models: Sequence[str] | None, force: bool):
    """(model -> the weights sha256s its vectors hold now, for those with work; up to date; skipped -> why)."""
    known, held = available_embedders(), set(gallery.models_in_store())
    todo: dict[str, tuple[str, ...]] = {}
    up_to_date: list[str] = []
    skipped: dict[str, str] = {}
    for m in dict.fromkeys(models) if models else sorted(held.intersection(known)):
        if m not in known:
            raise GalleryError(f"unknown model {m!r}; known: {', '.join(known)}")
        if m not in held:
            skipped[m] = f"the gallery holds no {m} vectors"
            continue
        try:
            sha = gallery.embedder(m).weights.sha256
        except WeightsNotFoundError as exc:
            if models:
                raise
            skipped[m] = str(exc)
            continue
        with gallery.session() as s:
            stored = q.weights_in_store(s, m)
        if force or stored != (sha,):
            todo[m] = stored
        else:
            up_to_date.append(m)
    return todo, up_to_date, skipped


def _plan(gallery: Gallery, old: dict[str, tuple[str, ...]], seed: int, batch_size: int) -> _Run:
    """Every stored row of the models in ``old``, grouped by photo, with its position in the scratch arrays."""
    models = list(old)
    plans: dict[int, _PhotoPlan] = {}
    ids: dict[str, list[int]] = {m: [] for m in models}
    with gallery.session() as s:
        for emb_id, model, aug, face, photo in q.stored_embeddings(s, models):
            plan = plans.setdefault(photo.id, _PhotoPlan(photo.id, photo.path, photo.sha256))
            plan.faces.setdefault(face.id, stored_face(face))
            plan.rows.setdefault(model, []).append((face.id, aug, len(ids[model])))
            ids[model].append(emb_id)
    return _Run(gallery, models, seed, batch_size, sorted(plans.values(), key=lambda p: p.path),
                {m: np.array(v, np.int64) for m, v in ids.items()}, old)


def _allocate(run: _Run) -> None:
    """One float32 memmap per model in the index folder, so memory stays flat however large the gallery is."""
    folder = run.gallery.settings.index_dir
    folder.mkdir(parents=True, exist_ok=True)
    for m in run.models:
        name = folder / f".{m}.reembed.{os.getpid()}.tmp.npy"  # we hold the write lock: no other writer's name
        run.scratch.append(name)
        shape = (len(run.ids[m]), int(run.gallery.embedder(m).dim))
        run.out[m] = np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=shape)
        run.done[m] = np.zeros(len(run.ids[m]), bool)


def _compute(run: _Run, chunk: int) -> None:
    chunks = prefetch(batched(run.plans, chunk), partial(_load_chunk, run), name="facegallery-reembed")
    with closing(chunks), progress_bar(run.gallery, len(run.plans), "reembed") as bar:
        # closing: an error here stops the prefetch thread now, not when the traceback is freed
        for items, skipped in chunks:
            for plan, why in skipped:
                log.warning("not re-embedding %s: %s", why.path, why.reason)
                run.skipped[plan.photo_id] = why
            if items:
                _embed_chunk(run, items)
            bar.update(len(items) + len(skipped))


_Loaded = tuple[list[tuple[_PhotoPlan, dict[str, list]]], list[tuple[_PhotoPlan, Skipped]]]


def _load_chunk(run: _Run, plans: Sequence[_PhotoPlan]) -> _Loaded:
    """(plan, model -> crops) per usable photo and (plan, Skipped) per other one; runs in the prefetch thread."""
    items, skipped = [], []
    for plan in plans:
        try:
            image = _open_source(plan)
        except ImageLoadError as exc:
            skipped.append((plan, Skipped(key_name(plan.path), exc.reason)))
            continue
        items.append((plan, {m: _plan_crops(run, m, plan, image) for m in plan.rows}))
    return items, skipped


def _open_source(plan: _PhotoPlan):
    if plan.path.startswith("upload:"):  # the key of a photo enrolled from uploaded bytes (enroll_images)
        raise ImageLoadError(plan.path, UPLOAD_REASON)
    source = source_key(plan.path)
    job = PhotoJob(person="", key=source, source=key_path(source))
    sha, _ = hash_job(job)
    if sha != plan.sha256:
        raise ImageLoadError(job.name, "source file changed since enrollment (sha256 differs)")
    return load_image(job.source, name=job.name)


def _plan_crops(run: _Run, model: str, plan: _PhotoPlan, image) -> list:
    """The crop or augmented copy behind each stored row of ``model``, in the plan's row order."""
    emb = run.gallery.embedder(model)
    rows = plan.rows[model]
    copies: dict[int, list] = {}
    for face_id in dict.fromkeys(f for f, _, _ in rows):
        k = max(a for f, a, _ in rows if f == face_id)
        copies[face_id] = face_copies(emb, image, plan.faces[face_id], k, run.seed, plan.sha256)
    return [copies[f][a] for f, a, _ in rows]


def _embed_chunk(run: _Run, items: list[tuple[_PhotoPlan, dict[str, list]]]) -> None:
    """Embed one chunk's crops per model into the scratch arrays."""
    for m in run.models:
        crops, positions = [], []
        for plan, per_model in items:
            if m in per_model:
                crops.extend(per_model[m])
                positions.extend(p for _, _, p in plan.rows[m])
        if not crops:
            continue
        emb = run.gallery.embedder(m)
        vecs = emb.embed_crops(crops, batch_size=run.batch_size)
        problem = vector_problem(vecs, emb.dim)
        if problem is not None:  # before anything is written: the gallery stays exactly as it was
            raise GalleryError(f"the {m} weights loaded now ({emb.weights.source}) make unusable vectors: an "
                               f"embedding {problem}; nothing was changed. Check or re-import the {m} weights")
        run.out[m][positions] = vecs
        run.done[m][positions] = True


def _commit(run: _Run) -> tuple[dict[str, tuple[int, int, int, float | None]], set[int]]:
    """The one write: model -> (vectors written, rows removed, generation, threshold dropped); emptied photos."""
    stats = {}
    with run.gallery.writing() as w:
        s = w.session
        for m in run.models:
            written = _write_vectors(s, run, m)
            sha = run.gallery.embedder(m).weights.sha256
            changed = run.old[m] != (sha,)
            gone = run.ids[m][~run.done[m]] if changed else run.ids[m][:0]  # same weights: old rows still valid
            q.delete_embeddings(s, gone)
            dropped = q.delete_setting(s, setting_key(m)) if changed else None  # same weights: still valid
            w.replaced(m, sha)
            stats[m] = [written, len(gone), 0, None if dropped is None else float(dropped)]
            log.info("re-embedded %d %s vectors; %d removed (photos skipped)", written, m, len(gone))
        emptied = {pid for pid in run.skipped if not q.embedded_models(s, pid)}  # no vector left: the photo goes
        for pid in emptied:
            w.removed(q.delete_photo_by_id(s, pid))
    with run.gallery.session() as s:
        for m in run.models:
            stats[m][2] = q.generation(s, m)
    return {m: tuple(v) for m, v in stats.items()}, emptied


def _write_vectors(s, run: _Run, model: str) -> int:
    ids, out, done = run.ids[model], run.out[model], run.done[model]
    expected = sum(len(p.rows.get(model, ())) for p in run.plans if p.photo_id not in run.skipped)
    if int(done.sum()) != expected:  # never commit a half-done model
        raise GalleryError(f"internal error: {int(done.sum())} of {expected} {model} vectors computed")
    sha = run.gallery.embedder(model).weights.sha256
    sel = np.flatnonzero(done)
    for start in range(0, len(sel), 10_000):  # a slice of the memmap at a time: memory stays flat
        part = sel[start : start + 10_000]
        q.replace_vectors(s, ids[part], out[part], sha)
    return len(sel)


def _model_report(run: _Run, m: str, stats: tuple, emptied: set[int]) -> ModelReembed:
    written, removed, generation, dropped = stats
    had = [p for p in run.plans if m in p.rows]
    skipped = tuple(run.skipped[p.photo_id] for p in had if p.photo_id in run.skipped)
    photos_removed = sum(1 for p in had if p.photo_id in emptied)
    weights = run.gallery.embedder(m).weights
    return ModelReembed(m, run.old[m], weights.sha256, len(had) - len(skipped), written, removed, photos_removed,
                        skipped, generation, dropped, head_path(run.gallery, m).exists(), bool(weights.random))
