"""Who is in this photo: every face, every embedder, nearest-neighbour search with per-person aggregation.

For each face and embedder the index is searched, hits are mapped to people and aggregated per person (``max``:
the best single vector, the default; ``mean3``: the mean of a person's three best vectors, steadier when a
gallery holds many augmented copies). Faces of one photo are then assigned jointly (Hungarian assignment on the
face x person score matrix, scores under the threshold counting as no match) so that nobody is named twice in a
photo; a face that loses its best person gets its next best or ``unknown``. ``ambiguous`` means the assigned
person beats the next candidate by less than the margin.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from db import queries as q
from gallery.errors import EmptyGalleryError, GalleryError
from gallery.heads.train import head_answers
from gallery.manage.models import check_weights_match
from gallery.results import (
    Candidate, FaceResult, HeadAnswer, IdentifyReport, ImageResult, ModelAnswer, display,
)
from gallery.store import Gallery
from gallery.calibration.thresholds import DEFAULT_MARGIN, resolve_thresholds
from indexer.detect import DetectedFace
from indexer.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

AGGREGATES = ("max", "mean3")


def identify(
    gallery: Gallery,
    images: Sequence[str | Path | bytes | tuple[str, bytes]],
    *,
    models: Sequence[str] | None = None,
    threshold: float | dict[str, float] | None = None,
    top_k: int = 5,
    margin: float = DEFAULT_MARGIN,
    aggregate: str = "max",
    annotate_dir: str | Path | None = None,
) -> IdentifyReport:
    """Identify every face in each image. Unreadable images become an ``ImageResult`` with ``error`` set."""
    if aggregate not in AGGREGATES:
        raise GalleryError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
    chosen = list(models) if models else gallery.models_in_store()
    if not chosen:
        raise EmptyGalleryError("the gallery is empty: enroll people first (facegallery enroll PEOPLE_DIR)")
    for m in chosen:
        check_weights_match(gallery, m)
    thr = resolve_thresholds(gallery, chosen, threshold)
    results = []
    for n, src in enumerate(images):
        res, img = _identify_one(gallery, src, chosen, thr, top_k, margin, aggregate)
        if annotate_dir is not None and img is not None:
            from gallery.recognize.annotate import save_annotated

            stem = f"{n:03d}-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(res.path).stem)[:80]
            res = replace(res, annotated=str(save_annotated(img, res, chosen, Path(annotate_dir), stem)))
        results.append(res)
    return IdentifyReport(
        images=results, models=tuple(chosen), thresholds={m: v for m, (v, _) in thr.items()},
        threshold_sources={m: src for m, (_, src) in thr.items()}, aggregate=aggregate,
        random_weights=tuple(m for m in chosen if gallery.embedder(m).weights.random),
    )


def _source_name(src) -> tuple[str, object]:
    if isinstance(src, tuple):
        return src[0], src[1]
    if isinstance(src, bytes):
        return "<upload>", src
    return display(src), src


def _identify_one(gallery, src, models, thr, top_k, margin, aggregate) -> tuple[ImageResult, Image.Image | None]:
    name, source = _source_name(src)
    try:
        img = load_image(source, name=name)
    except ImageLoadError as exc:
        return ImageResult(path=name, error=exc.reason), None
    faces = gallery.confident(gallery.detector.detect(img))
    per_model: dict[str, list[ModelAnswer]] = {}
    for m in models:
        per_model[m] = answer_faces(gallery, m, img, faces, thr[m][0], top_k, margin, aggregate)
    out = [
        FaceResult(index=i, box=f.box, det_prob=float(f.prob), models={m: per_model[m][i] for m in models})
        for i, f in enumerate(faces)
    ]
    return ImageResult(path=name, faces=out, width=img.width, height=img.height), img


def answer_faces(gallery, model, img, faces: Sequence[DetectedFace], threshold, top_k, margin, aggregate):
    """One ModelAnswer per face for one embedder (empty list for no faces)."""
    if not faces:
        return []
    emb = gallery.embedder(model)
    vecs = emb.embed_crops([emb.crop(img, f) for f in faces], batch_size=gallery.settings.batch_size)
    return answer_vectors(gallery, model, vecs, threshold, top_k, margin, aggregate)


def answer_vectors(gallery, model, vecs: np.ndarray, threshold, top_k=5, margin=DEFAULT_MARGIN, aggregate="max"):
    """Decide identities for query vectors that come from ONE photo (joint assignment across them)."""
    index = gallery.index(model)
    random = gallery.embedder(model).weights.random
    if index is None:
        return [ModelAnswer(None, "unknown", 0.0, threshold, (), random_weights=random) for _ in range(len(vecs))]
    scores = [person_scores(gallery, index, v, top_k, aggregate) for v in vecs]
    assigned = _assign(scores, threshold)
    heads = head_answers(gallery, model, vecs)
    answers = []
    for i, per_person in enumerate(scores):
        ranked = sorted(per_person.items(), key=lambda kv: -kv[1])
        cands = tuple(Candidate(n, s) for n, s in ranked[:top_k])
        name = assigned.get(i)
        head = heads[i] if heads else None
        if name is None:
            best = ranked[0][1] if ranked else 0.0
            answers.append(ModelAnswer(None, "unknown", best, threshold, cands, head, random))
            continue
        score = per_person[name]
        rival = max((s for n, s in per_person.items() if n != name), default=-1.0)
        status = "ambiguous" if score - rival < margin else "match"
        answers.append(ModelAnswer(name, status, score, threshold, cands, head, random))
    return answers


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
    w = np.zeros((len(scores), len(people)))
    for i, sc in enumerate(scores):
        for j, n in enumerate(people):
            v = sc.get(n, -1.0)
            w[i, j] = v if v >= threshold else 0.0
    rows, cols = linear_sum_assignment(w, maximize=True)
    return {int(r): people[c] for r, c in zip(rows, cols) if w[r, c] > 0}
