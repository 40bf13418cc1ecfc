"""``facegallery benchmark``: compare embedders (and NN vs classifier heads) on a folder-per-person dataset.

Everything runs in a temporary gallery that is deleted afterwards; the user's gallery is only touched when the
caller asks to store calibrated thresholds in it (:func:`store_benchmark_thresholds`). Protocols (see
``gallery.benchmark.ident`` and ``gallery.benchmark.verify``):

- seed-style open-set identification (enrolled / impostor people drawn with a seed), run once per ``--augment``;
- LFW-style 10-fold verification when a pairs file is given;
- ``open-set``: the issue-13 sweep over gallery sizes (``gallery.benchmark.open_set_run``), default vs calibrated
  thresholds, on its own.

Both protocols feed calibration: the threshold at ``target_far`` from the verification pairs and, per ``--augment``
value, from the identification probes' scores against each enrolled person.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gallery.benchmark import data as bench_data
from gallery.benchmark.embed import StageClock, TimedDetector, timed_factory
from gallery.benchmark.ident import IdentConfig, IdentResult, run_identification
from gallery.benchmark.open_set import read_people_file
from gallery.benchmark.open_set_run import OpenSetConfig, OpenSetResult, run_open_set
from gallery.benchmark.verify import FARS, VerifyResult, run_verification
from gallery.calibration import metrics as bm
from gallery.calibration.calibrate import Calibration, calibrate_scores, store_calibrations
from gallery.calibration.thresholds import resolve_thresholds
from gallery.config import DEFAULT_AUGMENT, DEFAULT_TARGET_FAR, Settings
from gallery.errors import InvalidInputError
from gallery.heads.model import TrainConfig
from gallery.manage.models import resolve_models
from gallery.results import display
from gallery.store import Gallery
from indexer.embedders import create_embedder

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "identification", "verification", "both", "open-set")


@dataclass(frozen=True)
class BenchmarkConfig:
    models: tuple[str, ...] = ()
    pairs: Path | None = None
    protocol: str = "auto"  # auto: identification, plus verification when a pairs file is given
    identities: int = 70
    enroll_per_person: int = 4
    impostors: int = 70
    seed: int = 0
    augment: tuple[int, ...] = (DEFAULT_AUGMENT,)
    target_far: float = DEFAULT_TARGET_FAR
    fpir: float = 0.01
    threshold: float | None = None
    heads: TrainConfig = field(default_factory=TrainConfig)
    open_set: OpenSetConfig = field(default_factory=OpenSetConfig)
    people_file: Path | None = None  # open-set: only the people of this LFW people*.txt file

    def protocols(self) -> tuple[bool, bool]:
        """(identification, verification); both False for the open-set protocol."""
        if self.protocol not in PROTOCOLS:
            raise InvalidInputError(f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}")
        if self.protocol == "open-set":
            return False, False
        verify = self.protocol in ("verification", "both") or (self.protocol == "auto" and self.pairs is not None)
        if verify and self.pairs is None:
            raise InvalidInputError("the verification protocol needs --pairs PAIRS_TXT")
        return self.protocol in ("auto", "identification", "both"), verify

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pairs"] = display(self.pairs) if self.pairs else None
        d["people_file"] = display(self.people_file) if self.people_file else None
        d["models"], d["augment"] = list(self.models), list(self.augment)
        d["open_set"]["sizes"] = list(self.open_set.sizes)
        return d


@dataclass(frozen=True)
class BenchmarkReport:
    dataset: str
    config: dict
    models: tuple[str, ...]
    weights: dict[str, dict]
    thresholds: dict[str, tuple[float, str]]  # model -> (identify threshold used, where it came from)
    identification: IdentResult | None
    verification: VerifyResult | None
    calibration: list[Calibration]
    timings: list[dict]
    seconds: float
    notes: list[str] = field(default_factory=list)
    models_skipped: dict[str, str] = field(default_factory=dict)
    open_set: OpenSetResult | None = None

    @property
    def random_weights(self) -> tuple[str, ...]:
        return tuple(m for m in self.models if self.weights[m]["random"])

    def results(self) -> dict:
        """Every figure that depends only on data, models and seed (no timings): equal across re-runs."""
        return json_safe({
            "dataset": self.dataset, "config": self.config, "models": list(self.models),
            "weights": {m: dict(w) for m, w in self.weights.items()}, "random_weights": list(self.random_weights),
            "thresholds": {m: {"value": v, "source": src} for m, (v, src) in self.thresholds.items()},
            "identification": self.identification.to_dict() if self.identification else None,
            "verification": self.verification.to_dict() if self.verification else None,
            "calibration": [c.to_dict() for c in self.calibration], "notes": list(self.notes),
            "models_skipped": dict(self.models_skipped),
            "open_set": self.open_set.to_dict() if self.open_set else None,
        })

    def to_dict(self) -> dict:
        return {**self.results(), "timings": list(self.timings), "seconds": round(self.seconds, 2)}


def json_safe(obj):
    """``obj`` with NaN / infinite floats (a metric with no probes to measure it) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def run_benchmark(dataset_dir: str | Path, config: BenchmarkConfig = BenchmarkConfig(),
                  settings: Settings | None = None, *, detector=None, embedder_factory=None) -> BenchmarkReport:
    """Run the configured protocols on ``dataset_dir`` in a temporary gallery and return every figure."""
    root = Path(dataset_dir)
    do_ident, do_verify = config.protocols()
    if config.protocol == "open-set":
        return _run_open_set(root, config, settings or Settings(), detector, embedder_factory)
    pairs = bench_data.read_pairs(config.pairs, root) if do_verify else None
    split = None
    if do_ident:
        people = bench_data.people_images(root)
        split = bench_data.seed_split(people, config.identities, config.enroll_per_person, config.impostors,
                                      config.seed)
    settings = settings or Settings()
    clock, start = StageClock(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facegallery-bench-") as tmp:
        opened: list[Gallery] = []
        factory = timed_factory(embedder_factory or create_embedder, clock)

        def make_gallery(name: str) -> Gallery:
            home = Path(tmp) / name
            s = settings.with_(home=home, db_url=f"sqlite:///{home / 'gallery.sqlite'}")
            opened.append(Gallery(s, detector=timed_det, embedder_factory=factory))
            return opened[-1]

        base = Gallery(settings.with_(home=Path(tmp) / "base", db_url=f"sqlite:///{Path(tmp) / 'base.sqlite'}"),
                       detector=detector, embedder_factory=factory)
        opened.append(base)
        try:
            models, skipped = resolve_models(base, config.models or None)
            timed_det = TimedDetector(base.detector, clock)
            weights = {m: _weights(base, m) for m in models}
            thr = resolve_thresholds(None, models, config.threshold)
            ident = verify = None
            if pairs is not None:
                verify = run_verification(timed_det, {m: base.embedder(m) for m in models}, pairs, root,
                                          batch_size=settings.batch_size, progress=settings.progress)
            if split is not None:
                ident = run_identification(
                    make_gallery, models, split, IdentConfig(tuple(config.augment), config.seed, config.fpir, thr,
                                                             config.heads), clock, settings.progress)
        finally:
            for g in opened:
                g.close()
    calibration = _calibrations(models, weights, ident, verify, config)
    return BenchmarkReport(display(root), config.to_dict(), tuple(models), weights, thr, ident, verify, calibration,
                           clock.to_rows(), time.perf_counter() - start, _notes(ident, verify), skipped)


def _run_open_set(root: Path, config: BenchmarkConfig, settings: Settings, detector, embedder_factory
                  ) -> BenchmarkReport:
    people = bench_data.people_images(root)
    if config.people_file is not None:
        wanted = read_people_file(config.people_file)
        people = {p: v for p, v in people.items() if p in wanted}
    clock, start = StageClock(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facegallery-bench-") as tmp:
        home = Path(tmp) / "base"
        with Gallery(settings.with_(home=home, db_url=f"sqlite:///{home / 'gallery.sqlite'}"), detector=detector,
                     embedder_factory=timed_factory(embedder_factory or create_embedder, clock)) as base:
            models, skipped = resolve_models(base, config.models or None)
            weights = {m: _weights(base, m) for m in models}
            result = run_open_set(people, root, TimedDetector(base.detector, clock),
                                  {m: base.embedder(m) for m in models}, config.open_set,
                                  min_prob=settings.min_face_prob, batch_size=settings.batch_size,
                                  progress=settings.progress)
    thr = {m: (float("nan"), "gallery size") for m in models}
    return BenchmarkReport(display(root), config.to_dict(), tuple(models), weights, thr, None, None, [],
                           clock.to_rows(), time.perf_counter() - start, list(result.notes), skipped, result)


def _weights(g: Gallery, model: str) -> dict:
    w = g.embedder(model).weights
    return {"name": w.name, "sha256": w.sha256, "random": bool(w.random),
            "label": "random weights" if w.random else w.name}


def _calibrations(models, weights, ident: IdentResult | None, verify: VerifyResult | None,
                  config: BenchmarkConfig) -> list[Calibration]:
    out = []
    for m in models:
        random = weights[m]["random"]
        if verify is not None:
            row = next(r for r in verify.rows if r.model == m)
            out.append(calibrate_scores(m, row.genuine, row.impostor, config.target_far, "verification pairs",
                                        random, weights_sha256=weights[m]["sha256"]))
        for k in config.augment if ident is not None else ():
            gen, imp = ident.scores[(m, k)]
            out.append(calibrate_scores(m, gen, imp, config.target_far, f"identification, augment {k}", random, k,
                                        weights_sha256=weights[m]["sha256"]))
    return out


def _notes(ident: IdentResult | None, verify: VerifyResult | None) -> list[str]:
    notes = []
    if verify is not None:
        notes.append(f"verification: {verify.fallback_images} of {verify.images} images had no face found by MTCNN; "
                     f"their whole image was embedded instead (counted, not dropped)")
        n_imp = len(verify.rows[0].impostor) if verify.rows else 0
        for far in (f for f in FARS if not bm.far_is_measurable(n_imp, f)):
            notes.append(f"verification: TAR at FAR {far:g} cannot be measured on {n_imp} impostor pairs: "
                         f"it is taken just above the best-scoring impostor pair")
        if verify.pairs_used != verify.pairs_total:
            notes.append(f"verification: {verify.pairs_total - verify.pairs_used} pairs left out (unreadable image)")
    if ident is not None:
        fallbacks = {g.augment: g.fallback_photos for g in ident.galleries}
        notes.append(f"identification: {ident.probe_fallbacks} probe images and "
                     f"{max(fallbacks.values(), default=0)} enrolled photos had no face found by MTCNN; "
                     f"their whole image was embedded instead")
        notes += ident.notes
    return notes


def preferred_calibrations(report: BenchmarkReport) -> dict[str, Calibration]:
    """One calibration per embedder: the identification one whose augmentation is closest to enroll's default (its
    scores are what identify compares: a probe against the best of a person's photos and their augmented copies,
    and more copies raise the best impostor score), then the verification pairs (one image against one image)."""
    def rank(c: Calibration) -> tuple:
        return (0, abs(c.augment - DEFAULT_AUGMENT)) if c.augment is not None else (1, 0)

    chosen: dict[str, Calibration] = {}
    for c in sorted(report.calibration, key=rank):
        chosen.setdefault(c.model, c)
    return {m: chosen[m] for m in report.models if m in chosen}


def report_curves(report: BenchmarkReport) -> dict[str, dict]:
    """report.json's ``curves`` section: the FAR/FRR curve of each embedder's preferred calibration, in the shape
    ``app.reports`` reads (random-weight curves included and flagged ``random_weights``)."""
    return json_safe({m: c.curve_entry() for m, c in preferred_calibrations(report).items() if c.curve is not None})


def store_benchmark_thresholds(gallery: Gallery, report: BenchmarkReport) -> tuple[list[Calibration], list[str]]:
    """Store the preferred calibration's threshold per embedder in ``gallery`` and its FAR/FRR curve in the
    gallery's calibration.json (:func:`preferred_calibrations`); random weights are never stored.
    Returns (stored calibrations, notes).
    """
    chosen, notes = [], []
    for c in preferred_calibrations(report).values():
        if c.random_weights:
            notes.append(f"{c.model}: not stored (random weights)")
        else:
            chosen.append(c)
    return store_calibrations(gallery, chosen), sorted(set(notes))
