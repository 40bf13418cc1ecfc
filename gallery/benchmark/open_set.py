"""The open-set identification protocol (issue 13): N enrolled people, genuine probes, strangers never enrolled.

For one split of people (LFW View 1 ``peopleDevTrain.txt`` to fit, ``peopleDevTest.txt`` to report) and a seed:

- a fixed pool of **strangers** is drawn first (``strangers`` of the people, whatever N): they are never enrolled
  and each contributes at most ``stranger_photos`` probes (so a few people with hundreds of photos do not make up
  the FPIR on their own);
- the gallery holds N people: first the people with at least ``per_person + 1`` photos (``per_person`` enrolled,
  the rest are **genuine probes**), then, when N is larger than them, **distractors**: people with fewer photos,
  enrolled with all they have and never probed.

The stranger pool does not depend on N, so FPIR at N = 10 and at N = 1000 is measured on the same probes.
Galleries are built in memory from :class:`gallery.benchmark.photo_vectors.PhotoVectors` and scored with the same
functions identify uses (:mod:`gallery.recognize.scoring`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gallery.calibration import metrics as bm
from gallery.errors import InvalidInputError
from gallery.recognize.quality import DEFAULT_RULE, QualityRule
from gallery.recognize.scoring import centroids, cohort_stats, flip_average, person_scores, s_norm
from gallery.results import display

SIZES = (10, 70, 300, 1000)


def read_people_file(path: Path) -> dict[str, int]:
    """LFW ``people*.txt`` (first line a count or a fold count, then ``name n`` lines) -> name -> photo count."""
    try:
        lines = [ln.split() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{display(path)}: cannot read people file ({exc})") from exc
    out = {}
    for parts in lines:
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
        elif not (len(parts) == 1 and parts[0].isdigit()):
            raise InvalidInputError(f"{display(path)}: expected 'name count' lines, got {' '.join(parts)!r}")
    return out


def lfw_photos(root: Path, people: dict[str, int]) -> dict[str, list[str]]:
    """name -> photo keys ``name/name_%04d.jpg`` relative to ``root`` (the ones that exist)."""
    out = {}
    for name, n in sorted(people.items()):
        keys = [f"{name}/{name}_{i:04d}.jpg" for i in range(1, n + 1)]
        keys = [k for k in keys if (root / k).is_file()]
        if keys:
            out[name] = keys
    return out


@dataclass(frozen=True)
class OpenSetSplit:
    """One gallery: who is enrolled with which photos; genuine probes; stranger probes."""

    size: int
    seed: int
    enrolled: dict[str, list[str]]
    probes: list[tuple[str, str]]
    strangers: list[tuple[str, str]]
    distractors: int  # enrolled people who are never probed

    def summary(self) -> dict:
        return {"people": len(self.enrolled), "distractors": self.distractors,
                "enrolled_photos": sum(len(v) for v in self.enrolled.values()), "genuine_probes": len(self.probes),
                "stranger_people": len({p for p, _ in self.strangers}), "stranger_probes": len(self.strangers)}


def open_set_split(people: dict[str, list[str]], size: int, seed: int, *, per_person: int = 4,
                   strangers: float = 0.35, stranger_photos: int = 5) -> OpenSetSplit:
    """The protocol of the module docstring. ``strangers`` is the fraction of people in the stranger pool."""
    if size < 1 or per_person < 1 or not 0.0 < strangers < 1.0 or stranger_photos < 1:
        raise InvalidInputError("size and per_person must be >= 1 and strangers a fraction in (0, 1)")
    names = sorted(people)
    order = [names[i] for i in np.random.default_rng([seed, 13]).permutation(len(names))]
    n_strange = int(round(strangers * len(names)))
    pool, rest = order[:n_strange], order[n_strange:]
    probed = [p for p in rest if len(people[p]) > per_person]
    others = [p for p in rest if len(people[p]) <= per_person]
    if size > len(probed) + len(others):
        raise InvalidInputError(f"a gallery of {size} people needs more people than the split has "
                                f"({len(probed) + len(others)} outside the stranger pool)")
    chosen = probed[:size]
    extra = others[:size - len(chosen)]
    enrolled, probes = {}, []
    for person in chosen:
        imgs = shuffled_photos(people[person], seed, person)
        enrolled[person] = sorted(imgs[:per_person])
        probes += [(person, k) for k in sorted(imgs[per_person:])]
    for person in extra:
        enrolled[person] = list(people[person])
    stranger_probes = [(p, k) for p in pool
                       for k in sorted(shuffled_photos(people[p], seed, p)[:stranger_photos])]
    return OpenSetSplit(size, seed, enrolled, probes, stranger_probes, len(extra))


def shuffled_photos(keys: list[str], seed: int, person: str) -> list[str]:
    rng = np.random.default_rng([seed, zlib.crc32(person.encode("utf-8"))])
    return [keys[i] for i in rng.permutation(len(keys))]


@dataclass(frozen=True)
class Scoring:
    """How a gallery is stored and searched in one experiment (see :mod:`gallery.recognize.scoring`).

    ``flip_query``: queries use the flip-averaged descriptor. ``enroll``: what each enrolled photo stores:
    ``"chip"`` (its descriptor, as enroll does today), ``"flip"`` (the flip-averaged descriptor) or ``"both"``
    (the chip's and the mirrored chip's descriptors as two vectors). ``augment``: augmented copies stored per photo.
    ``copies_in_template``: whether those copies count in the person's centroid / max / top-k. ``cohort``: adaptive
    S-norm against these vectors (None: off), with the ``cohort_top`` best cohort scores. ``rival``: the top score
    becomes ``(s1 - rival * s2) / (1 - rival)``, s2 the second-best person's score (an experiment, not in identify).
    ``quality``: probes this rule flags are never named (identify's ``low_quality`` status).
    """

    aggregate: str = "max"
    flip_query: bool = False
    enroll: str = "chip"
    augment: int = 0
    copies_in_template: bool = True
    cohort: np.ndarray | None = None
    cohort_top: int = 50
    rival: float = 0.0
    quality: QualityRule | None = None

    def label(self) -> str:
        parts = [self.aggregate, f"query {'flip' if self.flip_query else 'chip'}", f"enroll {self.enroll}"]
        if self.augment:
            parts.append(f"augment {self.augment}" + ("" if self.copies_in_template else " (not in template)"))
        if self.cohort is not None:
            parts.append(f"S-norm ({len(self.cohort)} cohort, top {self.cohort_top})")
        if self.rival:
            parts.append(f"rival penalty {self.rival:g}")
        if self.quality is not None:
            parts.append("low-quality faces not named")
        return ", ".join(parts)


@dataclass(frozen=True)
class ProbeScores:
    """Top-1 score of each genuine probe and whether its top-1 person is right; top-1 score of each stranger."""

    genuine: np.ndarray
    correct: np.ndarray
    stranger: np.ndarray


def gallery_vectors(split: OpenSetSplit, pv, scoring: Scoring) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, owner index into sorted enrolled people) as the gallery would store them."""
    names = sorted(split.enrolled)
    rows = pv.row()
    idx = np.array([rows[k] for p in names for k in split.enrolled[p]], np.int64)
    owner = np.repeat(np.arange(len(names)), [len(split.enrolled[p]) for p in names])
    base = {"chip": [pv.vectors[idx]], "flip": [flip_average(pv.vectors[idx], pv.flipped[idx])],
            "both": [pv.vectors[idx], pv.flipped[idx]]}[scoring.enroll]
    parts, owners = list(base), [owner] * len(base)
    if scoring.augment and scoring.copies_in_template:
        for j in range(scoring.augment):
            parts.append(pv.augmented[idx, j])
            owners.append(owner)
    return np.concatenate(parts), np.concatenate(owners)


def query_vectors(pv, keys: list[str], flip: bool) -> np.ndarray:
    rows = pv.row()
    idx = np.array([rows[k] for k in keys], np.int64)
    if not len(idx):
        return np.zeros((0, pv.vectors.shape[1]), np.float32)
    return flip_average(pv.vectors[idx], pv.flipped[idx]) if flip else pv.vectors[idx]


def score_split(split: OpenSetSplit, pv, scoring: Scoring) -> ProbeScores:
    """Every probe of ``split`` searched in its gallery under ``scoring``."""
    vectors, owners = gallery_vectors(split, pv, scoring)
    names = np.array(sorted(split.enrolled), dtype=object)
    queries = query_vectors(pv, [k for _, k in split.probes + split.strangers], scoring.flip_query)
    people, scores = person_scores(queries, vectors, owners, scoring.aggregate)
    if scoring.cohort is not None:
        _, templates = centroids(vectors, owners)
        scores = s_norm(scores, cohort_stats(queries, scoring.cohort, scoring.cohort_top),
                        cohort_stats(templates, scoring.cohort, scoring.cohort_top))
    best = np.argmax(scores, axis=1)
    top = scores[np.arange(len(scores)), best]
    if scoring.rival and scores.shape[1] > 1:
        second = -np.partition(-scores, 1, axis=1)[:, 1]
        top = (top - scoring.rival * second) / (1.0 - scoring.rival)
    if scoring.quality is not None:
        top[low_quality(pv, [k for _, k in split.probes + split.strangers], scoring.quality)] = -np.inf
    g = len(split.probes)
    truth = np.array([p for p, _ in split.probes], dtype=object)
    return ProbeScores(top[:g], names[people[best[:g]]] == truth, top[g:])


def low_quality(pv, keys: list[str], rule: QualityRule) -> np.ndarray:
    """Which of ``keys`` ``rule`` flags (a whole-image fallback has no detection probability to judge)."""
    rows = pv.row()
    return np.array([bool(rule.problems(pv.face_px[i], pv.blur[i], None if pv.fallback[i] else pv.det_prob[i]))
                     for i in (rows[k] for k in keys)], bool)


def tpir_at_fpir(scores: ProbeScores, fpir: float) -> tuple[float, float]:
    """(TPIR, threshold) at the threshold that lets ``fpir`` of this split's strangers through."""
    return bm.tpir_at_fpir(scores.genuine, scores.correct, scores.stranger, fpir)


def rates_at(scores: ProbeScores, threshold: float) -> tuple[float, float]:
    """(FPIR, TPIR) at ``threshold``: strangers named, genuine probes named correctly."""
    tpir = float(np.mean(scores.correct & (scores.genuine >= threshold))) if len(scores.genuine) else float("nan")
    return bm.acceptance(scores.stranger, threshold), tpir


@dataclass(frozen=True)
class SweepRow:
    """One gallery size under one scoring, averaged over seeds; ``rules`` name -> (threshold, FPIR, TPIR)."""

    size: int
    scoring: str
    seeds: int
    genuine_probes: float
    stranger_probes: float
    photos_per_person: float
    tpir_at_fpir: float
    tpir_at_fpir_sd: float
    threshold_at_fpir: float
    rules: dict[str, tuple[float, float, float]]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("size", "scoring", "seeds")}
        for k in ("genuine_probes", "stranger_probes", "photos_per_person", "tpir_at_fpir", "tpir_at_fpir_sd",
                  "threshold_at_fpir"):
            d[k] = round(float(getattr(self, k)), 5)
        d["rules"] = {n: {"threshold": round(t, 5), "fpir": round(f, 5), "tpir": round(p, 5)}
                      for n, (t, f, p) in self.rules.items()}
        return d


def photos_per_person(split: OpenSetSplit) -> float:
    return float(np.mean([len(v) for v in split.enrolled.values()]))


def sweep(people: dict[str, list[str]], pv, scoring: Scoring, sizes=SIZES, seeds=range(5), fpir: float = 0.01,
          rules: dict | None = None, **split_options) -> list[SweepRow]:
    """:class:`SweepRow` per size. ``rules``: name -> callable(split) -> threshold (e.g. the default model)."""
    rows = []
    for size in sizes:
        per_seed = []
        for seed in seeds:
            split = open_set_split(people, size, seed, **split_options)
            sc = score_split(split, pv, scoring)
            tp, t = tpir_at_fpir(sc, fpir)
            at = {name: (thr, *rates_at(sc, thr)) for name, thr in
                  ((n, float(rule(split))) for n, rule in (rules or {}).items())}
            per_seed.append((len(sc.genuine), len(sc.stranger), photos_per_person(split), tp, t, at))
        cols = list(zip(*per_seed))
        rule_rows = {n: tuple(float(np.mean([s[5][n][i] for s in per_seed])) for i in range(3)) for n in rules or {}}
        rows.append(SweepRow(size, scoring.label(), len(per_seed), float(np.mean(cols[0])), float(np.mean(cols[1])),
                             float(np.mean(cols[2])), float(np.mean(cols[3])), float(np.std(cols[3])),
                             float(np.mean(cols[4])), rule_rows))
    return rows


def stranger_maxima(people: dict[str, list[str]], pv, scoring: Scoring, size: int, seeds=range(5),
                    **split_options) -> tuple[np.ndarray, float]:
    """The top-1 score of every stranger probe over ``seeds`` galleries of ``size`` people (pooled), and the mean
    photos per enrolled person: what a threshold for this gallery size has to keep out."""
    out, ppp = [], []
    for seed in seeds:
        split = open_set_split(people, size, seed, **split_options)
        split = OpenSetSplit(split.size, split.seed, split.enrolled, [], split.strangers, split.distractors)
        out.append(score_split(split, pv, scoring).stranger)
        ppp.append(photos_per_person(split))
    return np.concatenate(out), float(np.mean(ppp))


#: How identify scores a face (gallery.recognize.identify): flip-averaged query, centroid of the enrolled crops,
#: low-quality faces not named.
IDENTIFY_SCORING = Scoring("centroid", flip_query=True, quality=DEFAULT_RULE)
