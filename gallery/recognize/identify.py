"""Who is in this photo: every face, every embedder, nearest-neighbour search with per-person aggregation.

Each face is described by the flip-averaged descriptor of its chip (the normalised mean of the chip's and the
mirrored chip's vectors, for embedders with ``flip_tta``: dlib) and scored against every person (``centroid``, the
default: cosine to the normalised mean of the person's enrolled crops, :mod:`gallery.recognize.centroids`; ``max``:
the best single stored vector; ``mean3``: the mean of a person's three best vectors). On the LFW open-set
protocol (benchmarks/open_set.py) the centroid and the flip raised TPIR at FPIR 1 % with 70 people from 0.927 (max,
no flip) to 0.967.

The threshold follows the gallery's size unless one is given or calibrated
(:func:`gallery.calibration.thresholds.identify_thresholds`). Faces of one photo are then assigned jointly
(Hungarian assignment on the face x person score matrix, scores under the threshold counting as no match) so that
nobody is named twice in a photo; a face that loses its best person gets its next best or ``unknown``.
``ambiguous`` means the assigned person beats the next candidate by less than the margin; ``low_quality`` that
the face is too small or blurred to be named (:mod:`gallery.recognize.quality`).
With ``whole_image_fallback`` a photo with no face found (a tight crop) is searched whole, marked ``fallback``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from db import queries as q
from gallery.calibration.thresholds import DEFAULT_MARGIN, DEFAULT_TARGET_FPIR, identify_thresholds
from gallery.errors import EmptyGalleryError, GalleryError
from gallery.heads.train import head_answers
from gallery.manage.models import check_weights_match
from gallery.prefetch import batched, prefetch
from gallery.recognize.centroids import centroid_scores, gallery_centroids
from gallery.recognize.quality import DEFAULT_RULE, QualityRule, face_blur
from gallery.recognize.scoring import flip_average
from gallery.results import (
    Candidate,
    FaceResult,
    IdentifyReport,
    ImageResult,
    ModelAnswer,
    display,
)
from gallery.store import Gallery
from indexer.detect import DetectedFace, whole_image_face
from indexer.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

AGGREGATES = ("centroid", "max", "mean3")
DEFAULT_AGGREGATE = "centroid"


def identify(
    gallery: Gallery,
    images: Sequence[str | Path | bytes | tuple[str, bytes]],
    *,
    models: Sequence[str] | None = None,
    threshold: float | dict[str, float] | None = None,
    top_k: int = 5,
    margin: float = DEFAULT_MARGIN,
    aggregate: str = DEFAULT_AGGREGATE,
    annotate_dir: str | Path | None = None,
    target_fpir: float = DEFAULT_TARGET_FPIR,
    whole_image_fallback: bool = False,
    quality: QualityRule = DEFAULT_RULE,
) -> IdentifyReport:
    """Identify every face in each image. Unreadable images become an ``ImageResult`` with ``error`` set.

    ``target_fpir``: the share of strangers the gallery-size threshold may name (when no threshold is given or
    calibrated). ``whole_image_fallback``: search the whole image when no face is found (tight crops)."""
    if aggregate not in AGGREGATES:
        raise GalleryError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
    if not 0.0 < target_fpir < 1.0:
        raise GalleryError(f"target FPIR must be between 0 and 1 (exclusive), got {target_fpir}")
    chosen = list(models) if models else gallery.models_in_store()
    if not chosen:
        raise EmptyGalleryError("the gallery is empty: enroll people first (facegallery enroll PEOPLE_DIR)")
    for m in chosen:
        check_weights_match(gallery, m)
    choice = identify_thresholds(gallery, chosen, threshold, target_fpir=target_fpir, aggregate=aggregate)
    thr = {m: (c.value, c.source) for m, c in choice.items()}
    opts = _Options(top_k, margin, aggregate, whole_image_fallback, quality)
    results = []
    for n, (res, img) in enumerate(_identify_all(gallery, images, chosen, thr, opts)):
        if annotate_dir is not None and img is not None:
            from gallery.recognize.annotate import save_annotated

            stem = f"{n:03d}-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(res.path).stem)[:80]
            res = replace(res, annotated=str(save_annotated(img, res, chosen, Path(annotate_dir), stem)))
        results.append(res)
    return IdentifyReport(
        images=results, models=tuple(chosen), thresholds={m: v for m, (v, _) in thr.items()},
        threshold_sources={m: src for m, (_, src) in thr.items()}, aggregate=aggregate,
        random_weights=tuple(m for m in chosen if gallery.embedder(m).weights.random),
        threshold_reasons={m: c.to_dict() for m, c in choice.items()}, target_fpir=target_fpir,
    )


@dataclass(frozen=True)
class _Options:
    top_k: int
    margin: float
    aggregate: str
    whole_image_fallback: bool
    quality: QualityRule


def _source_name(src) -> tuple[str, object]:
    if isinstance(src, tuple):
        return src[0], src[1]
    if isinstance(src, bytes):
        return "<upload>", src
    return display(src), src


CHUNK = 8  # photos decoded, detected and cropped together (in a background thread) while the previous ones embed


@dataclass
class _Photo:
    name: str
    img: Image.Image | None = None
    error: str | None = None
    faces: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    crops: dict = field(default_factory=dict)  # model -> one chip per face


def _identify_all(gallery, images, models, thr, opts: _Options):
    """Yield ``(ImageResult, image)`` per input, in order. Photos go in chunks: a background thread decodes,
    detects (one MTCNN batch per image size) and cuts the chips of the next chunk while this one's chips are
    embedded in one batch per embedder; each photo is then answered on its own (joint assignment per photo)."""
    chunks = prefetch(batched(list(images), CHUNK), lambda part: _prepare(gallery, part, models, opts),
                      name="facegallery-identify")
    with closing(chunks):
        for photos in chunks:
            vectors = {m: _chunk_vectors(gallery, m, photos) for m in models}
            for i, ph in enumerate(photos):
                if ph.error is not None:
                    yield ImageResult(path=ph.name, error=ph.error), None
                    continue
                low = [bool(p) for p in ph.problems]
                per_model = {m: answer_vectors(gallery, m, vectors[m][i], thr[m][0], opts.top_k, opts.margin,
                                               opts.aggregate, low) if ph.faces else [] for m in models}
                out = [FaceResult(index=k, box=f.box, det_prob=float(f.prob),
                                  models={m: per_model[m][k] for m in models}, fallback=f.fallback,
                                  quality=ph.problems[k]) for k, f in enumerate(ph.faces)]
                yield ImageResult(path=ph.name, faces=out, width=ph.img.width, height=ph.img.height), ph.img


def _prepare(gallery, sources, models, opts: _Options) -> list[_Photo]:
    photos = []
    for src in sources:
        name, source = _source_name(src)
        ph = _Photo(name)
        try:
            ph.img = load_image(source, name=name)
        except ImageLoadError as exc:
            ph.error = exc.reason
        photos.append(ph)
    ok = [ph for ph in photos if ph.error is None]
    for ph, found in zip(ok, gallery.detector.detect_batch([ph.img for ph in ok]) if ok else []):
        ph.faces = gallery.confident(found)
        if not ph.faces and opts.whole_image_fallback:
            ph.faces = [whole_image_face(ph.img)]
        ph.problems = [face_problems(ph.img, f, opts.quality) for f in ph.faces]
        for m in models:
            emb = gallery.embedder(m)
            ph.crops[m] = [emb.crop(ph.img, f) for f in ph.faces]
    return photos


def _chunk_vectors(gallery, model: str, photos: list[_Photo]) -> list[np.ndarray]:
    """Per photo, its faces' query vectors for ``model``, from one batched call for the whole chunk."""
    crops = [c for ph in photos for c in ph.crops.get(model, [])]
    vecs = chip_vectors(gallery.embedder(model), crops, gallery.settings.batch_size)
    return np.split(vecs, np.cumsum([len(ph.crops.get(model, [])) for ph in photos])[:-1])


def face_problems(img: Image.Image, face: DetectedFace, rule: QualityRule = DEFAULT_RULE) -> tuple[str, ...]:
    """Why ``face`` is too poor to be named (empty when it is fine)."""
    return rule.problems(min(face.width, face.height), face_blur(img, face.box),
                         None if face.fallback else float(face.prob))


def face_vectors(embedder, img, faces: Sequence[DetectedFace], batch_size: int = 32) -> np.ndarray:
    """Identify's query vectors: each face's chip descriptor, flip-averaged for embedders that declare
    ``flip_tta`` (where it was measured to help: dlib)."""
    return chip_vectors(embedder, [embedder.crop(img, f) for f in faces], batch_size)


def chip_vectors(embedder, crops: list, batch_size: int = 32) -> np.ndarray:
    """:func:`face_vectors` of chips already cut (``embedder.crop``): one batched call for all of them."""
    if not crops:
        return np.zeros((0, embedder.dim), np.float32)
    if not getattr(embedder, "flip_tta", False):
        return embedder.embed_crops(crops, batch_size=batch_size)
    vecs = embedder.embed_crops(crops + [ImageOps.mirror(c) for c in crops], batch_size=batch_size)
    return flip_average(vecs[:len(crops)], vecs[len(crops):])


def answer_faces(gallery, model, img, faces: Sequence[DetectedFace], threshold, top_k, margin, aggregate,
                 low_quality: Sequence[bool] | None = None):
    """One ModelAnswer per face for one embedder (empty list for no faces)."""
    if not faces:
        return []
    vecs = face_vectors(gallery.embedder(model), img, faces, gallery.settings.batch_size)
    return answer_vectors(gallery, model, vecs, threshold, top_k, margin, aggregate, low_quality)


def answer_vectors(gallery, model, vecs: np.ndarray, threshold, top_k=5, margin=DEFAULT_MARGIN,
                   aggregate=DEFAULT_AGGREGATE, low_quality: Sequence[bool] | None = None):
    """Decide identities for query vectors that come from ONE photo (joint assignment across them).
    Faces flagged in ``low_quality`` get the ``low_quality`` status and no name."""
    random = gallery.embedder(model).weights.random
    low = list(low_quality) if low_quality is not None else [False] * len(vecs)
    scores = _scores(gallery, model, vecs, top_k, aggregate)
    if scores is None:
        return [ModelAnswer(None, "low_quality" if lq else "unknown", 0.0, threshold, (), random_weights=random)
                for lq in low]
    assigned = _assign([{} if lq else sc for sc, lq in zip(scores, low)], threshold)
    heads = head_answers(gallery, model, vecs)
    answers = []
    for i, per_person in enumerate(scores):
        ranked = sorted(per_person.items(), key=lambda kv: -kv[1])
        cands = tuple(Candidate(n, s) for n, s in ranked[:top_k])
        name = assigned.get(i)
        head = heads[i] if heads else None
        if name is None:
            best = ranked[0][1] if ranked else 0.0
            answers.append(ModelAnswer(None, "low_quality" if low[i] else "unknown", best, threshold, cands, head,
                                       random))
            continue
        score = per_person[name]
        rival = max((s for n, s in per_person.items() if n != name), default=-1.0)
        status = "ambiguous" if score - rival < margin else "match"
        answers.append(ModelAnswer(name, status, score, threshold, cands, head, random))
    return answers


def _scores(gallery, model, vecs: np.ndarray, top_k: int, aggregate: str) -> list[dict[str, float]] | None:
    """Per query vector, its best people and their scores (None when the gallery holds no ``model`` vectors)."""
    if aggregate == "centroid":
        cents = gallery_centroids(gallery, model)
        return None if cents is None else [centroid_scores(cents, v, top_k) for v in vecs]
    index = gallery.index(model)
    return None if index is None else [person_scores(gallery, index, v, top_k, aggregate) for v in vecs]


def person_scores(gallery, index, vec: np.ndarray, top_k: int, aggregate: str) -> dict[str, float]:
    """Best ``top_k + 1`` people for one query vector, with aggregated cosine similarity.

    Searches progressively deeper (k doubles) until enough distinct people are seen or the index is exhausted,
    so people with many augmented copies cannot crowd the others out of the candidate list.
    """
    want, k, total = top_k + 1, max(64, 8 * (top_k + 1)), len(index)
    while True:
        k = min(k, total)
        sims, ids = index.search(vec[None, :].astype(np.float32), k)
        keep = ids[0] >= 0
        sims, ids = sims[0][keep], ids[0][keep]
        with gallery.session() as s:
            owner = q.owners(s, ids.tolist())
        hits: dict[str, list[float]] = {}
        for i, sim in zip(ids.tolist(), sims.tolist()):
            if i in owner:
                hits.setdefault(owner[i][1], []).append(sim)
        if len(hits) >= want or k >= total:
            break
        k *= 2
    if aggregate == "mean3":
        agg = {n: float(np.mean(sorted(v, reverse=True)[:3])) for n, v in hits.items()}
    else:
        agg = {n: float(max(v)) for n, v in hits.items()}
    return dict(sorted(agg.items(), key=lambda kv: -kv[1])[:want])


def _assign(scores: list[dict[str, float]], threshold: float) -> dict[int, str]:
    """Face index -> person, at most one face per person, maximising the summed above-threshold similarity."""
    people = sorted({n for sc in scores for n, v in sc.items() if v >= threshold})
    if not people:
        return {}
    if len(scores) == 1:  # one face: its best person, the assignment's answer without importing scipy (0.2 s)
        best = max(people, key=lambda n: scores[0][n])
        return {0: best} if scores[0][best] > 0 else {}
    from scipy.optimize import linear_sum_assignment

    w = np.zeros((len(scores), len(people)))
    for i, sc in enumerate(scores):
        for j, n in enumerate(people):
            v = sc.get(n, -1.0)
            w[i, j] = v if v >= threshold else 0.0
    rows, cols = linear_sum_assignment(w, maximize=True)
    return {int(r): people[c] for r, c in zip(rows, cols) if w[r, c] > 0}
