"""Reading calibration data and benchmark reports for the web app (read-only; the files are written elsewhere).

**Latest benchmark report**: the newest ``report.json`` found in ``$FACEGALLERY_REPORTS`` (a report.json or a
folder; ``facegallery app --report`` sets it), ``<home>/reports`` or ``<home>/benchmarks`` (the file itself or
one or two folders down). Its comparison tables come from ``verification.rows`` and ``identification.rows`` (as
``gallery.benchmark.report.write_report`` writes them; a ``comparison`` list of rows is also accepted) and its ROC
plots are the ``roc*.png`` files beside it.

**Expected false-accept / false-reject rates at a threshold**, first hit per embedder wins:

1. a curve in ``<home>/calibration.json``, else a curve in the latest report, with this shape (``thresholds``
   ascending cosine similarities, three lists of equal length; ``"calibration"`` may stand for ``"models"``, and
   a benchmark report.json, whose ``models`` and ``calibration`` are lists, keeps its curves under ``"curves"``)::

       {"models": {"dlib": {"thresholds": [0.80, 0.81, ...],
                            "far": [0.31, 0.27, ...],   # impostor comparisons with similarity >= threshold
                            "frr": [0.00, 0.00, ...],   # genuine comparisons with similarity < threshold
                            "source": "LFW pairs.txt, 6000 pairs",
                            "weights_sha256": "1b2c...",  # optional: the embedder weights behind the scores
                            "genuine": 6000, "impostor": 3000, "date": "2026-11-30T15:50:00+00:00"}}}

   ``facegallery calibrate --store`` and ``benchmark --store-threshold`` write calibration.json, ``benchmark
   --report`` writes report.json's curves (:mod:`gallery.calibration.curve`). The rates are exact at the
   thresholds, interpolated linearly between them and held at the end values outside the curve. A curve whose
   ``weights_sha256`` differs from the weights of the gallery's vectors
   (:func:`gallery.manage.models.stored_weights`, passed to :func:`load_calibrations`) describes another model
   and is ignored;
2. otherwise the single calibrated point of the latest report's ``calibration`` list (``model``, ``threshold``,
   ``far``, ``tar``, ``source``: FRR = 1 - TAR there), shown as that point, not as a rate at the slider.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gallery.calibration.curve import CALIBRATION_FILE

log = logging.getLogger(__name__)

REPORTS_ENV = "FACEGALLERY_REPORTS"
NO_CALIBRATION = "no calibration yet (facegallery calibrate / benchmark)"


@dataclass(frozen=True)
class Curve:
    model: str
    thresholds: np.ndarray
    far: np.ndarray
    frr: np.ndarray
    source: str
    weights_sha256: str | None = None

    def rates_at(self, threshold: float) -> tuple[float, float]:
        """(expected false-accept rate, expected false-reject rate) at ``threshold``."""
        return (float(np.interp(threshold, self.thresholds, self.far)),
                float(np.interp(threshold, self.thresholds, self.frr)))


@dataclass(frozen=True)
class CalibratedPoint:
    model: str
    threshold: float
    far: float
    frr: float
    source: str


@dataclass(frozen=True)
class BenchmarkView:
    path: str
    tables: dict[str, list[dict]]
    roc_pngs: dict[str, str]  # file name -> path


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, (str(exc).splitlines() or [type(exc).__name__])[0])
        return None
    if not isinstance(doc, dict):
        log.warning("ignoring %s: a JSON %s, not an object", path, type(doc).__name__)
        return None
    return doc


def _curve(model: str, raw: object, where: str) -> Curve | None:
    if not isinstance(raw, dict) or not all(k in raw for k in ("thresholds", "far", "frr")):
        return None
    try:
        t, far, frr = (np.asarray(raw[k], dtype=np.float64) for k in ("thresholds", "far", "frr"))
    except (TypeError, ValueError):
        t = far = frr = np.zeros(0)
    if t.ndim != 1 or len(t) == 0 or t.shape != far.shape or t.shape != frr.shape:
        log.warning("ignoring malformed calibration curve for %s in %s", model, where)
        return None
    order = np.argsort(t, kind="stable")
    sha = raw.get("weights_sha256")
    return Curve(model, t[order], far[order], frr[order], str(raw.get("source") or where),
                 str(sha) if sha else None)


def curves_from(doc: Mapping, where: str) -> dict[str, Curve]:
    """Every well-formed per-embedder curve in a calibration or report document."""
    out: dict[str, Curve] = {}
    for key in ("models", "calibration", "curves"):
        section = doc.get(key)
        if isinstance(section, dict):
            for model, raw in section.items():
                curve = _curve(model, raw, where)
                if curve is not None:
                    out.setdefault(model, curve)
    return out


def points_from(doc: Mapping) -> dict[str, CalibratedPoint]:
    """The first calibrated point per embedder of a benchmark report's ``calibration`` list."""
    out: dict[str, CalibratedPoint] = {}
    section = doc.get("calibration")
    for c in section if isinstance(section, list) else []:
        try:
            point = CalibratedPoint(str(c["model"]), float(c["threshold"]), float(c["far"]), 1.0 - float(c["tar"]),
                                    str(c.get("source", "benchmark")))
        except (KeyError, TypeError, ValueError):
            continue
        out.setdefault(point.model, point)
    return out


@dataclass(frozen=True)
class Calibrations:
    curves: dict[str, Curve]
    points: dict[str, CalibratedPoint]
    stale: dict[str, str] = field(default_factory=dict)  # model -> why its curve was ignored

    def text(self, model: str, threshold: float) -> str:
        """The caption under a threshold slider."""
        curve = self.curves.get(model)
        if curve is not None:
            far, frr = curve.rates_at(threshold)
            return f"expected false accepts {far:.2%}, false rejects {frr:.2%} at {threshold:.3f} ({curve.source})"
        if model in self.stale:  # a point from the same stale source would be just as wrong (points carry no sha)
            return f"{NO_CALIBRATION}: {self.stale[model]}"
        p = self.points.get(model)
        if p is not None:
            return (f"calibrated at {p.threshold:.3f}: false accepts {p.far:.2%}, false rejects {p.frr:.2%} "
                    f"({p.source}); no curve for other thresholds")
        return NO_CALIBRATION


def _mismatch(curve: Curve, weights_sha256: Mapping[str, str | None] | None) -> str | None:
    current = (weights_sha256 or {}).get(curve.model)
    if current and curve.weights_sha256 and curve.weights_sha256 != current:
        return (f"its curve ({curve.source}) was made with {curve.model} weights {curve.weights_sha256[:12]}, "
                f"the gallery's vectors with {current[:12]}")
    return None


def load_calibrations(home: Path, report: Path | None = None,
                      weights_sha256: Mapping[str, str | None] | None = None) -> Calibrations:
    """Calibration data for the threshold sliders (see the module docstring); with ``weights_sha256`` (from
    :func:`gallery.manage.models.stored_weights`), curves made with other weights are left out and listed in ``stale``."""
    curves: dict[str, Curve] = {}
    points: dict[str, CalibratedPoint] = {}
    stale: dict[str, str] = {}
    for path in (Path(home) / CALIBRATION_FILE, report):
        doc = _read_json(Path(path)) if path is not None and Path(path).is_file() else None
        if doc is None:
            continue
        for model, curve in curves_from(doc, str(path)).items():
            why = _mismatch(curve, weights_sha256)
            if why is not None:
                log.info("ignoring a calibration curve: %s", why)
                stale.setdefault(model, why)
            else:
                curves.setdefault(model, curve)
        for model, point in points_from(doc).items():
            points.setdefault(model, point)
    return Calibrations(curves, points, {m: w for m, w in stale.items() if m not in curves})


def latest_report(home: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The newest benchmark ``report.json`` (see the module docstring), or None."""
    environ = os.environ if environ is None else environ
    roots = [Path(environ[REPORTS_ENV]).expanduser()] if environ.get(REPORTS_ENV) else []
    roots += [Path(home) / "reports", Path(home) / "benchmarks"]
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found += [p for pattern in ("report.json", "*/report.json", "*/*/report.json") for p in root.glob(pattern)]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _flat(row: Mapping) -> dict:
    """Scalar fields of a row, one-level dicts flattened (``tar_at_far`` -> ``tar_at_far 0.01``)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, Mapping):
            out.update({f"{k} {kk}": vv for kk, vv in v.items() if isinstance(vv, (str, int, float))})
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = round(v, 4) if isinstance(v, float) else v
    return out


def comparison_tables(doc: Mapping) -> dict[str, list[dict]]:
    """Title -> rows of the report's embedder comparison."""
    tables: dict[str, list[dict]] = {}
    if isinstance(doc.get("comparison"), list):
        tables["comparison"] = [_flat(r) for r in doc["comparison"] if isinstance(r, Mapping)]
    for section in ("verification", "identification"):
        part = doc.get(section)
        rows = part.get("rows") if isinstance(part, Mapping) else None
        if isinstance(rows, list) and rows:
            keep = [_flat({k: v for k, v in r.items() if k not in ("fold_accuracies", "fold_thresholds")})
                    for r in rows if isinstance(r, Mapping)]
            tables[section] = keep
    return tables


def benchmark_view(home: Path, environ: Mapping[str, str] | None = None) -> BenchmarkView | None:
    """The latest report's comparison tables and ROC plots, or None when there is no readable report."""
    path = latest_report(home, environ)
    doc = _read_json(path) if path is not None else None
    if doc is None:
        return None
    rocs = {p.name: str(p) for p in sorted(path.parent.glob("roc*.png")) if p.is_file()}
    return BenchmarkView(str(path), comparison_tables(doc), rocs)
