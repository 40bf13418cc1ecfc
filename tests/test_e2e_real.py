"""End to end on real photos: real MTCNN, the real dlib embedder, a real SQLite file and FAISS indexes, via the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli

pytest.importorskip("dlib")
pytestmark = pytest.mark.slow


def run(args, home: Path, ok=True):
    res = CliRunner().invoke(cli, ["--gallery", str(home), "-q", *map(str, args)])
    if ok:
        assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    return res


@pytest.fixture(scope="session")
def celeb_gallery(tmp_path_factory, five_celebrity):
    """five_celebrity/train enrolled with dlib (augment 1), shared read-only by the tests below."""
    home = tmp_path_factory.mktemp("celeb") / "g"
    res = run(["enroll", five_celebrity / "train", "--model", "dlib", "--augment", "1", "--json"], home)
    return home, json.loads(res.stdout)


@pytest.fixture
def celeb_copy(celeb_gallery, tmp_path):
    home, _ = celeb_gallery
    dst = tmp_path / "g"
    shutil.copytree(home, dst)
    return dst


def test_enroll_five_celebrity(celeb_gallery, five_celebrity):
    home, rep = celeb_gallery
    photos = sorted((five_celebrity / "train").glob("*/*"))
    assert len(rep["enrolled"]) == len(photos) == 93  # every photo has a face: none is skipped
    assert rep["skipped"] == []
    assert rep["embeddings_added"] == {"dlib": 93 * 2}
    assert {"path", "reason"} <= set(rep.keys()) | {"path", "reason"}
    multi = {Path(m["path"]).name for m in rep["multi_face"]}
    assert "httpwwweonlinecomresizewwweonlinecomeolimagesEntireSitersxjerryseinfeldjulialouisdreyfusjwjpg.jpg" in multi
    people = json.loads(run(["people", "--json"], home).stdout)["people"]
    assert sorted(p["name"] for p in people) == ["ben_afflek", "elton_john", "jerry_seinfeld", "madonna",
                                                 "mindy_kaling"]
    assert all(p["embeddings"]["dlib"] == 2 * p["photos"] for p in people)


def test_second_enroll_adds_nothing(celeb_copy, five_celebrity):
    rep = json.loads(run(["enroll", five_celebrity / "train", "--model", "dlib", "--augment", "1", "--json"],
                         celeb_copy).stdout)
    assert rep["embeddings_added"] == {"dlib": 0}
    assert rep["unchanged"] == 93 and rep["enrolled"] == []


def _largest(faces):
    return max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))


def test_identify_val_accuracy(celeb_gallery, five_celebrity):
    home, _ = celeb_gallery
    val = sorted((five_celebrity / "val").glob("*/*"))
    out = json.loads(run(["identify", *val, "--json"], home).stdout)
    correct = 0
    for path, img in zip(val, out["images"]):
        assert img["path"].endswith(path.name)
        answer = _largest(img["faces"])["models"]["dlib"]
        correct += answer["identity"] == path.parent.name and answer["status"] == "match"
    acc = correct / len(val)
    print(f"five_celebrity val top-1 (dlib, default threshold): {correct}/{len(val)} = {acc:.3f}")
    assert acc >= 0.95


def _validate_shape(doc):
    assert set(doc) >= {"images", "models", "thresholds"}
    for img in doc["images"]:
        assert isinstance(img["path"], str) and isinstance(img["faces"], list)
        for f in img["faces"]:
            assert len(f["box"]) == 4 and all(isinstance(v, (int, float)) for v in f["box"])
            assert 0.0 <= f["det_prob"] <= 1.0
            for m, a in f["models"].items():
                assert a["status"] in ("match", "unknown", "ambiguous")
                assert a["identity"] is None or isinstance(a["identity"], str)
                assert (a["identity"] is None) == (a["status"] == "unknown")
                assert isinstance(a["score"], float)
                for c in a["candidates"]:
                    assert set(c) == {"identity", "score"}


def test_group_photo_and_annotate(celeb_gallery, fp_images, tmp_path):
    home, _ = celeb_gallery
    group = fp_images / "multiface.jpg"
    res = run(["identify", group, "--json", "--annotate", tmp_path / "ann"], home)
    doc = json.loads(res.stdout)
    _validate_shape(doc)
    faces = doc["images"][0]["faces"]
    assert len(faces) >= 4
    boxes = {tuple(f["box"]) for f in faces}
    assert len(boxes) == len(faces)  # every face its own box
    named = [f["models"]["dlib"]["identity"] for f in faces if f["models"]["dlib"]["identity"]]
    assert len(named) == len(set(named))  # nobody named twice in one photo
    ann = Path(doc["images"][0]["annotated"])
    with Image.open(ann) as im, Image.open(group) as orig:
        im.load()
        assert im.size == orig.size


def test_unknown_people_are_unknown(celeb_gallery, lfw_dir):
    """Faces of people never enrolled: unknown at the default threshold in >= 90% of cases."""
    home, _ = celeb_gallery
    root = lfw_dir / "lfw-deepfunneled"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    rng = np.random.default_rng(0)
    picks = [root / names[i] for i in rng.choice(len(names), 40, replace=False)]
    imgs = [sorted(p.glob("*.jpg"))[0] for p in picks]
    out = json.loads(run(["identify", *imgs, "--model", "dlib", "--json"], home).stdout)
    answers = [_largest(i["faces"])["models"]["dlib"] for i in out["images"] if i["faces"]]
    unknown = sum(a["status"] == "unknown" for a in answers)
    print(f"strangers reported unknown: {unknown}/{len(answers)}")
    assert len(answers) >= 35 and unknown / len(answers) >= 0.90


def test_verify_same_and_different(celeb_gallery, lfw_dir):
    home, _ = celeb_gallery
    root = lfw_dir / "lfw-deepfunneled"
    a, b = root / "Colin_Powell/Colin_Powell_0001.jpg", root / "Colin_Powell/Colin_Powell_0005.jpg"
    c = root / "Tony_Blair/Tony_Blair_0001.jpg"
    same = json.loads(run(["verify", a, b, "--model", "dlib", "--json"], home).stdout)["answers"][0]
    diff = json.loads(run(["verify", a, c, "--model", "dlib", "--json"], home).stdout)["answers"][0]
    assert same["same"] is True and diff["same"] is False
    assert same["similarity"] > diff["similarity"]


def test_identify_errors(celeb_gallery, tmp_path, five_celebrity):
    home, _ = celeb_gallery
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    res = run(["identify", bad], home, ok=False)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith(f"Error: {bad}: ")
    good = next((five_celebrity / "val" / "madonna").iterdir())
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (90, 90, 90)).save(blank)
    doc = json.loads(run(["identify", bad, good, blank, "--json"], home).stdout)
    assert doc["images"][0]["error"] and doc["images"][0]["faces"] == []
    assert doc["images"][1]["faces"] and "error" not in doc["images"][1]
    assert doc["images"][2]["faces"] == [] and "error" not in doc["images"][2]


def test_demo_command(tmp_path, monkeypatch):
    """README's demo: enrolls the bundled sample with dlib and identifies; missing weights are reported, not fatal."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FACEGALLERY_OFFLINE", "1")
    monkeypatch.setenv("FACEGALLERY_WEIGHTS", str(tmp_path / "weights"))
    res = run(["demo", "--json"], tmp_path / "home")
    doc = json.loads(res.stdout)
    assert set(doc["enroll"]["models_skipped"]) == {"facenet", "resnet50"}
    assert "facegallery models import" in doc["enroll"]["models_skipped"]["facenet"]
    assert doc["enroll"]["embeddings_added"]["dlib"] == 16 * 3
    images = {Path(i["path"]).name: i for i in doc["identify"]["images"]}
    for name in ("Colin_Powell", "Serena_Williams", "Tony_Blair", "Junichiro_Koizumi"):
        # LFW photos can hold a second (background) face: the main, largest face must be the person
        assert _largest(images[f"{name}_0010.jpg"]["faces"])["models"]["dlib"]["identity"] == name
    assert _largest(images["Kate_Winslet_0001.jpg"]["faces"])["models"]["dlib"]["status"] == "unknown"
    group = [f["models"]["dlib"]["identity"] for f in images["group_photo.jpg"]["faces"]]
    named = [n for n in group if n]
    assert {"Serena_Williams", "Tony_Blair"} <= set(named) and len(named) == len(set(named))
    assert len(group) >= 3 and None in group  # the stranger is in the picture and stays unknown
