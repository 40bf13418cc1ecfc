"""The web app through Streamlit's own headless test API (AppTest), over a real dlib gallery of five_celebrity.

The gallery (MTCNN + the real dlib embedder, 4 training photos per person, no augmentation) is built once per
session by :func:`shared_dlib_gallery`; tests that write (enroll, forget) work on a copy of it.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from filelock import FileLock
from PIL import Image

from app import reports as app_reports
from app import support as app_support
from gallery.config import Settings
from gallery.manage.people import list_people
from gallery.results import FaceResult, HeadAnswer, ImageResult, ModelAnswer
from gallery.store import Gallery

APP = Path(__file__).resolve().parents[1] / "app" / "page.py"
PHOTOS_PER_PERSON = 4
TIMEOUT_S = 240


def shared_dlib_gallery(tmp_path_factory, five_celebrity: Path) -> Path:
    """Build (once per test session, also across modules) a dlib gallery from five_celebrity/train."""
    from gallery.enroll.enroll import enroll_folder

    base = tmp_path_factory.getbasetemp()
    home, done = base / "app_dlib_gallery", base / "app_dlib_gallery.done"
    with FileLock(str(base / "app_dlib_gallery.lock")):
        if not done.exists():
            people = base / "app_dlib_people"
            for person in sorted(p for p in (five_celebrity / "train").iterdir() if p.is_dir()):
                (people / person.name).mkdir(parents=True, exist_ok=True)
                for photo in sorted(person.iterdir())[:PHOTOS_PER_PERSON]:
                    (people / person.name / photo.name).symlink_to(photo)
            with Gallery(Settings(home=home, progress=False)) as g:
                report = enroll_folder(g, people, models=["dlib"], augment=0, follow_symlinks=True)  # links to data
            assert len(report.enrolled) >= 18, report.skipped
            done.touch()
    return home


@pytest.fixture(scope="session")
def dlib_gallery(tmp_path_factory, five_celebrity) -> Path:
    return shared_dlib_gallery(tmp_path_factory, five_celebrity)


@pytest.fixture
def gallery_copy(dlib_gallery, tmp_path) -> Path:
    return Path(shutil.copytree(dlib_gallery, tmp_path / "gallery"))


def val_photo(five_celebrity: Path, person: str, n: int = 0) -> Path:
    return sorted((five_celebrity / "val" / person).iterdir())[n]


@pytest.fixture
def app_env(monkeypatch):
    """Point the app at a gallery through the environment, as ``streamlit run`` would see it."""
    for var in (app_support.APP_SETTINGS_ENV, app_reports.REPORTS_ENV, "FACEGALLERY_DB_URL", "FACEGALLERY_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)

    def start(home: Path):
        from streamlit.testing.v1 import AppTest

        monkeypatch.setenv("FACEGALLERY_HOME", str(home))
        # as `facegallery app --no-auth --allow-paths` starts it (the token gate: tests/test_reliability2_app.py)
        monkeypatch.setenv("FACEGALLERY_APP_ACCESS", '{"auth": false, "paths": true}')
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
        at.run()
        assert not at.exception, at.exception
        return at

    return start


def texts(at, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def table(at, n: int = 0, sidebar: bool = False) -> list[dict]:
    root = at.sidebar if sidebar else at.main
    return root.table[n].value.to_dict("records")


def upload(name: str, data: bytes) -> tuple[str, bytes, str]:
    return name, data, "image/png" if name.endswith(".png") else "image/jpeg"


# -- pure helpers -----------------------------------------------------------------------------------------------
def test_settings_round_trip_through_the_environment(tmp_path):
    s = Settings(home=tmp_path / "g", weights={"facenet": "random"}, weights_dir=tmp_path / "w", batch_size=7)
    back = app_support.settings_from_env({app_support.APP_SETTINGS_ENV: app_support.settings_to_env(s)})
    assert back == s
    plain = app_support.settings_from_env({"FACEGALLERY_HOME": str(tmp_path / "h")})
    assert plain.home == tmp_path / "h" and plain.db_url == f"sqlite:///{tmp_path / 'h' / 'gallery.sqlite'}"


def write_report(folder: Path) -> Path:
    """A report.json shaped like gallery.benchmark.report's, plus a FAR/FRR curve for dlib, and a ROC png."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "verification": {"rows": [{"model": "dlib", "accuracy": 0.9912, "auc": 0.998, "tar_at_far": {"0.01": 0.97},
                                   "fold_accuracies": [0.99] * 10}]},
        "identification": {"rows": [{"model": "dlib", "augment": 0, "method": "nearest neighbour", "top1": 0.95}]},
        "calibration": [{"model": "dlib", "threshold": 0.93, "far": 0.001, "tar": 0.9, "source": "verification pairs"},
                        {"model": "facenet", "threshold": 0.4, "far": 0.002, "tar": 0.8, "source": "pairs"}],
        "models": {"dlib": {"thresholds": [0.99, 0.90, 0.95], "far": [0.0, 0.2, 0.01], "frr": [0.5, 0.0, 0.1],
                            "source": "test curve"}},
    }
    path = folder / "report.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "roc_verification.png")
    return path


def test_calibration_curve_and_report_reading(tmp_path):
    report = write_report(tmp_path / "home" / "reports" / "run1")
    assert app_reports.latest_report(tmp_path / "home", environ={}) == report
    cal = app_reports.load_calibrations(tmp_path / "home", report)
    far, frr = cal.curves["dlib"].rates_at(0.925)  # halfway between 0.90 (0.2, 0.0) and 0.95 (0.01, 0.1)
    assert far == pytest.approx(0.105) and frr == pytest.approx(0.05)
    assert cal.curves["dlib"].rates_at(1.5) == (0.0, 0.5)  # held at the end values
    assert cal.text("dlib", 0.925) == "expected false accepts 10.50%, false rejects 5.00% at 0.925 (test curve)"
    assert cal.text("facenet", 0.5).startswith("calibrated at 0.400: false accepts 0.20%, false rejects 20.00%")
    assert cal.text("resnet50", 0.8) == app_reports.NO_CALIBRATION
    # the gallery's own calibration.json wins over the report
    (tmp_path / "home" / "calibration.json").write_text(json.dumps(
        {"models": {"dlib": {"thresholds": [0.0, 1.0], "far": [1.0, 0.0], "frr": [0.0, 1.0]}}}))
    assert app_reports.load_calibrations(tmp_path / "home", report).curves["dlib"].rates_at(0.25) == (0.75, 0.25)
    view = app_reports.benchmark_view(tmp_path / "home", environ={})
    assert view.tables["verification"] == [{"model": "dlib", "accuracy": 0.9912, "auc": 0.998,
                                            "tar_at_far 0.01": 0.97}]
    assert view.tables["identification"][0]["top1"] == 0.95
    assert view.roc_pngs == {"roc_verification.png": str(report.parent / "roc_verification.png")}
    assert app_reports.benchmark_view(tmp_path / "empty", environ={}) is None


# -- the app ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.data
def test_upload_identify_and_threshold_change(app_env, dlib_gallery, five_celebrity, tmp_path, monkeypatch):
    write_report(tmp_path / "report")
    monkeypatch.setenv(app_reports.REPORTS_ENV, str(tmp_path / "report"))
    at = app_env(dlib_gallery)
    assert "**5** people" in " ".join(texts(at.sidebar, "markdown"))
    weights = texts(at.sidebar, "caption")
    assert "dlib: present (face_recognition_models package; in this gallery)" in weights
    assert "facenet: missing (import with: facegallery models import; not in this gallery)" in weights
    assert table(at, 1, sidebar=True)[0]["accuracy"] == 0.9912  # latest benchmark comparison
    assert at.sidebar.get("image")[0].captions == ["roc_verification.png"]
    from gallery.calibration.thresholds import identify_thresholds

    with Gallery(Settings(home=dlib_gallery, progress=False)) as g:  # issue 13: the default follows the gallery
        default = identify_thresholds(g, ["dlib"])["dlib"].value
    assert at.slider(key="threshold_dlib").value == pytest.approx(default)
    assert f"follows the gallery's size: {default:.3f}" in texts(at, "caption")
    assert any(c.startswith("expected false accepts") and c.endswith(f"at {default:.3f} (test curve)")
               for c in texts(at, "caption"))

    photo = val_photo(five_celebrity, "ben_afflek")
    at.file_uploader(key="identify_files").set_value([upload("ben.jpg", photo.read_bytes())])
    at.run()
    assert not at.exception and not at.error
    assert texts(at, "text")[0].startswith("Face 1: ben_afflek (dlib 0.9")
    rows = table(at)
    assert len(rows) == 1 and rows[0]["dlib"] == "ben_afflek" and float(rows[0]["dlib score"]) > 0.95
    assert at.main.get("image")[0].captions == ["ben.jpg"]

    at.slider(key="threshold_dlib").set_value(0.99)
    at.run()
    after = table(at)
    assert after[0]["dlib"] == "unknown" and after[0]["dlib score"] == rows[0]["dlib score"]
    assert "expected false accepts 0.00%, false rejects 50.00% at 0.990 (test curve)" in texts(at, "caption")


def _corrupt_and_odd_uploads(photo: Path) -> list[tuple[str, bytes, str]]:
    good = photo.read_bytes()
    blank, huge = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (240, 240), (128, 128, 128)).save(blank, "PNG")
    Image.new("1", (10_000, 9_000)).save(huge, "PNG")  # 90 Mpixel: over the decoder's bomb limit
    return [
        upload("notes.jpg", b"these are my notes, not a photo"),
        upload("cut.jpg", good[: len(good) // 2]),
        upload("blank.png", blank.getvalue()),
        upload("huge.png", huge.getvalue()),
        upload("big.jpg", b"\xff\xd8" + bytes(app_support.MAX_UPLOAD_BYTES)),
        upload("ok.jpg", good),
    ]


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns before refusing
def test_bad_uploads_show_a_message_and_the_app_keeps_running(app_env, dlib_gallery, five_celebrity):
    at = app_env(dlib_gallery)
    madonna = val_photo(five_celebrity, "madonna")
    at.file_uploader(key="identify_files").set_value(_corrupt_and_odd_uploads(madonna))
    at.run()
    assert not at.exception
    errors = texts(at, "error")
    assert errors[0] == "notes.jpg: not an image"
    assert errors[1] == "cut.jpg: truncated file"
    assert errors[2].startswith("huge.png: decompression bomb: 90000000 pixels")
    assert errors[3] == "big.jpg: file too large (25.0 MB > 25 MB)"
    assert texts(at, "warning") == ["blank.png: no face detected"]
    assert table(at)[0]["dlib"] == "madonna"  # the good photo among them is still identified

    at.file_uploader(key="identify_files").set_value(None)
    at.text_input(key="identify_path").set_value(str(madonna.parent / "missing.jpg")).run()
    assert texts(at, "error") == [f"{madonna.parent / 'missing.jpg'}: no such file"]
    at.text_input(key="identify_path").set_value(str(madonna)).run()
    assert not at.error and table(at)[0]["dlib"] == "madonna"


@pytest.mark.slow
@pytest.mark.data
def test_enroll_page_enrolls_and_lists_skipped_files(app_env, gallery_copy, five_celebrity):
    at = app_env(gallery_copy)
    at.sidebar.radio(key="page").set_value("Enroll").run()
    at.button(key="enroll_go").click().run()
    assert texts(at, "error") == ["choose one or more photos of the person"]

    photos = [val_photo(five_celebrity, "elton_john", n) for n in (1, 2)]
    files = [upload(f"elton{n}.jpg", p.read_bytes()) for n, p in enumerate(photos)]
    at.file_uploader(key="enroll_files").set_value(files + [upload("readme.jpg", b"not a photo")])
    at.text_input(key="enroll_name").set_value("  ")
    at.number_input(key="enroll_augment").set_value(0)
    at.button(key="enroll_go").click().run()
    assert texts(at, "error") == ["person name is blank"]

    at.text_input(key="enroll_name").set_value("Reginald Dwight")
    at.button(key="enroll_go").click().run()
    assert not at.exception and not at.error
    assert texts(at, "success") == ["Enrolled 2 photo(s) of Reginald Dwight (vectors: dlib +2)."]
    assert texts(at, "warning") == ["1 file(s) skipped:"]
    assert table(at) == [{"file": "readme.jpg", "reason": "not an image"}]
    assert "**6** people" in " ".join(texts(at.sidebar, "markdown"))
    with Gallery(Settings(home=gallery_copy, progress=False)) as g:
        assert {p.name: p.photos for p in list_people(g)}["Reginald Dwight"] == 2


@pytest.mark.slow
@pytest.mark.data
def test_forget_asks_for_confirmation(app_env, gallery_copy):
    at = app_env(gallery_copy)
    at.sidebar.radio(key="page").set_value("People").run()
    before = table(at)
    assert [r["name"] for r in before] == ["ben_afflek", "elton_john", "jerry_seinfeld", "madonna", "mindy_kaling"]
    assert all(1 <= r["photos"] <= PHOTOS_PER_PERSON and r["dlib"] == r["photos"] for r in before)

    at.selectbox(key="forget_name").set_value("madonna").run()
    at.button(key="forget_ask").click().run()
    assert texts(at, "warning")[0].startswith("Forget madonna? ")
    assert len(table(at)) == 5
    at.button(key="forget_cancel").click().run()
    assert not at.warning and len(table(at)) == 5

    at.button(key="forget_ask").click().run()
    at.button(key="forget_yes").click().run()
    assert not at.exception
    madonna = next(r for r in before if r["name"] == "madonna")
    assert texts(at, "success") == [f"Forgot madonna: {madonna['photos']} photo(s), vectors removed: "
                                    f"dlib {madonna['dlib']}."]
    assert "madonna" not in [r["name"] for r in table(at)]
    assert "**4** people" in " ".join(texts(at.sidebar, "markdown"))
    with Gallery(Settings(home=gallery_copy, progress=False)) as g:
        assert "madonna" not in {p.name for p in list_people(g)}


def test_app_reports_a_missing_gallery_folder_instead_of_crashing(app_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    at = app_env(blocker / "gallery")
    assert texts(at, "error")[0].startswith("Cannot open the gallery: cannot create gallery folder")


def test_empty_gallery_points_to_the_enroll_page_and_flags_random_weights(app_env, tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "new", weights={"facenet": "random"})
    monkeypatch.setenv(app_support.APP_SETTINGS_ENV, app_support.settings_to_env(settings))
    at = app_env(tmp_path / "ignored")  # the settings document wins over FACEGALLERY_HOME
    assert texts(at, "info") == ["The gallery is empty: enroll people on the Enroll page first."]
    assert at.sidebar.caption[0].value == str(tmp_path / "new") and not at.sidebar.table
    assert "dlib: present (face_recognition_models package; not in this gallery)" in texts(at.sidebar, "caption")
    assert texts(at.sidebar, "warning") == [
        "facenet: random weights (seeded random init (development only); not in this gallery)"]


def test_face_rows_show_every_embedder_and_the_head():
    head = HeadAnswer("ann", 0.91)
    face = FaceResult(0, (10.4, 20.0, 50.6, 80.0), 0.99, {
        "dlib": ModelAnswer("ann", "match", 0.951, 0.925, (), head=head),
        "facenet": ModelAnswer("bob", "ambiguous", 0.612, 0.4, ()),
        "resnet50": ModelAnswer(None, "unknown", 0.5, 0.8, ()),
    })
    res = ImageResult("x.jpg", [face], 100, 100)
    models = ["dlib", "facenet", "resnet50"]
    assert app_support.face_rows(res, models) == [{
        "face": "1", "box": "10,20-51,80", "dlib": "ann", "dlib score": "0.951", "dlib head": "ann (0.91)",
        "facenet": "bob (ambiguous)", "facenet score": "0.612", "resnet50": "unknown", "resnet50 score": "0.500"}]
    assert app_support.face_line(face, models) == (
        "Face 1: ann (dlib 0.951 match; facenet 0.612 ambiguous; resnet50 0.500 unknown)")
