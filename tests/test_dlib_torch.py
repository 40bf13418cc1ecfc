"""dlib's face-recognition network read from its own file and run in torch (issue 12).

- the reader on the packaged file: layers, shapes, parameter count, sha256; damaged copies fail in one line;
- equality: the torch engine against dlib-bin's ``compute_face_descriptor`` on the same chips of 500 real LFW
  photos (min cosine >= 0.99999, max abs diff reported);
- the engine setting of the ``dlib`` embedder: default, environment variable, unknown name, and the fallback to
  dlib-bin when the reader refuses a file that dlib itself still loads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.detect import DetectedFace
from indexer.embedders import WeightsError, create_embedder, dlib_model
from indexer.embedders.dlib_model import ENGINE_ENV, MODEL_FILE, PACKAGE_SHA256, SHAPE_FILE, DlibEmbedder
from indexer.embedders.dlib_net import Affine, Conv, DlibFormatError, DlibNet, Fc, parse_dlib_net
from indexer.embedders.dlib_resnet import build_dlib_resnet

MIN_COSINE = 0.99999
EQUALITY_FACES = 500
# The median box of dlib's HOG detector on LFW deep-funneled photos (250x250, faces centred): a fixed box gives
# real chips through the shape predictor without paying for a detector in this test.
LFW_BOX = (77.0, 89.0, 181.0, 185.0)


@pytest.fixture(scope="module")
def model_file() -> Path:
    folder = dlib_model.models_dir()
    if folder is None or not (folder / MODEL_FILE).is_file():
        pytest.skip("face_recognition_models is not installed")
    return folder / MODEL_FILE


@pytest.fixture(scope="module")
def net(model_file):
    return parse_dlib_net(model_file.read_bytes(), str(model_file))


def parameter_count(net: DlibNet) -> int:
    return sum(getattr(layer, f).size for layer in net.layers for f in ("weight", "bias", "gamma", "beta")
               if hasattr(layer, f))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --- the reader ----------------------------------------------------------------------------------------------

def test_reader_parses_the_packaged_file(model_file, net):
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == PACKAGE_SHA256[MODEL_FILE]
    assert net.input_size == (150, 150) and net.wrappers == 22  # 14 tag1 + 4 (tag2 + skip1)
    assert net.avg_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    kinds = Counter(type(layer).__name__ for layer in net.layers)
    assert kinds == {"Conv": 29, "Affine": 29, "Relu": 29, "AddPrev": 14, "Pool": 6, "Fc": 1}
    convs = [layer for layer in net.layers if isinstance(layer, Conv)]
    assert convs[0].weight.shape == (32, 3, 7, 7) and convs[0].stride == (2, 2)
    assert [c.weight.shape[0] for c in convs[1::2]] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    for conv in convs:  # dlib pads k/2 at stride 1 and 0 otherwise
        k = conv.weight.shape[2]
        assert conv.padding == ((k // 2, k // 2) if conv.stride == (1, 1) else (0, 0))
        assert conv.bias.shape == (conv.weight.shape[0],) and conv.weight.dtype == np.float32
    assert net.layers[-1].weight.shape == (256, 128)  # fc stored (in, out)
    assert parameter_count(net) == 5_614_592


@pytest.mark.numeric
def test_torch_module_folds_the_affines_and_follows_dlibs_plane_sizes(net):
    model = build_dlib_resnet(net)
    affine = sum(layer.gamma.size + layer.beta.size for layer in net.layers if isinstance(layer, Affine))
    assert sum(p.numel() for p in model.parameters()) == parameter_count(net) - affine
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for m in (model.stem, *model.blocks)]
    with torch.inference_mode():
        out = model(torch.full((2, 3, 150, 150), 128.0))
    for hook in hooks:
        hook.remove()
    assert out.shape == (2, 128) and torch.isfinite(out).all()
    assert sorted(set(sizes), reverse=True) == [72, 35, 17, 8, 4, 2]  # max pool 72 -> 35 sits between stem and blocks


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[: len(d) // 2], "file ends early"),
    (lambda d: d.replace(b"con_4", b"con_9", 1), "unsupported layer 'con_9'"),
    (lambda d: d + b"\x00", "1 unexpected trailing bytes"),
    (lambda d: b"not a dlib model", "bad integer control byte 0x6e at byte 0$"),
    (lambda d: d.replace(b"110\x01\x02\x01\x00", b"11x\x01\x02\x01\x00", 1), "bad layer flag"),
])
def test_a_damaged_file_fails_in_one_line(model_file, tmp_path, damage, message):
    path = tmp_path / MODEL_FILE
    path.write_bytes(damage(model_file.read_bytes()))
    with pytest.raises(DlibFormatError, match=message) as info:
        parse_dlib_net(path.read_bytes(), str(path))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: not a dlib face recognition network:")
    assert isinstance(info.value, WeightsError)  # the CLI prints it as "Error: <line>"


def test_a_layer_sequence_other_than_dlibs_definition_is_refused(net):
    shuffled = dataclasses.replace(net, layers=(net.layers[1], net.layers[0], *net.layers[2:]))
    with pytest.raises(DlibFormatError, match="layer 0 of the dlib file is Affine.*wants Conv"):
        build_dlib_resnet(shuffled)
    with pytest.raises(DlibFormatError, match=r"layer 107 of the dlib file is missing.*wants Fc"):
        build_dlib_resnet(dataclasses.replace(net, layers=net.layers[:-1]))
    assert isinstance(net.layers[-1], Fc)


# --- equality with dlib-bin on real LFW chips -------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_embedder(model_file):
    pytest.importorskip("dlib")
    return DlibEmbedder.create(engine="torch", device="cpu")


@pytest.fixture(scope="module")
def lfw_chips(lfw_dir, torch_embedder) -> list[Image.Image]:
    """Chips of the first photo of the first 500 people, by the embedder's own crop (shape predictor + chip)."""
    people = sorted(p for p in (lfw_dir / "lfw-deepfunneled").iterdir() if p.is_dir())[:EQUALITY_FACES]
    face = DetectedFace(box=LFW_BOX, prob=1.0, landmarks=None)
    chips = []
    for person in people:
        with Image.open(min(person.glob("*.jpg"))) as img:
            chips.append(torch_embedder.crop(img.convert("RGB"), face))
    assert len(chips) == EQUALITY_FACES
    return chips


@pytest.mark.slow
@pytest.mark.numeric
def test_torch_engine_equals_dlib_compute_face_descriptor(model_file, torch_embedder, lfw_chips):
    import dlib

    arrays = [np.asarray(chip) for chip in lfw_chips]
    reference = dlib.face_recognition_model_v1(str(model_file)).compute_face_descriptor(arrays)
    want = np.array([np.asarray(v) for v in reference], dtype=np.float32)
    tensor = torch_embedder.preprocess(lfw_chips)
    got = np.concatenate([torch_embedder.forward(tensor[i:i + 64]) for i in range(0, len(tensor), 64)])
    cosine, max_abs = float(_cosines(got, want).min()), float(np.abs(got - want).max())
    summary = (f"{len(arrays)} LFW chips: min cosine {cosine:.10f} (1 - cos = {1 - cosine:.1e}), "
               f"max abs diff {max_abs:.2e}")
    print(f"\ntorch vs dlib-bin: {summary}")
    assert torch_embedder.load().engine == "torch"
    assert cosine >= MIN_COSINE and max_abs < 1e-4, summary


@pytest.mark.slow
@pytest.mark.numeric
def test_both_engines_agree_through_embed_crops(lfw_chips, torch_embedder):
    chips = lfw_chips[:64]
    dlib_embedder = DlibEmbedder.create(engine="dlib")
    assert dlib_embedder.weights == torch_embedder.weights  # same identity: no re-embedding when switching
    a = torch_embedder.embed_crops(chips, batch_size=16)
    b = dlib_embedder.embed_crops(chips, batch_size=16)
    assert a.shape == b.shape == (64, 128) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert _cosines(a, b).min() >= MIN_COSINE


@pytest.mark.slow
@pytest.mark.numeric
def test_the_stored_onnx_graph_equals_the_torch_engine(lfw_chips, torch_embedder, tmp_path, monkeypatch):
    """The default CPU engine: the same fp32 network exported once, stored, and run by ONNX Runtime."""
    from indexer import onnx_cache
    from indexer.embedders import onnx_cpu

    if not onnx_cpu.available():
        pytest.skip("onnx/onnxruntime not installed")
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path))
    chips = lfw_chips[:64]
    want = torch_embedder.forward(torch_embedder.preprocess(chips))
    first = DlibEmbedder.create(engine="onnx", device="cpu")  # exports and stores the graph
    assert first.load().engine == "onnx" and isinstance(first.load().net, onnx_cpu.OrtModel)
    stored = onnx_cache.graph_path("dlib-resnet", first.weights.sha256)
    assert onnx_cache.cached("dlib-resnet", first.weights.sha256) == stored.read_bytes()
    again = DlibEmbedder.create(engine="onnx", device="cpu")  # reads the stored graph
    for emb in (first, again):
        got = emb.forward(emb.preprocess(chips))
        assert _cosines(got, want).min() >= MIN_COSINE and np.abs(got - want).max() < 1e-5
    assert emb.weights == torch_embedder.weights  # same identity: no re-embedding when switching


def test_the_onnx_engine_falls_back_to_torch_when_onnx_runtime_fails(dlib_available, monkeypatch, caplog):
    from indexer.embedders import onnx_cpu

    if not onnx_cpu.available():
        pytest.skip("onnx/onnxruntime not installed")

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(onnx_cpu, "session", broken)
    emb = DlibEmbedder.create(engine="onnx", device="cpu")
    with caplog.at_level(logging.WARNING, logger=dlib_model.__name__):
        assert emb.load().engine == "torch" and emb.engine == "torch"
    assert "dlib network in ONNX Runtime unavailable (RuntimeError: no kernel for this CPU); using torch" in caplog.text
    chip = Image.fromarray(np.random.default_rng(1).integers(0, 256, (150, 150, 3), dtype=np.uint8))
    want = DlibEmbedder.create(engine="torch", device="cpu").embed_crops([chip])
    assert _cosines(emb.embed_crops([chip]), want).min() >= MIN_COSINE


@pytest.mark.slow
@pytest.mark.numeric
def test_fast_mode_runs_onnx_runtime_with_equal_descriptors(lfw_chips, torch_embedder, monkeypatch):
    from indexer.embedders import onnx_cpu

    if not onnx_cpu.available():
        pytest.skip("onnx/onnxruntime not installed")
    monkeypatch.setenv("FACEGALLERY_FAST_PRECISION", "fp32")  # the fp32 path (int8/bf16: test_dlib_precision.py)
    fast = DlibEmbedder.create(engine="torch", device="cpu", fast=True)
    assert isinstance(fast.load().net, onnx_cpu.OrtModel)
    chips = lfw_chips[:32]
    assert _cosines(fast.embed_crops(chips, batch_size=16), torch_embedder.embed_crops(chips)).min() >= MIN_COSINE


# --- the engine setting ------------------------------------------------------------------------------------------

@pytest.fixture
def dlib_available(model_file):
    pytest.importorskip("dlib")


def test_engine_defaults_to_the_stored_graph_on_the_cpu_and_follows_the_environment(dlib_available, monkeypatch):
    from indexer.embedders import onnx_cpu

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert create_embedder("dlib", device="cpu").engine == ("onnx" if onnx_cpu.available() else "torch")
    monkeypatch.setenv(ENGINE_ENV, "dlib")
    emb = create_embedder("dlib", device="cpu")
    assert emb.engine == "dlib" and emb.load().engine == "dlib" and str(emb.device) == "cpu"
    assert DlibEmbedder.create(engine="torch").engine == "torch"  # an explicit engine wins over the variable
    monkeypatch.setenv(ENGINE_ENV, "torch")
    assert create_embedder("dlib", device="cpu").engine == "torch"


def test_unknown_engine_is_one_clear_line(dlib_available, monkeypatch):
    with pytest.raises(ValueError, match=r"^unknown dlib engine 'tensorflow'; choose one of: auto, onnx, torch, "
                                         r"dlib$"):
        DlibEmbedder.create(engine="tensorflow")
    monkeypatch.setenv(ENGINE_ENV, "cuda")
    with pytest.raises(WeightsError, match=rf"unknown dlib engine 'cuda' \(from {ENGINE_ENV}\); choose one of"):
        create_embedder("dlib")


def test_the_packaged_files_sha256_is_checked_before_any_reader(dlib_available, model_file, tmp_path,
                                                                 monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    (folder / MODEL_FILE).write_bytes(bytes(data))
    (folder / SHAPE_FILE).write_bytes((model_file.parent / SHAPE_FILE).read_bytes())
    monkeypatch.setattr(dlib_model, "models_dir", lambda: folder)
    for engine in ("torch", "dlib"):
        with pytest.raises(WeightsError, match="sha256 mismatch"):
            DlibEmbedder.create(engine=engine)


def test_falls_back_to_dlib_bin_when_the_reader_refuses_a_file(dlib_available, model_file, tmp_path, caplog):
    # dlib stops reading after the network; the reader insists on accounting for every byte. A copy with one
    # trailing byte is therefore loaded by dlib-bin and refused by the reader: a real reader failure.
    copy = tmp_path / MODEL_FILE
    copy.write_bytes(model_file.read_bytes() + b"\x00")
    chip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8))
    reference = DlibEmbedder.create(engine="dlib").embed_crops([chip])
    for engine in ("torch", "onnx"):
        caplog.clear()
        emb = DlibEmbedder.create(engine=engine, weights=copy, device="cpu")
        with caplog.at_level(logging.WARNING, logger=dlib_model.__name__):
            assert emb.load().engine == "dlib"
        assert "1 unexpected trailing bytes" in caplog.text
        assert f"using dlib-bin instead of the {engine} engine" in caplog.text
        assert emb.weights.sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()
        np.testing.assert_array_equal(emb.embed_crops([chip]), reference)


def test_a_file_neither_engine_can_read_is_one_weights_error(dlib_available, model_file, tmp_path):
    broken = tmp_path / MODEL_FILE
    broken.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="not a dlib model file"):
        DlibEmbedder.create(engine="torch", weights=broken).load()


def test_a_file_changed_after_its_checksum_is_refused(dlib_available, model_file, tmp_path):
    copy = tmp_path / MODEL_FILE
    copy.write_bytes(model_file.read_bytes())
    emb = DlibEmbedder.create(engine="torch", weights=copy, device="cpu")
    copy.write_bytes(copy.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(WeightsError, match="changed since its sha256 was checked"):
        emb.load()
