"""Seed-style open-set identification in a temporary gallery: nearest neighbour vs classifier head.

The enrolled photos go through the real ``enroll_jobs`` (detection, augmentation, database, FAISS); heads are
trained by the real ``train_heads``; probes are searched with identify's own ``person_scores`` and answered by
``head_answers``. Probe vectors do not depend on augmentation, so they are computed once and reused for every
``--augment`` value.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from gallery.benchmark.data import IdentSplit
from gallery.benchmark.embed import StageClock, embed_images
from gallery.calibration import metrics as bm
from gallery.calibration.calibrate import per_person_max, split_scores
from gallery.enroll.enroll import enroll_jobs
from gallery.enroll.scan import PhotoJob
from gallery.heads.model import TrainConfig
from gallery.heads.train import HeadReport, head_answers, stored_vectors, train_heads
from gallery.recognize.identify import person_scores
from gallery.store import Gallery

log = logging.getLogger(__name__)

NN, HEAD = "nearest neighbour", "head"
HEAD_MIN_PROB = 0.5  # the head "names" a probe at this probability; its open-set cut-off in the table
CONFUSION_MAX_PEOPLE = 30


@dataclass(frozen=True)
class IdentRow:
    model: str
    augment: int
    method: str
    top1: float
    macro_f1: float
    tpir_at_fpir: float
    threshold_at_fpir: float
    threshold: float
    threshold_source: str
    genuine_acceptance: float
    impostor_acceptance: float
    random_weights: bool = False

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("model", "augment", "method", "threshold_source")}
        for k in ("top1", "macro_f1", "tpir_at_fpir", "threshold_at_fpir", "threshold", "genuine_acceptance",
                  "impostor_acceptance"):
            d[k] = round(getattr(self, k), 5)
        d["weights"] = "random weights" if self.random_weights else "pretrained"
        return d


@dataclass(frozen=True)
class GalleryStats:
    model: str
    augment: int
    vectors: int
    index_kind: str
    index_bytes: int
    enrolled_photos: int
    fallback_photos: int
    skipped_photos: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class IdentResult:
    split: dict
    fpir: float
    rows: list[IdentRow]
    galleries: list[GalleryStats]
    heads: list[tuple[int, HeadReport]]
    probe_fallbacks: int
    notes: list[str] = field(default_factory=list)
    confusions: dict = field(default_factory=dict, repr=False)  # (model, method) -> (labels, matrix)
    scores: dict = field(default_factory=dict, repr=False)  # (model, augment) -> (genuine, impostor) 1:1 scores

    def to_dict(self) -> dict:
        return {
            "split": dict(self.split), "fpir": self.fpir, "rows": [r.to_dict() for r in self.rows],
            "galleries": [g.to_dict() for g in self.galleries],
            "heads": [_head_dict(k, h) for k, h in self.heads],
            "probe_fallbacks": self.probe_fallbacks, "notes": list(self.notes),
        }


def _head_dict(augment: int, head: HeadReport) -> dict:
    d = head.to_dict()
    for k in ("path", "seconds"):  # a temporary file and a timing: not results (timings has "train heads")
        d.pop(k)
    return dict(d, augment=augment)


@dataclass(frozen=True)
class IdentConfig:
    augments: tuple[int, ...]
    seed: int
    fpir: float
    thresholds: dict[str, tuple[float, str]]
    heads: TrainConfig


def run_identification(make_gallery: Callable[[str], Gallery], models: Sequence[str], split: IdentSplit,
                       config: IdentConfig, clock: StageClock, progress: bool = True) -> IdentResult:
    first = make_gallery("probes")
    probes = embed_images(first.detector, {m: first.embedder(m) for m in models},
                          [p for _, p in split.queries + split.impostors], batch_size=first.settings.batch_size,
                          progress=progress, desc="identify: probes")
    truth = np.array([p for p, _ in split.queries + split.impostors], dtype=object)
    ok = np.ones(len(truth), bool)
    ok[[probes.paths.index(f) for f in probes.failed]] = False
    notes = list(split.notes) + [f"unreadable probe {f}: {r}" for f, r in probes.failed.items()]
    n_imp = int(ok[len(split.queries):].sum())
    if not bm.far_is_measurable(n_imp, config.fpir):
        notes.append(f"identification: FPIR {config.fpir:g} cannot be measured on {n_imp} impostor probes (needs "
                     f"{int(np.ceil(1 / config.fpir))}): TPIR is taken just above the best-scoring impostor")
    rows, stats, heads, confusions, scores = [], [], [], {}, {}
    jobs = [PhotoJob(person, str(p), p) for person, imgs in split.enroll.items() for p in imgs]
    first_k = config.augments[0]
    for k in config.augments:
        g = make_gallery(f"augment-{k}")
        rep = enroll_jobs(g, jobs, models=list(models), augment=k, seed=config.seed, whole_image_fallback=True,
                          people=split.people)
        stats += [_stats(g, m, k, rep) for m in models]
        with clock.time("train heads"):
            trained = train_heads(g, models, replace(config.heads, seed=config.seed))
        heads += [(k, h) for h in trained]
        for m in models:
            probe = _Probes(probes.vectors[m], truth, ok, len(split.queries))
            rows += _evaluate(g, m, k, probe, split.people, config, clock, confusions if k == first_k else None)
            scores[(m, k)] = _person_scores(g, m, probe.vectors[ok], truth[ok])
    return IdentResult(split.to_dict(), config.fpir, rows, stats, heads, probes.fallbacks, notes, confusions,
                       scores)


@dataclass(frozen=True)
class _Probes:
    vectors: np.ndarray
    truth: np.ndarray  # person per probe; the first ``genuine`` probes are enrolled people's
    ok: np.ndarray  # readable probes
    genuine: int


def _evaluate(g: Gallery, model: str, k: int, probes: _Probes, people: list[str], config: IdentConfig,
              clock: StageClock, confusions: dict | None) -> list[IdentRow]:
    """The nearest-neighbour and head rows of one embedder in one gallery (and their confusion matrices)."""
    nn_pred, nn_score = _nearest(g, model, probes.vectors, probes.ok, clock)
    head_pred, head_prob = _head(g, model, probes.vectors, probes.ok, clock)
    thr, src = config.thresholds[model]
    random = bool(g.embedder(model).weights.random)
    rows = []
    for method, pred, score, t, s in ((NN, nn_pred, nn_score, thr, src),
                                      (HEAD, head_pred, head_prob, HEAD_MIN_PROB, "head probability")):
        rows.append(_row(model, k, method, probes, pred, score, people, config.fpir, t, s, random))
        if confusions is not None and len(people) <= CONFUSION_MAX_PEOPLE:
            sel = probes.ok[:probes.genuine]
            truth = probes.truth[:probes.genuine][sel]
            confusions[(model, method)] = (people, bm.confusion(
                truth, [str(p) for p in pred[:probes.genuine][sel]], people))
    return rows


def _stats(g: Gallery, model: str, k: int, rep) -> GalleryStats:
    index = g.index(model)
    path = g.index_path(model)
    return GalleryStats(model, k, len(index) if index is not None else 0, index.kind if index is not None else "none",
                        path.stat().st_size if path.exists() else 0, len(rep.enrolled),
                        sum(p.fallback for p in rep.enrolled), len(rep.skipped))


def _nearest(g: Gallery, model: str, vecs: np.ndarray, ok: np.ndarray, clock: StageClock):
    index = g.index(model)
    pred = np.full(len(vecs), None, dtype=object)
    score = np.full(len(vecs), -np.inf)
    with clock.time("search", model, items=int(ok.sum())):
        for i in np.flatnonzero(ok):
            ranked = person_scores(g, index, vecs[i], 1, "max")
            if ranked:
                pred[i], score[i] = next(iter(ranked.items()))
    return pred, score


def _head(g: Gallery, model: str, vecs: np.ndarray, ok: np.ndarray, clock: StageClock):
    pred = np.full(len(vecs), None, dtype=object)
    prob = np.full(len(vecs), -np.inf)
    with clock.time("head", model, items=int(ok.sum())):
        answers = head_answers(g, model, vecs[ok]) or []
    for i, a in zip(np.flatnonzero(ok), answers):
        pred[i], prob[i] = a.identity, a.probability
    return pred, prob


def _row(model, k, method, probes: _Probes, pred, score, people, fpir, threshold, source, random) -> IdentRow:
    gen = np.zeros(len(probes.truth), bool)
    gen[:probes.genuine] = True
    g, i = gen & probes.ok, ~gen & probes.ok
    truth = probes.truth[g]
    correct = pred[g] == truth
    top1, f1 = bm.top1_and_macro_f1(truth.tolist(), [str(p) for p in pred[g]], people)
    if i.any():
        tpir, t_fpir = bm.tpir_at_fpir(score[g], correct, score[i], fpir)
    else:
        tpir, t_fpir = float("nan"), float("nan")
    gen_acc = float(np.mean(correct & (score[g] >= threshold))) if g.any() else float("nan")
    return IdentRow(model, k, method, top1, f1, tpir, t_fpir, threshold, source, gen_acc,
                    bm.acceptance(score[i], threshold), random)


def _person_scores(g: Gallery, model: str, vecs: np.ndarray, truth: np.ndarray):
    """1:1 probe-vs-person scores (genuine, impostor) for calibration and the histograms."""
    data = stored_vectors(g, model)
    people, sims = per_person_max(vecs, data.vectors, data.person_ids)
    names = np.array([data.names[int(p)] for p in people], dtype=object)
    return split_scores(names, sims, truth)
