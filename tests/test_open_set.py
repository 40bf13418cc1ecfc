"""Issue 13: open-set answers you can trust (protocol, scoring, gallery-size thresholds, quality, fallback, inputs)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from gallery.benchmark.data import read_pairs
from gallery.benchmark.open_set import IDENTIFY_SCORING, Scoring, open_set_split, photos_per_person, score_split
from gallery.benchmark.photo_vectors import PhotoVectors
from gallery.benchmark.threshold_fit import FitPoint, fit_size_model
from gallery.calibration.calibrate import calibrate_gallery, centroid_gallery_scores
from gallery.calibration.thresholds import (
    DEFAULT_THRESHOLDS,
    SizeModel,
    ThresholdChoice,
    identify_thresholds,
    size_models,
)
from gallery.enroll.enroll import enroll_folder
from gallery.errors import InvalidInputError
from gallery.heads.train import stored_vectors
from gallery.recognize.identify import identify
from gallery.recognize.quality import DEFAULT_RULE, QualityRule, face_blur
from gallery.recognize.scoring import centroids, flip_average, person_scores
from tests.fakes import FakeEmbedder, person_image
from tests.helpers import fake_opener, make_dataset, make_people, open_gallery, write_pairs

SHIPPED = size_models()
DLIB = SHIPPED.get(("dlib", "centroid"))


def unit(rng, n, d=8) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def real_weights_store() -> dict:
    """A fake 'dlib' embedder carrying the weights hash the shipped size model was fitted with."""
    return {"dlib": FakeEmbedder("dlib", sha=DLIB.weights_sha256)}


# -- the threshold model ---------------------------------------------------------------------------------------------
def test_a_size_model_ships_for_dlib_with_its_provenance():
    assert DLIB is not None and DLIB.weights_sha256 and len(DLIB.weights_sha256) == 64
    assert {a for e, a in SHIPPED if e == "dlib"} == {"centroid", "max", "mean3"}


@pytest.mark.parametrize("key", sorted(SHIPPED))
def test_the_threshold_model_is_monotone_in_gallery_size(key):
    model = SHIPPED[key]
    people = [1, 2, 5, 10, 70, 300, 1000, 10_000, 1_000_000]
    for photos in (1, 2, 4, 8, 50):
        t = [model.threshold(n, photos) for n in people]
        assert all(a <= b for a, b in zip(t, t[1:])), (photos, t)
        assert t[0] < t[-1]  # it does follow the size
    for n in people:
        t = [model.threshold(n, m) for m in (1, 1.5, 2, 4, 8, 20, 100)]
        assert all(a <= b for a, b in zip(t, t[1:]))
    # a stricter target (fewer strangers named) never lowers the threshold
    t = [model.threshold(70, 4, f) for f in (0.1, 0.05, 0.01, 0.001)]
    assert all(a < b for a, b in zip(t, t[1:]))
    assert all(-1.0 <= model.threshold(n, 4, 1e-9) <= 1.0 for n in people)


def test_the_fitted_model_is_near_its_measured_values():
    # DevTrain, centroid + flip query: 70 people x 4 photos at FPIR 1% measured 0.948 (benchmarks/open_set.py fit)
    assert DLIB.threshold(70, 4, 0.01) == pytest.approx(0.948, abs=0.003)
    assert DLIB.threshold(10, 4, 0.01) < DLIB.threshold(1000, 4, 0.01) < 1.0
    with pytest.raises(ValueError):
        DLIB.threshold(10, 4, 0.0)


def test_fit_recovers_a_known_plane():
    truth = SizeModel("x", "centroid", 0.9, 0.005, 0.006, 0.004)
    pts = [FitPoint(n, m, f, truth.threshold(n, m, f), 1000) for n in (10, 100, 1000) for m in (1, 2, 4, 8)
           for f in (0.005, 0.01, 0.05)]
    model, rms = fit_size_model(pts, "x", "centroid", True)
    assert rms < 1e-9
    assert (model.a, model.b, model.c, model.d) == pytest.approx((0.9, 0.005, 0.006, 0.004), abs=1e-9)


# -- what identify reports --------------------------------------------------------------------------------------------
def test_identify_reports_the_threshold_it_used_and_why(tmp_path):
    store = real_weights_store()
    make_people(tmp_path / "people", people=3, photos=2)
    with open_gallery(tmp_path / "g", store) as g:
        enroll_folder(g, tmp_path / "people", models=["dlib"], augment=2)
        probe = tmp_path / "people" / "person_0" / "0.jpg"
        rep = identify(g, [probe])
        reason = rep.to_dict()["threshold_reasons"]["dlib"]
        assert reason["source"] == "gallery size" == rep.threshold_sources["dlib"]
        assert (reason["people"], reason["photos_per_person"], reason["target_fpir"]) == (3, 2.0, 0.01)
        assert reason["value"] == rep.thresholds["dlib"] == DLIB.threshold(3, 2.0, 0.01)
        assert "3 people" in reason["reason"] and "FPIR 0.01" in reason["reason"]
        stricter = identify(g, [probe], target_fpir=0.001)
        assert stricter.thresholds["dlib"] > rep.thresholds["dlib"]
        given = identify(g, [probe], threshold=0.5).to_dict()["threshold_reasons"]["dlib"]
        assert given == {"value": 0.5, "source": "option", "reason": "--threshold"}
        (cal,) = calibrate_gallery(g, ["dlib"], target_far=0.1, store=True)
        won = identify(g, [probe]).to_dict()["threshold_reasons"]["dlib"]  # calibrate wins over the model
        assert won["source"] == "calibrated" and won["value"] == cal.threshold


def test_other_weights_keep_the_fixed_default(tmp_path):
    make_people(tmp_path / "people", people=2, photos=2)
    with open_gallery(tmp_path / "g") as g:  # the fakes' weights hash is not the one the model was fitted on
        enroll_folder(g, tmp_path / "people", models=["dlib"], augment=0)
        choice = identify_thresholds(g, ["dlib"])["dlib"]
    assert choice == ThresholdChoice(DEFAULT_THRESHOLDS["dlib"], "default")
    assert "fixed default" in choice.to_dict()["reason"]


def test_identify_cli_says_which_threshold_and_why(tmp_path, monkeypatch):
    import cli.commands_core as core
    from cli.main import cli

    store = real_weights_store()
    make_people(tmp_path / "people", people=2, photos=2)
    monkeypatch.setattr(core, "open_gallery", fake_opener(store))
    home = ["--gallery", str(tmp_path / "g")]
    assert CliRunner().invoke(cli, home + ["enroll", str(tmp_path / "people"), "--augment", "0"]).exit_code == 0
    probe = str(tmp_path / "people" / "person_1" / "1.jpg")
    res = CliRunner().invoke(cli, home + ["identify", probe, "--json", "--target-fpir", "0.02"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["target_fpir"] == 0.02 and doc["aggregate"] == "centroid"
    assert doc["threshold_reasons"]["dlib"]["people"] == 2
    text = CliRunner().invoke(cli, home + ["identify", probe]).stdout
    assert "gallery size: 2 people x 2.0 photos, target FPIR 0.01" in text


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1.5", "-1.01", "abc"])
@pytest.mark.parametrize("command", ["identify", "verify", "benchmark"])
def test_a_threshold_that_is_not_a_cosine_is_a_usage_error(tmp_path, command, value):
    from cli.main import cli

    img = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(img)
    args = {"identify": ["identify", str(img)], "verify": ["verify", str(img), str(img)],
            "benchmark": ["benchmark", str(tmp_path)]}[command]
    res = CliRunner().invoke(cli, ["--gallery", str(tmp_path / "g")] + args + ["--threshold", value])
    assert res.exit_code == 2, res.output
    assert "threshold" in res.output and "Traceback" not in res.output


def test_the_library_refuses_a_non_finite_threshold(tmp_path):
    make_people(tmp_path / "people", people=2, photos=1)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, tmp_path / "people", models=["dlib"], augment=0)
        for bad in (math.nan, math.inf, 2.0):
            with pytest.raises(InvalidInputError, match="threshold"):
                identify(g, [tmp_path / "people" / "person_0" / "0.jpg"], threshold=bad)


# -- scoring: identify against numpy oracles ----------------------------------------------------------------------
@pytest.mark.numeric
def test_identify_scores_a_flip_averaged_query_against_centroids_of_original_crops(tmp_path):
    store = {}
    make_people(tmp_path / "people", people=3, photos=3)
    probe = tmp_path / "probe.png"
    Image.open(tmp_path / "people" / "person_1" / "2.jpg").rotate(5).save(probe)
    with open_gallery(tmp_path / "g", store) as g:
        enroll_folder(g, tmp_path / "people", models=["dlib"], augment=3)
        store["dlib"].flip_tta = True  # as the real dlib embedder declares
        data = stored_vectors(g, "dlib")
        orig = data.aug == 0
        people, cents = centroids(data.vectors[orig], data.person_ids[orig])  # augmented copies left out
        img = Image.open(probe).convert("RGB")
        (face,) = g.detector.detect(img)
        emb = store["dlib"]
        chip = emb.crop(img, face)
        q = flip_average(emb.embed_crops([chip]), emb.embed_crops([chip.transpose(Image.FLIP_LEFT_RIGHT)]))[0]
        oracle = {data.names[int(p)]: float(c @ q) for p, c in zip(people, cents)}
        (f,) = identify(g, [probe], threshold=-1.0, top_k=3).images[0].faces
    got = {c.identity: c.score for c in f.models["dlib"].candidates}
    assert set(got) == set(oracle)
    for name, score in got.items():
        assert score == pytest.approx(oracle[name], abs=1e-5)
    assert f.models["dlib"].identity == max(oracle, key=oracle.get) == "person_1"


@pytest.mark.numeric
def test_person_scores_match_a_loop():
    rng = np.random.default_rng(1)
    vecs, owners, q = unit(rng, 30), rng.integers(0, 6, 30), unit(rng, 5)
    for agg in ("max", "mean3", "centroid"):
        people, s = person_scores(q, vecs, owners, agg)
        for j, p in enumerate(people):
            sims = vecs[owners == p] @ q.T
            if agg == "max":
                want = sims.max(0)
            elif agg == "mean3":
                want = -np.sort(-sims, axis=0)[:3].mean(0)
            else:
                c = vecs[owners == p].sum(0)
                want = q @ (c / np.linalg.norm(c))
            np.testing.assert_allclose(s[:, j], want, atol=1e-5)


@pytest.mark.numeric
def test_calibrate_leave_one_photo_out_centroid_matches_a_loop(tmp_path):
    ds = make_dataset(tmp_path / "ds", people=4, photos=3)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, ds, models=["dlib"], augment=2)
        data = stored_vectors(g, "dlib")
    gen, imp = [], []
    orig = np.flatnonzero(data.aug == 0)
    for i in orig:
        for p in np.unique(data.person_ids):
            others = [j for j in orig if data.person_ids[j] == p and j != i]
            if not others:
                continue
            c = data.vectors[others].astype(np.float64).sum(0)
            (gen if p == data.person_ids[i] else imp).append(data.vectors[i] @ (c / np.linalg.norm(c)))
    own_gen, own_imp = centroid_gallery_scores(data)
    np.testing.assert_allclose(np.sort(own_gen), np.sort(gen), atol=1e-5)
    np.testing.assert_allclose(np.sort(own_imp), np.sort(imp), atol=1e-5)


# -- the protocol -------------------------------------------------------------------------------------------------
def protocol_people() -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    return {f"p{i:03d}": [f"p{i:03d}/{j}" for j in range(int(rng.choice([1, 2, 3, 6, 9])))] for i in range(300)}


def test_the_open_set_protocol():
    people = protocol_people()
    probed = {p for p, v in people.items() if len(v) >= 5}
    pools = set()
    for size in (10, 70, 150):
        s = open_set_split(people, size, seed=3)
        strangers = {p for p, _ in s.strangers}
        pools.add(frozenset(strangers))
        assert len(s.enrolled) == size and not strangers & set(s.enrolled)
        assert strangers and all(len([1 for p, _ in s.strangers if p == x]) <= 5 for x in strangers)
        probe_people = {p for p, _ in s.probes}
        for p, photos in s.enrolled.items():
            if p in probed:
                assert len(photos) == 4 and p in probe_people  # 4 enrolled, probed with the rest
                assert {k for q, k in s.probes if q == p} == set(people[p]) - set(photos)
            else:
                assert photos == people[p] and p not in probe_people  # distractors: all photos, never probed
        assert s.distractors == sum(p not in probed for p in s.enrolled)
        assert photos_per_person(s) == pytest.approx(np.mean([len(v) for v in s.enrolled.values()]))
    assert len(pools) == 1  # the strangers do not depend on the gallery size
    assert open_set_split(people, 70, 4).enrolled != open_set_split(people, 70, 5).enrolled
    with pytest.raises(InvalidInputError):
        open_set_split(people, 1000, 0)


def test_scoring_a_split_in_memory():
    people = protocol_people()
    keys = sorted(k for v in people.values() for k in v)
    rng = np.random.default_rng(2)
    centre = {p: unit(rng, 1, 16)[0] for p in people}
    vec = np.stack([centre[k.split("/")[0]] + 0.15 * unit(rng, 1, 16)[0] for k in keys])
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    n = len(keys)
    pv = PhotoVectors(keys, vec.astype(np.float32), vec[:, ::-1].copy().astype(np.float32), np.zeros((n, 0, 16)),
                      np.ones(n), np.full(n, 90.0), np.zeros(n), np.zeros(n, bool), np.ones(n, bool))
    split = open_set_split(people, 40, 0)
    sc = score_split(split, pv, Scoring("centroid"))
    assert len(sc.genuine) == len(split.probes) and len(sc.stranger) == len(split.strangers)
    assert sc.correct.mean() > 0.95 and np.median(sc.genuine) > np.median(sc.stranger)
    assert len(score_split(split, pv, IDENTIFY_SCORING).stranger) == len(split.strangers)
    flagged = score_split(split, pv, Scoring("centroid", quality=QualityRule(min_face_px=100)))  # all faces 90 px
    assert np.all(np.isneginf(flagged.stranger)) and np.all(np.isneginf(flagged.genuine))  # never named


# -- low quality and the whole-image fallback -----------------------------------------------------------------------
def test_the_quality_rule():
    assert DEFAULT_RULE.problems(90, 0.5, 0.999) == ()
    assert DEFAULT_RULE.problems(20, 0.5, 0.999)[0].startswith("small face")
    assert DEFAULT_RULE.problems(90, 0.8, 0.999)[0].startswith("blurred")
    assert DEFAULT_RULE.problems(90, 0.5, 0.95) == ()  # measured: no wrong names to prevent (quality.py)
    assert QualityRule(min_det_prob=0.99).problems(90, 0.5, 0.95)[0].startswith("weak detection")
    assert QualityRule(min_det_prob=0.99).problems(90, 0.5, None) == ()  # a fallback face has no probability
    assert QualityRule(0, 1, 0).problems(1, 1, 0) == ()


def test_blur_measure_orders_blur_levels():
    img = person_image(5).resize((240, 280))
    box = (24.0, 28.0, 216.0, 252.0)
    levels = [face_blur(img.filter(ImageFilter.GaussianBlur(s)), box) if s else face_blur(img, box)
              for s in (0, 1, 2, 4, 8)]
    assert all(a < b for a, b in zip(levels, levels[1:])) and 0 <= levels[0] and levels[-1] <= 1
    assert levels[-1] > DEFAULT_RULE.max_blur > levels[0]


def test_small_and_blurred_faces_get_low_quality_not_a_name(tmp_path):
    make_people(tmp_path / "people", people=2, photos=2)
    blurred = tmp_path / "blurred.png"
    Image.open(tmp_path / "people" / "person_0" / "0.jpg").filter(ImageFilter.GaussianBlur(6)).save(blurred)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, tmp_path / "people", models=["dlib"], augment=0)
        (sharp,) = identify(g, [tmp_path / "people" / "person_0" / "0.jpg"], threshold=0.5).images[0].faces
        (f,) = identify(g, [blurred], threshold=-1.0).images[0].faces
        (tiny,) = identify(g, [blurred], threshold=-1.0, quality=QualityRule(min_face_px=1000)).images[0].faces
    assert sharp.quality == () and sharp.models["dlib"].status == "match"
    a = f.models["dlib"]
    assert a.status == "low_quality" and a.identity is None and a.candidates  # candidates still listed
    assert f.to_dict()["low_quality"] and f.quality[0].startswith("blurred")
    assert tiny.quality[0].startswith("small face")


def test_identify_whole_image_fallback_is_marked(tmp_path, monkeypatch):
    import cli.commands_core as core
    from cli.main import cli

    make_people(tmp_path / "people", people=2, photos=2)
    crop = tmp_path / "crop.png"
    Image.new("RGB", (80, 90), (120, 110, 100)).save(crop)  # uniform: the fake detector finds no face in it
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, tmp_path / "people", models=["dlib"], augment=0)
        assert identify(g, [crop]).images[0].faces == []
        (f,) = identify(g, [crop], whole_image_fallback=True).images[0].faces
    assert f.fallback and f.to_dict()["fallback"] is True and f.box == (0.0, 0.0, 80.0, 90.0)
    assert f.quality == ()  # no detection probability to judge, and the uniform box is not 'blurred' by size
    monkeypatch.setattr(core, "open_gallery", fake_opener())
    res = CliRunner().invoke(cli, ["--gallery", str(tmp_path / "g"), "identify", str(crop),
                                   "--whole-image-fallback", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"][0]["faces"][0]["fallback"] is True
    text = CliRunner().invoke(cli, ["--gallery", str(tmp_path / "g"), "identify", str(crop),
                                    "--whole-image-fallback"]).stdout
    assert "fallback: whole image" in text


# -- benchmark fixes ------------------------------------------------------------------------------------------------
def write_view1(path, same, diff):
    lines = [str(len(same))] + ["\t".join(map(str, s)) for s in same] + ["\t".join(map(str, d)) for d in diff]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_view1_pairs_file_is_read(tmp_path):
    ds = make_dataset(tmp_path / "ds", people=4, photos=5)
    same = [(f"p{p}", i, i + 1) for p in range(4) for i in (1, 2, 3)][:10]
    diff = [(f"p{p}", 1, f"p{(p + 1) % 4}", i) for p in range(4) for i in (1, 2, 3)][:10]
    pairs = read_pairs(write_view1(tmp_path / "pairsDevTest.txt", same, diff), ds)
    assert len(pairs) == 20 and pairs.same.sum() == 10 and len(set(pairs.fold)) == 10
    assert pairs.left[0] == "p0/p0_0001.jpg" and pairs.right[0] == "p0/p0_0002.jpg"
    assert all(pairs.same[pairs.fold == f].sum() == 1 for f in range(10))  # each fold: same and different
    with pytest.raises(InvalidInputError, match="View 1"):
        read_pairs(write_view1(tmp_path / "short.txt", same[:5], diff[:5]), ds)
    (tmp_path / "bad.txt").write_text("a b c\n")
    with pytest.raises(InvalidInputError, match="View 2"):
        read_pairs(tmp_path / "bad.txt", ds)
    assert len(read_pairs(write_pairs(tmp_path / "v2.txt", same, diff, folds=2), ds)) == 20  # View 2 still read


@pytest.mark.data
def test_the_real_view1_files_are_read(lfw_dir):
    root = lfw_dir / "lfw-deepfunneled"
    assert len(read_pairs(lfw_dir / "pairsDevTest.txt", root)) == 1000
    assert len(read_pairs(lfw_dir / "pairsDevTrain.txt", root)) == 2200


def test_the_histogram_says_when_far_1e3_cannot_be_measured(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from gallery.benchmark import plots

    texts = []
    real = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, *a, **k: texts.append(a[2]) or real(self, *a, **k))
    rng = np.random.default_rng(0)
    plots.score_histogram("dlib", False, rng.random(50), rng.random(300), [], "t", tmp_path / "a.png")
    assert texts and "cannot be measured on 300 impostor scores" in texts[0]
    texts.clear()
    plots.score_histogram("dlib", False, rng.random(50), rng.random(2000), [], "t", tmp_path / "b.png")
    assert texts == []


def test_benchmark_open_set_protocol_writes_the_sweep_and_its_plot(tmp_path):
    from gallery.benchmark.open_set_run import OpenSetConfig
    from gallery.benchmark.report import write_report
    from gallery.benchmark.run import BenchmarkConfig, run_benchmark
    from gallery.config import Settings
    from tests.fakes import FakeDetector, fake_factory

    ds = make_dataset(tmp_path / "ds", people=40, photos=5)
    cfg = BenchmarkConfig(models=("dlib",), protocol="open-set", open_set=OpenSetConfig((5, 10, 500), seeds=2))
    rep = run_benchmark(ds, cfg, Settings(home=tmp_path / "home", progress=False), detector=FakeDetector(),
                        embedder_factory=fake_factory())
    rows = rep.open_set.rows["dlib"]
    assert [r.size for r in rows] == [5, 10] and any("skipped" in n for n in rep.notes)
    assert set(rows[0].rules) == {"default", "calibrated", "fixed"}
    assert rows[0].rules["fixed"][0] == DEFAULT_THRESHOLDS["dlib"]
    files = write_report(rep, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Open-set identification" in md and "calibrated threshold" in md
    assert (tmp_path / "report" / "open_set.png").stat().st_size > 1000 and len(files) >= 3
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert doc["open_set"]["rows"]["dlib"][0]["size"] == 5
