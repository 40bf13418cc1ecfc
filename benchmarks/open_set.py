"""Open-set identification on LFW (issue 13): scoring options, the gallery-size threshold fit, the default sweep, the
low-quality rule and 1:1 verification with and without flip, all from one embedding pass.

    python -m benchmarks.open_set --data-dir DATA --out open_set.md              # everything (~25 min, 1 core)
    python -m benchmarks.open_set --data-dir DATA fit --write                    # refit the shipped model

Every LFW photo of ``peopleDevTrain.txt`` and ``peopleDevTest.txt`` (all 13,233) is detected and embedded ONCE per
embedder (chip, mirrored chip, 4 augmented copies as enroll makes them) and cached (``--cache-dir``); galleries of
any size are then built in memory (:mod:`gallery.benchmark.open_set`). Fits use DevTrain people only; every reported
figure is on DevTest people. Single-threaded (torch and OpenMP), so figures and times are comparable across runs.

Sections:
- ``options``: each scoring option's TPIR at FPIR 1 % at each gallery size (the threshold is each gallery's own
  strangers' 99th percentile, an oracle), and the FPIR a fixed 0.925 lets through;
- ``fit``: the gallery-size model for centroid / max / mean3 on DevTrain (``--write``: into the package);
- ``sweep``: identify's defaults (the shipped model) vs a per-gallery calibration vs the old fixed threshold;
- ``quality``: DevTrain probes downscaled and blurred, outcomes against face size, blur and detection probability;
- ``verify``: LFW View 2 (pairs.txt) 10-fold accuracy, with and without flip averaging.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import command_line, default_data_dir
from gallery.benchmark.open_set import (
    IDENTIFY_SCORING,
    Scoring,
    lfw_photos,
    open_set_split,
    photos_per_person,
    read_people_file,
    sweep,
)
from gallery.benchmark.photo_vectors import photo_vectors
from gallery.benchmark.threshold_fit import fit_points, fit_size_model
from gallery.calibration import metrics as bm
from gallery.calibration.thresholds import SIZE_MODEL_FILE, size_models

log = logging.getLogger(__name__)

SECTIONS = ("options", "fit", "sweep", "quality", "verify")
OPTION_SIZES = (10, 70, 300, 1000)
SWEEP_SIZES = (10, 30, 70, 150, 300, 500, 1000)
OPTIONS = {
    "max, chip (before)": Scoring("max"),
    "max, chip, augment 4 (enroll default before)": Scoring("max", augment=4),
    "mean3, augment 4": Scoring("mean3", augment=4),
    "mean3": Scoring("mean3"),
    "max, flip query": Scoring("max", flip_query=True),
    "centroid": Scoring("centroid"),
    "centroid, augment 4 in centroid": Scoring("centroid", augment=4),
    "centroid, flip enrolled only": Scoring("centroid", enroll="flip"),
    "centroid, flip query (kept)": Scoring("centroid", flip_query=True),
    "centroid, flip query, low-quality faces not named (identify)": IDENTIFY_SCORING,
    "centroid, flip query + enrolled": Scoring("centroid", flip_query=True, enroll="flip"),
    "centroid, flip query + mirrored vectors stored": Scoring("centroid", flip_query=True, enroll="both"),
    "centroid, flip query, augment 4 in centroid": Scoring("centroid", flip_query=True, augment=4),
    "centroid, flip query, rival penalty 0.2": Scoring("centroid", flip_query=True, rival=0.2),
}
FIT_SCORINGS = {"centroid": Scoring("centroid", flip_query=True), "max": Scoring("max", flip_query=True, augment=4),
                "mean3": Scoring("mean3", flip_query=True, augment=4)}


class Data:
    """LFW View 1 people and the cached vectors of all their photos."""

    def __init__(self, data_dir: Path, cache_dir: Path, device: str = "cpu"):
        from gallery.config import Settings
        from gallery.store import Gallery

        self.lfw = data_dir / "lfw"
        self.root = self.lfw / "lfw-deepfunneled"
        self.train = lfw_photos(self.root, read_people_file(self.lfw / "peopleDevTrain.txt"))
        self.test = lfw_photos(self.root, read_people_file(self.lfw / "peopleDevTest.txt"))
        self.gallery = Gallery(Settings(home=cache_dir / "gallery", device=device, progress=False))
        self.embedder = self.gallery.embedder("dlib")
        self.cache_dir = cache_dir
        keys = sorted(k for v in list(self.train.values()) + list(self.test.values()) for k in v)
        t0 = time.perf_counter()
        self.pv = photo_vectors(self.gallery.detector, self.embedder, self.root, keys, augment=4, seed=0,
                                min_prob=self.gallery.settings.min_face_prob, cache_dir=cache_dir)
        self.embed_seconds = time.perf_counter() - t0


def cohort(people: dict[str, list[str]], pv, size: int = 1000, seed: int = 0) -> np.ndarray:
    """An S-norm cohort: one flip-averaged photo of each of ``size`` people drawn from ``people`` (DevTrain)."""
    from gallery.recognize.scoring import flip_average

    rng = np.random.default_rng(seed)
    names = sorted(people)
    chosen = [names[i] for i in rng.permutation(len(names))[:size]]
    rows = pv.row()
    idx = [rows[people[p][int(rng.integers(len(people[p])))]] for p in chosen]
    return flip_average(pv.vectors[idx], pv.flipped[idx])


def options(d: Data, seeds: int) -> tuple[list[str], dict]:
    background = cohort(d.train, d.pv)
    variants = dict(OPTIONS)
    for top in (50, 200):
        variants[f"centroid, flip query, S-norm (1000 DevTrain faces, top {top})"] = Scoring(
            "centroid", flip_query=True, cohort=background, cohort_top=top)
    lines = ["| scoring | " + " | ".join(f"N={n}" for n in OPTION_SIZES) + " | FPIR at 0.925, N=70 |",
             "|---|" + "---|" * (len(OPTION_SIZES) + 1)]
    doc = {}
    for name, sc in variants.items():
        rows = sweep(d.test, d.pv, sc, OPTION_SIZES, range(seeds), 0.01, {"0.925": lambda s: 0.925})
        se = [r.tpir_at_fpir_sd / math.sqrt(seeds) for r in rows]
        lines.append(f"| {name} | " + " | ".join(f"{r.tpir_at_fpir:.3f} +- {e:.3f}" for r, e in zip(rows, se))
                     + f" | {rows[1].rules['0.925'][1]:.3f} |")
        doc[name] = [r.to_dict() for r in rows]
        print(lines[-1], flush=True)
    return lines, doc


def fit(d: Data, seeds: int, write: bool) -> tuple[list[str], dict]:
    models, lines, doc = [], [], {}
    for aggregate, sc in FIT_SCORINGS.items():
        points = fit_points(d.train, d.pv, sc, range(seeds))
        model, rms = fit_size_model(points, "dlib", aggregate, sc.flip_query)
        models.append(dict(model.to_dict(), rms=round(rms, 5), scoring=sc.label()))
        doc[aggregate] = {"model": models[-1], "points": [p.to_dict() for p in points]}
        lines.append(f"- {aggregate} ({sc.label()}): threshold = {model.formula()} (RMS residual {rms:.4f}, "
                     f"{len(points)} points)")
        print(lines[-1], flush=True)
    if write:
        out = {"about": "Gallery-size threshold model (gallery/calibration/thresholds.py), fitted on LFW "
                        "peopleDevTrain.txt by benchmarks/open_set.py fit; never on the test split.",
               "command": command_line("benchmarks.open_set", sys.argv[1:]),
               "weights_sha256": d.embedder.weights.sha256, "models": models}
        SIZE_MODEL_FILE.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        size_models.cache_clear()
        lines.append(f"- written to {SIZE_MODEL_FILE.name}")
    return lines, doc


def default_sweep(d: Data, seeds: int) -> tuple[list[str], dict]:
    from gallery.benchmark.open_set_run import OpenSetConfig, OpenSetResult, _calibrated_rule, _default_rule
    from gallery.benchmark.report import open_set_md

    config = OpenSetConfig(SWEEP_SIZES, seeds)
    rules = {"default": _default_rule("dlib", 0.01), "calibrated": _calibrated_rule(d.pv, config),
             "fixed": lambda s: 0.925}
    rows = sweep(d.test, d.pv, IDENTIFY_SCORING, SWEEP_SIZES, range(seeds), 0.01, rules)
    res = OpenSetResult(len(d.test), sum(len(v) for v in d.test.values()), 0, IDENTIFY_SCORING.label(), config,
                        {"dlib": rows})
    lines = open_set_md(res)[2:]
    print("\n".join(lines), flush=True)
    return lines, res.to_dict()


def quality(d: Data) -> tuple[list[str], dict]:
    from PIL import Image, ImageFilter

    from gallery.calibration.thresholds import size_models as models
    from gallery.recognize.quality import DEFAULT_RULE
    from gallery.recognize.scoring import centroids, flip_average

    split = open_set_split(d.train, 70, 0)
    genuine = {}
    for p, k in split.probes:
        genuine.setdefault(p, []).append(k)
    truth = {k: p for p, v in genuine.items() for k in v[:3]}
    keys = sorted(list(truth) + [k for _, k in split.strangers][:300])
    rows = d.pv.row()
    enrolled = sorted(split.enrolled)
    idx = [rows[k] for p in enrolled for k in split.enrolled[p]]
    people, cents = centroids(d.pv.vectors[idx], np.repeat(np.arange(len(enrolled)),
                                                            [len(split.enrolled[p]) for p in enrolled]))
    thr = models()[("dlib", "centroid")].threshold(70, photos_per_person(split), 0.01)
    levels = {"clean": None}
    levels.update({f"downscaled x{f}": (lambda f: lambda im: im.resize(
        (max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BICUBIC))(f)
        for f in (0.5, 0.35, 0.25, 0.2, 0.16, 0.12)})
    levels.update({f"blur sigma {s}": (lambda s: lambda im: im.filter(ImageFilter.GaussianBlur(s)))(s)
                   for s in (1.5, 2.5, 4.0)})
    records = []
    for name, tr in levels.items():
        pv = photo_vectors(d.gallery.detector, d.embedder, d.root, keys, min_prob=0.9, cache_dir=d.cache_dir,
                           transform=tr, transform_name="" if tr is None else name, progress=False)
        sims = flip_average(pv.vectors, pv.flipped) @ cents.T
        best = sims.argmax(1)
        for i, k in enumerate(keys):
            if pv.fallback[i]:
                continue  # no face: identify says so, nothing to name
            named = sims[i, best[i]] >= thr
            right = enrolled[people[best[i]]] == truth.get(k)
            flag = bool(DEFAULT_RULE.problems(pv.face_px[i], pv.blur[i], pv.det_prob[i]))
            records.append((name, k in truth, named and right, named and not right, flag, pv.face_px[i], pv.blur[i],
                            pv.det_prob[i]))
    lines = [f"Threshold {thr:.4f} (70 people, model default). Genuine: {len(truth)} probes, strangers: "
             f"{len(keys) - len(truth)}. Rule: {DEFAULT_RULE}.", "",
             "| degradation | faces | flagged low quality | named right (genuine) | named wrong (genuine) | "
             "strangers named | named right, unflagged genuine | named wrong, flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for name in levels:
        r = [x for x in records if x[0] == name]
        g = [x for x in r if x[1]]
        s = [x for x in r if not x[1]]
        unf = [x for x in g if not x[4]]
        fl = [x for x in r if x[4]]
        lines.append(f"| {name} | {len(r)} | {np.mean([x[4] for x in r]):.3f} | {np.mean([x[2] for x in g]):.3f} "
                     f"| {np.mean([x[3] for x in g]):.3f} | {np.mean([x[3] for x in s]):.3f} | "
                     f"{np.mean([x[2] for x in unf]) if unf else float('nan'):.3f} | "
                     f"{np.mean([x[3] for x in fl]) if fl else float('nan'):.3f} |")
    lines += [""] + _binned(records, 5, "face px", (0, 12, 16, 20, 24, 28, 32, 40, 60, 1e9))
    lines += [""] + _binned([r for r in records if r[5] >= 40], 6, "blur (faces >= 40 px)",
                            (0, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 1.01))
    rest = [r for r in records if r[5] >= DEFAULT_RULE.min_face_px and r[6] <= DEFAULT_RULE.max_blur]
    lines += [""] + _binned(rest, 7, "detection probability (not small, not blurred)", (0, 0.99, 0.995, 0.999, 1.01))
    print("\n".join(lines), flush=True)
    return lines, {"threshold": thr, "records": len(records)}


def _binned(records: list[tuple], column: int, name: str, edges: tuple) -> list[str]:
    """Outcomes of every degraded probe, binned by one measurement (what the rule's cut-offs were read from)."""
    lines = [f"| {name} | genuine | named right | named wrong | strangers | strangers named |",
             "|---|---|---|---|---|---|"]
    for lo, hi in zip(edges, edges[1:]):
        r = [x for x in records if lo <= x[column] < hi]
        g, s = [x for x in r if x[1]], [x for x in r if not x[1]]
        if r:
            lines.append(f"| [{lo:g}, {hi:g}) | {len(g)} | {np.mean([x[2] for x in g]) if g else float('nan'):.3f} | "
                         f"{np.mean([x[3] for x in g]) if g else float('nan'):.3f} | {len(s)} | "
                         f"{np.mean([x[3] for x in s]) if s else float('nan'):.3f} |")
    return lines


def verify(d: Data) -> tuple[list[str], dict]:
    from gallery.benchmark.data import read_pairs
    from gallery.recognize.scoring import flip_average

    pairs = read_pairs(d.lfw / "pairs.txt", d.root)
    rows = d.pv.row()
    a = np.array([rows[p] for p in pairs.left])
    b = np.array([rows[p] for p in pairs.right])
    lines, doc = [], {}
    for name, vecs in (("chip", d.pv.vectors), ("flip-averaged", flip_average(d.pv.vectors, d.pv.flipped))):
        scores = np.einsum("ij,ij->i", vecs[a].astype(np.float64), vecs[b].astype(np.float64))
        folds = bm.kfold_accuracy(scores, pairs.same, pairs.fold)
        doc[name] = {"accuracy": folds.mean, "std": folds.std, "auc": bm.auc(scores[pairs.same], scores[~pairs.same])}
        lines.append(f"- {name}: {100 * folds.mean:.2f}% +- {100 * folds.std:.2f} (AUC {doc[name]['auc']:.5f}, "
                     f"{len(scores)} pairs)")
    print("\n".join(lines), flush=True)
    return lines, doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("section", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "facegallery" / "open_set")
    ap.add_argument("--seeds", type=int, default=10, help="galleries per size (fit: 5)")
    ap.add_argument("--write", action="store_true", help="fit: write the fitted model into the package")
    ap.add_argument("--out", type=Path, help="markdown report")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    if args.data_dir is None:
        ap.error("--data-dir (the folder holding lfw/) or FACEGALLERY_DATA is required")
    sections = args.section or list(SECTIONS)
    if set(sections) - set(SECTIONS):
        ap.error(f"unknown section(s) {', '.join(sorted(set(sections) - set(SECTIONS)))}; choose from {SECTIONS}")
    d = Data(args.data_dir, args.cache_dir)
    md = ["# Open-set identification on LFW (issue 13)", "",
          f"`{command_line('benchmarks.open_set', sys.argv[1:] if argv is None else argv)}`; photo vectors "
          f"{d.embed_seconds:.0f} s ({len(d.pv.keys)} photos, {int(d.pv.fallback.sum())} without a face found).", ""]
    doc = {}
    for name, title, run in (
            ("options", "Scoring options (DevTest, TPIR at FPIR 1 %, mean +- s.e. over seeds)",
             lambda: options(d, args.seeds)),
            ("fit", "Gallery-size threshold model (fitted on DevTrain)", lambda: fit(d, 5, args.write)),
            ("sweep", "Defaults on DevTest", lambda: default_sweep(d, args.seeds)),
            ("quality", "Low-quality rule (DevTrain probes, degraded)", lambda: quality(d)),
            ("verify", "LFW 10-fold verification (pairs.txt)", lambda: verify(d))):
        if name in sections:
            t0 = time.perf_counter()
            lines, doc[name] = run()
            md += [f"## {title}", ""] + lines + ["", f"({time.perf_counter() - t0:.0f} s)", ""]
    if args.out:
        args.out.write_text("\n".join(md) + "\n", encoding="utf-8")
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
