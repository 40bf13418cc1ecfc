"""False-accept / false-reject curves over thresholds, and ``<home>/calibration.json`` that keeps them.

``facegallery calibrate --store`` and ``benchmark --store-threshold`` write one curve per embedder into the
gallery's ``calibration.json``; the web app's threshold slider reads it (:mod:`app.reports`, whose
docstring documents the format). Writes merge per embedder (calibrating dlib keeps facenet's curve) and replace
the file atomically (temp file + ``os.replace`` in the same folder), so a reader never sees half a file. An
unreadable file is replaced with a warning: it only caches what the next calibration recomputes.

A curve is exact at its grid points: FAR(t) = share of impostor scores >= t, FRR(t) = share of genuine scores < t,
counted, not estimated. The reader interpolates between them.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gallery.calibration.metrics import above
from gallery.errors import GalleryError
from indexer.atomic import write_atomic

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
MAX_POINTS = 512


class CurveError(GalleryError):
    """No FAR/FRR curve can be made from these scores (none of one kind, or non-finite ones)."""


@dataclass(frozen=True, eq=False)  # numpy fields: identity equality, not an ambiguous element-wise one
class FarFrrCurve:
    thresholds: np.ndarray  # strictly ascending
    far: np.ndarray  # share of impostor scores >= threshold (non-increasing)
    frr: np.ndarray  # share of genuine scores < threshold (non-decreasing)
    genuine: int
    impostor: int

    @property
    def points(self) -> int:
        return len(self.thresholds)

    def to_dict(self) -> dict:
        """Plain lists of full-precision floats: JSON round-trips them exactly, so rates stay exact at the grid."""
        return {"thresholds": self.thresholds.tolist(), "far": self.far.tolist(), "frr": self.frr.tolist(),
                "genuine": self.genuine, "impostor": self.impostor}


def _scores(raw, kind: str) -> np.ndarray:
    s = np.asarray(raw, np.float64).ravel()
    if len(s) == 0:
        raise CurveError(f"cannot make a FAR/FRR curve without {kind} scores")
    if not np.isfinite(s).all():
        raise CurveError(f"cannot make a FAR/FRR curve: {int((~np.isfinite(s)).sum())} {kind} scores are not finite")
    return np.sort(s)


def rates(genuine_sorted: np.ndarray, impostor_sorted: np.ndarray,
          thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at each threshold, counted on sorted score arrays."""
    n_imp, n_gen = len(impostor_sorted), len(genuine_sorted)
    far = (n_imp - np.searchsorted(impostor_sorted, thresholds, "left")) / n_imp
    frr = np.searchsorted(genuine_sorted, thresholds, "left") / n_gen
    return far, frr


def far_frr_curve(genuine, impostor, max_points: int = MAX_POINTS, include: Sequence[float] = ()) -> FarFrrCurve:
    """The FAR/FRR curve of two score sets on at most ``max_points`` thresholds (plus ``include``).

    Candidates are every distinct score and one just above the highest (FAR 1 / FRR 0 at the lowest, FAR 0 / FRR 1
    at the top, so the whole range is covered). When there are more, :func:`_grid` keeps evenly spread points
    plus log-spaced ones in both tails, where a slider looks for FAR 1e-3 or FRR 1e-2. ``include`` (e.g. the
    stored threshold) is always on the grid, so the rates there are exact too.
    """
    if max_points < 8:
        raise ValueError(f"max_points must be at least 8, got {max_points}")
    gen, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    cands = np.unique(np.r_[gen, imp])
    cands = np.r_[cands, above(cands[-1])]  # a float32 threshold: FAR 0 in float32 and float64 alike
    far, frr = rates(gen, imp, cands)
    if len(cands) > max_points:
        keep = _grid(far, frr, len(gen), len(imp), max_points)
        cands = cands[keep]
    extra = np.asarray([t for t in include if np.isfinite(t)], np.float64)
    cands = np.unique(np.r_[cands, extra])
    far, frr = rates(gen, imp, cands)
    return FarFrrCurve(cands, far, frr, len(gen), len(imp))


def _grid(far: np.ndarray, frr: np.ndarray, n_gen: int, n_imp: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` candidates: both ends, even steps of FAR + FRR, log steps in each tail."""
    n = len(far)
    n_log = max_points // 4
    n_even = max_points - 2 * n_log - 2
    spread = (1.0 - far) + frr  # rises from 0 to 2 along the candidates
    even = np.searchsorted(spread, np.linspace(0.0, 2.0, n_even), "left")
    # first candidate whose FAR is down to f; last candidate whose FRR is still at most r
    far_tail = np.searchsorted(-far, -np.geomspace(1.0 / n_imp, 1.0, n_log), "left")
    frr_tail = np.searchsorted(frr, np.geomspace(1.0 / n_gen, 1.0, n_log), "right") - 1
    return np.unique(np.clip(np.r_[0, n - 1, even, far_tail, frr_tail], 0, n - 1))


# -- calibration.json --------------------------------------------------------------------------------------
def calibration_path(home: str | Path) -> Path:
    return Path(home) / CALIBRATION_FILE


def read_curves(home: str | Path) -> dict[str, dict]:
    """The per-embedder entries of ``<home>/calibration.json``; {} when absent or unreadable (with a warning)."""
    path = calibration_path(home)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        models = doc["models"]
        if not isinstance(models, dict):
            raise TypeError(f"'models' is a {type(models).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        log.warning("ignoring unreadable %s (%s: %s); the next calibration replaces it", path, type(exc).__name__,
                    first)
        return {}
    return {str(m): e for m, e in models.items() if isinstance(e, dict)}


def _write(home: Path, models: Mapping[str, dict]) -> Path:
    path = calibration_path(home)
    doc = {"version": FORMAT_VERSION, "models": dict(sorted(models.items()))}
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")

    try:
        home.mkdir(parents=True, exist_ok=True)
        write_atomic(path, write)
    except OSError as exc:
        raise GalleryError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def write_curves(home: str | Path, entries: Mapping[str, dict]) -> Path:
    """Merge ``entries`` (embedder -> curve entry) into ``<home>/calibration.json``; other embedders are kept.

    The caller holds the gallery's write lock, so two writers cannot lose each other's merge.
    """
    home = Path(home)
    merged = read_curves(home)
    merged.update(entries)
    path = _write(home, merged)
    log.info("wrote the FAR/FRR curves of %s to %s", ", ".join(sorted(entries)), path)
    return path


def forget_curves(home: str | Path, models: Iterable[str]) -> list[str]:
    """Remove the curves of ``models`` (call it wherever their stored threshold is cleared); returns those removed."""
    home = Path(home)
    current = read_curves(home)
    gone = [m for m in models if m in current]
    if gone:
        _write(home, {m: e for m, e in current.items() if m not in gone})
        log.info("removed the FAR/FRR curves of %s from %s", ", ".join(gone), calibration_path(home))
    return gone
