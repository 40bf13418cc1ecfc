"""Tests for indexer.detect: the real MTCNN on real photos from the shared data folder."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from indexer.detect import DetectedFace, Detector, DetectorConfig, whole_image_face
from indexer.images import load_image
from tests.helpers import iou

BEN = "val/ben_afflek/httpabsolumentgratuitfreefrimagesbenaffleckjpg.jpg"
LFW_PEOPLE = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody", "Al_Gore"]


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


def _inside(face: DetectedFace, size) -> bool:
    x1, y1, x2, y2 = face.box
    return 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]


def _load(path) -> Image.Image:
    if not path.exists():
        pytest.skip(f"{path} is missing from the data folder")
    return load_image(path)


# ------------------------------------------------------------------------------------- no model needed

def test_detected_face_properties_and_dict():
    face = DetectedFace(box=(10.0, 20.0, 50.0, 80.0), prob=0.99, landmarks=((20.0, 40.0),) * 5)
    assert (face.width, face.height, face.area) == (40.0, 60.0, 2400.0)
    data = json.loads(json.dumps(face.to_dict()))
    assert data == {"box": [10.0, 20.0, 50.0, 80.0], "prob": 0.99, "landmarks": [[20.0, 40.0]] * 5,
                    "fallback": False}
    with pytest.raises(AttributeError):
        face.prob = 0.5  # frozen


def test_whole_image_face():
    img = Image.new("RGB", (92, 112))
    face = whole_image_face(img)
    assert face.box == (0.0, 0.0, 92.0, 112.0) and face.fallback and face.prob == 0.0 and face.landmarks is None
    inset = whole_image_face(img, margin_frac=0.25)
    assert inset.box == (23.0, 28.0, 69.0, 84.0)
    assert inset.to_dict()["landmarks"] is None
    with pytest.raises(ValueError):
        whole_image_face(img, margin_frac=0.5)


def test_config_validation():
    with pytest.raises(ValueError):
        DetectorConfig(factor=1.2)
    with pytest.raises(ValueError):
        DetectorConfig(thresholds=(0.6, 0.7))
    with pytest.raises(ValueError):
        DetectorConfig(max_side=0)


# ------------------------------------------------------------------------------------------ real MTCNN

@pytest.mark.data
def test_multiface(detector, fp_images):
    img = _load(fp_images / "multiface.jpg")
    faces = detector.detect(img)
    assert len(faces) >= 4
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    for face in faces:
        assert _inside(face, img.size) and face.prob >= 0.90 and not face.fallback
        assert face.landmarks is not None and len(face.landmarks) == 5
        x1, y1, x2, y2 = face.box
        assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)
        (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
        assert lex < rex and mlx < mrx  # left eye / mouth corner on the image's left
        assert max(ley, rey) < ny < min(mly, mry)  # eyes above nose above mouth (upright people)


@pytest.mark.data
def test_five_celebrity_photo(detector, five_celebrity):
    img = _load(five_celebrity / BEN)
    faces = detector.detect(img)
    assert len(faces) >= 1 and _inside(faces[0], img.size) and faces[0].prob > 0.95
    assert faces[0].width > 30  # a real face, not a speck


@pytest.mark.data
def test_tight_att_crop_needs_fallback(detector, att_faces):
    img = _load(att_faces / "s1" / "1.pgm")
    assert img.size == (92, 112)
    width, height = img.size
    tight = img.crop((int(width * 0.15), int(height * 0.15), int(width * 0.85), int(height * 0.85)))
    assert detector.detect(tight) == []
    faces = detector.detect(tight) or [whole_image_face(tight)]
    assert faces[0].fallback and faces[0].box == (0.0, 0.0, float(tight.width), float(tight.height))


@pytest.mark.data
def test_grey_input_accepted(detector, att_faces):
    grey = _load(att_faces / "s1" / "1.pgm").convert("L")
    faces = detector.detect(grey)
    assert len(faces) == 1 and _inside(faces[0], grey.size)


def test_blank_and_tiny_images_have_no_face(detector):
    assert detector.detect(Image.new("RGB", (320, 240), (128, 128, 128))) == []
    assert detector.detect(Image.new("RGB", (19, 300))) == []  # below min_face_size: MTCNN itself would crash
    assert detector.detect_batch([Image.new("RGB", (5, 5)), Image.new("RGB", (0, 0))]) == [[], []]


@pytest.mark.data
def test_upscaled_photo_maps_back(detector, five_celebrity):
    img = _load(five_celebrity / BEN)
    reference = detector.detect(img)[0]
    big = img.resize((img.width * 10, img.height * 10), Image.Resampling.BICUBIC)  # 2000x3000
    faces = Detector(DetectorConfig(max_side=600)).detect(big)  # detected at 400x600, reported at 2000x3000
    assert faces, "face lost after downscaling"
    mapped = tuple(v / 10 for v in faces[0].box)
    assert iou(mapped, reference.box) > 0.8
    assert _inside(faces[0], big.size)
    shift = np.abs(np.asarray(faces[0].landmarks) / 10 - np.asarray(reference.landmarks)).max()
    assert shift < 0.1 * reference.width


@pytest.mark.data
def test_detect_batch_matches_detect(detector, lfw_dir, att_faces, monkeypatch):
    paths = [lfw_dir / "lfw-deepfunneled" / p / f"{p}_0001.jpg" for p in LFW_PEOPLE]
    imgs = [_load(p) for p in paths] + [_load(att_faces / "s2" / "1.pgm"), Image.new("RGB", (250, 200))]
    singles = [detector.detect(img) for img in imgs]

    import indexer.mtcnn
    import indexer.mtcnn_cpu

    batch_sizes = []
    for module in (indexer.mtcnn, indexer.mtcnn_cpu):  # the torch and onnx engines' cascades

        def counting_detect(nets, batch, *args, original=module.detect_faces):
            batch_sizes.append(len(batch))
            return original(nets, batch, *args)

        monkeypatch.setattr(module, "detect_faces", counting_detect)
    batched = detector.detect_batch(imgs)
    assert sorted(batch_sizes) == [1, 1, 4]  # the four 250x250 LFW photos went through MTCNN together

    assert [len(f) for f in batched] == [len(f) for f in singles]
    assert all(len(f) == 1 for f in singles[:5]) and singles[5] == []
    for one, many in zip(singles, batched):
        for a, b in zip(one, many):
            assert np.allclose(a.box, b.box, atol=1e-3) and np.allclose(a.landmarks, b.landmarks, atol=1e-3)
            assert a.prob == pytest.approx(b.prob, abs=1e-5)
    assert detector.detect_batch([]) == []


def test_model_built_once_across_threads():
    detector = Detector()
    assert detector._mtcnn is None  # lazy: nothing built until first use
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(detector._model())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 3 and all(m is seen[0] for m in seen)
