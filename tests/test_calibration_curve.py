"""FAR/FRR curves: the curve function against brute-force counts, calibration.json (merge, atomic write, corrupt
file, other weights), the benchmark's writers with fakes, and a real ``calibrate --store`` on five_celebrity."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from app import reports as app_reports
from gallery.benchmark.report import write_report
from gallery.benchmark.run import store_benchmark_thresholds
from gallery.calibration import metrics as bm
from gallery.calibration.curve import (
    CALIBRATION_FILE,
    MAX_POINTS,
    CurveError,
    far_frr_curve,
    forget_curves,
    read_curves,
    write_curves,
)
from gallery.manage.models import stored_weights
from tests.helpers import fake_benchmark, make_dataset, make_people, open_gallery, write_pairs


def brute(gen: np.ndarray, imp: np.ndarray, t: float) -> tuple[float, float]:
    """(FAR, FRR) at ``t`` by counting: impostors accepted (>= t), genuine rejected (< t)."""
    return np.count_nonzero(imp >= t) / len(imp), np.count_nonzero(gen < t) / len(gen)


def assert_exact(curve, gen: np.ndarray, imp: np.ndarray) -> None:
    t = curve.thresholds
    assert t.ndim == 1 and len(t) == len(curve.far) == len(curve.frr) == curve.points
    assert np.all(np.diff(t) > 0), "thresholds strictly ascending"
    for i, th in enumerate(t):
        assert (curve.far[i], curve.frr[i]) == brute(gen, imp, th), f"grid point {i} ({th!r})"
    assert t[0] == min(gen.min(), imp.min()) and (curve.far[0], curve.frr[0]) == (1.0, 0.0)
    assert t[-1] > max(gen.max(), imp.max()) and (curve.far[-1], curve.frr[-1]) == (0.0, 1.0)
    assert (curve.genuine, curve.impostor) == (len(gen), len(imp))


def scores(seed: int, n_gen: int, n_imp: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gen, imp = rng.normal(0.75, 0.08, n_gen), rng.normal(0.35, 0.12, n_imp)
    return (np.round(gen, decimals), np.round(imp, decimals)) if decimals is not None else (gen, imp)


# -- the curve function ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.numeric
def test_small_sets_keep_every_distinct_score(seed):
    gen, imp = scores(seed, 40, 150, decimals=2)  # rounding makes ties, within and across the two sets
    curve = far_frr_curve(gen, imp)
    distinct = np.unique(np.r_[gen, imp])
    assert np.array_equal(curve.thresholds[:-1], distinct) and curve.points == len(distinct) + 1
    assert_exact(curve, gen, imp)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.numeric
def test_large_sets_are_capped_exact_and_resolve_the_tails(seed):
    gen, imp = scores(seed, 3000, 20000)
    stored = bm.threshold_at_far(imp, 1e-3)
    curve = far_frr_curve(gen, imp, include=(stored,))
    assert curve.points <= MAX_POINTS + 1
    assert_exact(curve, gen, imp)
    assert stored in curve.thresholds  # the stored threshold is a grid point: its rates are counted
    for target in (1e-3, 1e-2, 0.1):  # log-spaced tail points: a slider near FAR 1e-3 is not one coarse step
        assert np.min(np.abs(curve.far - target)) / target < 0.1
        assert np.min(np.abs(curve.frr - target)) / target < 0.1
    assert np.max(np.abs(np.diff(curve.far)) + np.abs(np.diff(curve.frr))) < 0.02  # no big jump anywhere


@pytest.mark.numeric
def test_ties_and_all_equal_scores():
    same = far_frr_curve(np.full(5, 0.5), np.full(7, 0.5))
    assert same.thresholds.tolist() == [0.5, np.nextafter(np.float32(0.5), np.float32(1))]  # the next float32
    assert same.far.tolist() == [1.0, 0.0] and same.frr.tolist() == [0.0, 1.0]
    gen, imp = np.array([0.2, 0.5, 0.5, 0.9]), np.array([0.5, 0.5, 0.1, 0.5])
    curve = far_frr_curve(gen, imp)
    assert curve.thresholds[:-1].tolist() == [0.1, 0.2, 0.5, 0.9]
    assert_exact(curve, gen, imp)
    assert (curve.far[2], curve.frr[2]) == (0.75, 0.25)  # at 0.5: three impostors accepted, one genuine rejected


def test_bad_score_sets_are_clear_errors():
    with pytest.raises(CurveError, match="without genuine scores"):
        far_frr_curve([], [0.1, 0.2])
    with pytest.raises(CurveError, match="without impostor scores"):
        far_frr_curve(np.array([0.9]), np.array([]))
    with pytest.raises(CurveError, match="1 impostor scores are not finite"):
        far_frr_curve([0.9], [0.1, np.nan])
    with pytest.raises(ValueError, match="max_points"):
        far_frr_curve([0.9], [0.1], max_points=2)


# -- calibration.json --------------------------------------------------------------------------------------
def entry(source: str, sha: str | None = None, t=(0.0, 1.0), far=(1.0, 0.0), frr=(0.0, 1.0)) -> dict:
    return {"thresholds": list(t), "far": list(far), "frr": list(frr), "source": source, "weights_sha256": sha}


def test_write_merges_per_model_atomically(tmp_path):
    home = tmp_path / "g"
    path = write_curves(home, {"dlib": entry("first dlib")})
    assert path == home / CALIBRATION_FILE
    write_curves(home, {"facenet": entry("facenet")})
    write_curves(home, {"dlib": entry("second dlib")})
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and sorted(doc["models"]) == ["dlib", "facenet"]
    assert doc["models"]["dlib"]["source"] == "second dlib" and doc["models"]["facenet"]["source"] == "facenet"
    assert [p.name for p in home.iterdir()] == [CALIBRATION_FILE], "no temp file left behind"
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's owner-only mode
    assert forget_curves(home, ["facenet", "resnet50"]) == ["facenet"]
    assert sorted(read_curves(home)) == ["dlib"]


@pytest.mark.parametrize("text", ["{\"models\": {\"dlib\": [1, 2", "[1, 2]", "\xff\xfe garbage"])
def test_corrupt_file_is_one_warning_for_the_reader_and_replaced_by_the_writer(tmp_path, caplog, text):
    home = tmp_path / "g"
    home.mkdir()
    (home / CALIBRATION_FILE).write_bytes(text.encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        cal = app_reports.load_calibrations(home)
    assert cal.curves == {} and cal.text("dlib", 0.9) == app_reports.NO_CALIBRATION
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert CALIBRATION_FILE in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        write_curves(home, {"dlib": entry("fresh")})
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert app_reports.load_calibrations(home).curves["dlib"].rates_at(0.25) == (0.75, 0.25)


def test_reader_ignores_curves_of_other_weights(tmp_path):
    home, report = tmp_path / "g", tmp_path / "report.json"
    write_curves(home, {"dlib": entry("old weights", sha="a" * 64), "facenet": entry("no sha recorded")})
    report.write_text(json.dumps({"curves": {"dlib": entry("report", sha="b" * 64, far=(0.5, 0.0))}}))
    cal = app_reports.load_calibrations(home, report, weights_sha256={"dlib": "b" * 64, "facenet": "c" * 64})
    assert cal.curves["dlib"].source == "report" and cal.curves["dlib"].rates_at(0.0) == (0.5, 0.0)
    assert cal.curves["facenet"].source == "no sha recorded"  # nothing to compare: kept
    alone = app_reports.load_calibrations(home, None, weights_sha256={"dlib": "b" * 64})
    assert "dlib" not in alone.curves and "weights aaaaaaaaaaaa" in alone.stale["dlib"]
    assert alone.text("dlib", 0.5).startswith(app_reports.NO_CALIBRATION + ": its curve (old weights) was made")
    assert app_reports.load_calibrations(home, None, weights_sha256={"dlib": "a" * 64}).curves["dlib"].source \
        == "old weights"


# -- the benchmark's writers (fake detector and embedders) -------------------------------------------------
@pytest.mark.numeric
def test_benchmark_writes_curves_to_the_gallery_and_the_report(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    pairs = write_pairs(tmp_path / "pairs.txt", [(f"p{i}", 1, 2 + i % 3) for i in range(6)],
                        [(f"p{i}", 1, f"p{(i + 1) % 7}", 2) for i in range(6)])
    rep = fake_benchmark(ds, pairs, tmp_path / "user", augment=(0,))
    assert all(c["curve_points"] > 1 for c in rep.to_dict()["calibration"])  # --json: point counts only
    assert "curves" not in rep.to_dict()
    with open_gallery(tmp_path / "user") as g:
        stored, _ = store_benchmark_thresholds(g, rep)
        cal = app_reports.load_calibrations(g.settings.home, None, stored_weights(g))
    assert {c.model for c in stored} == set(cal.curves) == {"dlib", "facenet"}
    for c in stored:
        gen, imp = rep.identification.scores[(c.model, 0)]
        assert c.curve_file == str(tmp_path / "user" / CALIBRATION_FILE)
        assert cal.curves[c.model].rates_at(c.threshold) == brute(gen, imp, c.threshold)
        assert cal.curves[c.model].source.startswith("identification, augment 0, ")
    write_report(rep, tmp_path / "report")
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(doc["curves"]) == ["dlib", "facenet"] and doc["curves"]["dlib"]["weights_sha256"] == "f" * 64
    from_report = app_reports.load_calibrations(tmp_path / "empty", tmp_path / "report" / "report.json")
    assert set(from_report.curves) == {"dlib", "facenet"}
    gen, imp = rep.identification.scores[("dlib", 0)]
    t = doc["curves"]["dlib"]["threshold"]
    assert from_report.curves["dlib"].rates_at(t) == brute(gen, imp, t)


# -- real end to end: five_celebrity, real MTCNN + dlib, through the CLI -----------------------------------
@pytest.fixture(scope="module")
def celeb_home(tmp_path_factory, five_celebrity):
    """five_celebrity/train enrolled with dlib, no augmentation (fast); each test copies what it changes."""
    pytest.importorskip("dlib")
    from tests.test_e2e_real import run

    home = tmp_path_factory.mktemp("curve") / "g"
    run(["enroll", five_celebrity / "train", "--model", "dlib", "--augment", "0", "--json"], home)
    return home


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.numeric
def test_calibrate_store_writes_the_curve_the_app_reads(celeb_home, caplog):
    from gallery.calibration.calibrate import centroid_gallery_scores
    from gallery.calibration.thresholds import resolve_thresholds
    from gallery.config import Settings
    from gallery.heads.train import stored_vectors
    from gallery.store import Gallery
    from tests.test_e2e_real import run

    home, path = celeb_home, celeb_home / CALIBRATION_FILE
    (c,) = json.loads(run(["calibrate", "--json", "--target-far", "0.01"], home).stdout)["calibration"]
    assert not path.exists() and c["curve_points"] > 10 and not c["stored"]
    (c,) = json.loads(run(["calibrate", "--store", "--json", "--target-far", "0.01"], home).stdout)["calibration"]
    assert c["stored"] and c["curve_file"] == str(path)
    assert not any(isinstance(v, list) for v in c.values()), "--json carries a summary, not the arrays"
    doc = json.loads(path.read_text())
    e = doc["models"]["dlib"]
    assert {"thresholds", "far", "frr", "source", "genuine", "impostor", "weights_sha256", "date"} <= set(e)
    assert len(e["thresholds"]) == len(e["far"]) == len(e["frr"]) == c["curve_points"]
    assert e["thresholds"] == sorted(e["thresholds"]) and (e["genuine"], e["impostor"]) == (c["genuine"],
                                                                                             c["impostor"])
    with Gallery(Settings(home=home, progress=False)) as g:
        weights = stored_weights(g)
        gen, imp = centroid_gallery_scores(stored_vectors(g, "dlib"))  # calibrate scores as identify: centroids
        t, where = resolve_thresholds(g, ["dlib"])["dlib"]
    assert where == "calibrated" and e["weights_sha256"] == weights["dlib"] and len(weights["dlib"]) == 64
    cal = app_reports.load_calibrations(home, None, weights)
    far, frr = cal.curves["dlib"].rates_at(t)
    assert (far, frr) == brute(gen, imp, t) and far <= 0.01
    assert (far, 1 - frr) == (pytest.approx(c["far"], abs=1e-6), pytest.approx(c["tar"], abs=1e-6))
    assert "genuine" in cal.text("dlib", t) and cal.text("dlib", t).startswith("expected false accepts")

    # a second calibration merges: another embedder's curve stays, dlib's is replaced
    write_curves(home, {"facenet": entry("kept")})
    run(["calibrate", "--store", "--json", "--target-far", "0.05"], home)
    models = json.loads(path.read_text())["models"]
    assert models["facenet"]["source"] == "kept" and models["dlib"]["target_far"] == 0.05

    # a corrupt file: one warning line for the reader, replaced by the next calibration, no traceback
    path.write_text('{"models": {"dlib": {"thresholds": [0.1,')
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert "dlib" not in app_reports.load_calibrations(home).curves
        res = run(["calibrate", "--store", "--json"], home)
    assert "Traceback" not in res.output
    assert sum(CALIBRATION_FILE in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 2
    assert sorted(json.loads(path.read_text())["models"]) == ["dlib"]


def test_storing_a_threshold_measured_with_other_weights_is_refused(tmp_path):
    """calibrate scores outside the write lock; a reembed in between must not let old-weights thresholds in."""
    from db import queries as q
    from gallery.calibration.calibrate import Calibration, store_calibrations
    from gallery.calibration.thresholds import stored_thresholds
    from gallery.enroll.enroll import enroll_folder
    from gallery.errors import WeightsMismatchError

    def calibration(sha):
        return Calibration(model="dlib", source="test", target_far=1e-3, threshold=0.9, far=1e-3, tar=0.9,
                           genuine=10, impostor=1000, measurable=True, weights_sha256=sha)

    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, make_people(tmp_path / "people", people=2, photos=2), models=["dlib"], augment=0)
        with g.session() as s:
            current = q.stored_weights(s, "dlib")
        with pytest.raises(WeightsMismatchError, match="nothing stored"):
            store_calibrations(g, [calibration("0" * 64)])
        assert "dlib" not in stored_thresholds(g)
        assert store_calibrations(g, [calibration(current)])[0].stored
        assert stored_thresholds(g)["dlib"] == 0.9


def test_a_stale_source_hides_its_single_calibrated_point_too():
    """Points carry no weights sha: when the curve of a source is stale, its point must not be shown as valid."""
    point = app_reports.CalibratedPoint("dlib", 0.9, 0.001, 0.1, "old bench")
    stale = app_reports.Calibrations(curves={}, points={"dlib": point}, stale={"dlib": "made with other weights"})
    assert stale.text("dlib", 0.9) == f"{app_reports.NO_CALIBRATION}: made with other weights"
    fresh = app_reports.Calibrations(curves={}, points={"dlib": point})
    assert fresh.text("dlib", 0.9).startswith("calibrated at 0.900")
