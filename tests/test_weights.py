"""Weights resolution, import, verification and safe loading (indexer.embedders.weights).

Every test runs with TORCH_HOME, the project weights dir and the download switch pointed at empty temporary
folders, so a real cache on the machine can neither help nor interfere.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.detect import DetectedFace
from indexer.embedders import (
    WeightsError,
    WeightsNotFoundError,
    create_embedder,
    import_weights,
    weights_status,
)
from indexer.embedders import resnet50 as resnet50_module
from indexer.embedders.weights import OFFLINE_ENV, WEIGHTS_ENV, get_spec, sha256_file

FACENET_HUB_NAME = "20180402-114759-vggface2.pt"


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch) -> Path:
    """Empty TORCH_HOME and weights dir, downloads off (tests that want the real download turn it back on)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return tmp_path


def _random_state_dict(name: str) -> dict[str, torch.Tensor]:
    # The embedder's own random model: the exact architecture, seeded, so files are reproducible.
    return {k: v.clone() for k, v in create_embedder(name, weights="random").load().state_dict().items()}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weight_files")
    files = {}
    for name in ("facenet", "resnet50"):
        files[name] = folder / f"{name}-random.pt"
        torch.save(_random_state_dict(name), files[name])
    return files


def _crops(embedder, n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        img = Image.fromarray(rng.integers(0, 256, size=(240, 240, 3), dtype=np.uint8))
        out.append(embedder.crop(img, DetectedFace(box=(60.0, 50.0, 180.0, 190.0), prob=1.0, landmarks=None)))
    return out


@pytest.mark.parametrize("name", ["facenet", "resnet50"])
def test_import_round_trip_gives_the_model_s_own_embeddings(name, weight_files, tmp_path):
    wdir = tmp_path / "wd"
    status = import_weights(name, weight_files[name], weights_dir=wdir)
    digest = sha256_file(weight_files[name])
    assert status.present and status.source == "weights dir" and status.sha256 == digest
    assert status.path == str(wdir / get_spec(name).filename)
    assert (wdir / f"{get_spec(name).filename}.sha256").read_text().split()[0] == digest
    assert sorted(p.name for p in wdir.iterdir()) == sorted([get_spec(name).filename, get_spec(name).filename + ".sha256"])

    emb = create_embedder(name, weights_dir=wdir)
    assert (emb.weights.source, emb.weights.sha256, emb.weights.random) == ("weights dir", digest, False)
    crops = _crops(emb)
    x = emb.preprocess(crops)
    spec = get_spec(name)
    model = spec.build().eval()
    model.load_state_dict(torch.load(weight_files[name], map_location="cpu", weights_only=True))
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model(x), dim=1).numpy()
    np.testing.assert_allclose(emb.embed_crops(crops), ref, atol=1e-6)


def test_explicit_file_path_and_wrapped_state_dict(weight_files, tmp_path):
    sd = torch.load(weight_files["facenet"], weights_only=True)
    sd["logits.weight"] = torch.zeros(8631, 512)  # the VGGFace2 classifier: dropped, not an error
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    emb = create_embedder("facenet", weights=str(wrapped))
    assert emb.weights.source == f"file {wrapped.resolve()}"
    assert emb.weights.sha256 == sha256_file(wrapped) and emb.weights.name == "facenet-vggface2"
    loaded = emb.load().state_dict()
    del sd["logits.weight"]
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_missing_weights_offline_is_one_actionable_line(isolated_caches):
    with pytest.raises(WeightsNotFoundError) as info:
        create_embedder("facenet")
    msg = str(info.value)
    assert "\n" not in msg
    assert "facenet-vggface2.pt" in msg
    assert str(isolated_caches / "weights" / "facenet-vggface2.pt") in msg
    assert str(isolated_caches / "torch" / "checkpoints" / FACENET_HUB_NAME) in msg
    assert msg.endswith("facegallery models import --model facenet FILE")


def _online() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_real_download_fails_fast_when_offline(monkeypatch):
    if _online():
        pytest.skip("network reachable: the download would succeed")
    monkeypatch.delenv(OFFLINE_ENV)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="download failed") as info:
        create_embedder("resnet50")
    assert time.monotonic() - start < 60
    assert "\n" not in str(info.value) and "--model resnet50 FILE" in str(info.value)


def test_library_cache_is_found_and_weights_dir_wins(weight_files, isolated_caches, monkeypatch):
    # torchvision's cache names carry the file's sha256 prefix; name the random file after its own hash.
    name = f"resnet50-{sha256_file(weight_files['resnet50'])[:8]}.pth"
    monkeypatch.setattr(resnet50_module, "CACHE_NAMES", (name,))
    hub = isolated_caches / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    os.link(weight_files["resnet50"], hub / name)
    status = weights_status("resnet50")
    assert status.present and status.source == "torch hub cache" and status.path == str(hub / name)
    assert create_embedder("resnet50").weights.source == "torch hub cache"

    import_weights("resnet50", weight_files["resnet50"])  # into $FACEGALLERY_WEIGHTS
    assert weights_status("resnet50").source == "weights dir"
    assert create_embedder("resnet50").weights.path == str(isolated_caches / "weights" / "resnet50-imagenet.pt")


def test_hub_cache_file_not_matching_its_published_hash_is_refused(weight_files, isolated_caches):
    hub = isolated_caches / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    os.link(weight_files["resnet50"], hub / "resnet50-0676ba61.pth")  # torchvision's V1 name, other bytes
    with pytest.raises(WeightsError) as info:
        create_embedder("resnet50")
    message = str(info.value)
    assert "published sha256" in message and "0676ba61" in message and "\n" not in message
    assert "facegallery models import --model resnet50" in message


def test_facenet_pytorch_cache_location(weight_files, isolated_caches):
    cache = isolated_caches / "torch" / "checkpoints"
    cache.mkdir(parents=True)
    os.link(weight_files["facenet"], cache / FACENET_HUB_NAME)
    emb = create_embedder("facenet")
    assert (emb.weights.source, emb.weights.path) == ("torch hub cache", str(cache / FACENET_HUB_NAME))


def test_status_before_and_after_import(weight_files, isolated_caches):
    before = weights_status("facenet")
    assert not before.present and before.path is None and before.sha256 is None and before.size_bytes is None
    assert before.looked_in[0] == str(isolated_caches / "weights" / "facenet-vggface2.pt")
    after = import_weights("facenet", weight_files["facenet"])
    assert after.present and after.size_bytes == weight_files["facenet"].stat().st_size
    assert after.to_dict()["filename"] == "facenet-vggface2.pt"


def test_tampered_file_is_refused(weight_files, isolated_caches):
    import_weights("facenet", weight_files["facenet"])
    target = isolated_caches / "weights" / "facenet-vggface2.pt"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        create_embedder("facenet")


def test_missing_sidecar_warns_but_loads(weight_files, isolated_caches, caplog):
    import_weights("facenet", weight_files["facenet"])
    (isolated_caches / "weights" / "facenet-vggface2.pt.sha256").unlink()
    with caplog.at_level("WARNING"):
        emb = create_embedder("facenet")
    assert emb.weights.source == "weights dir"
    assert "no facenet-vggface2.pt.sha256 sidecar" in caplog.text


def test_wrong_shapes_are_a_one_line_weights_error(weight_files, tmp_path):
    sd = torch.load(weight_files["facenet"], weights_only=True)
    sd["last_linear.weight"] = torch.zeros(256, 1792)
    del sd["last_bn.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(WeightsError) as info:
        import_weights("facenet", bad, weights_dir=tmp_path / "wd")
    msg = str(info.value)
    assert "\n" not in msg and "1 missing keys (e.g. last_bn.bias)" in msg
    assert "last_linear.weight: (256, 1792) instead of (512, 1792)" in msg
    assert not (tmp_path / "wd" / "facenet-vggface2.pt").exists()
    emb = create_embedder("facenet", weights=str(bad))  # resolution is cheap; the load is what fails
    with pytest.raises(WeightsError, match="does not fit the architecture"):
        emb.load()


UNPICKLED: list[str] = []


def _side_effect() -> dict:
    UNPICKLED.append("code ran")
    return {}


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_unsafe_pickle_is_refused_and_never_executed(weight_files, tmp_path):
    sd = torch.load(weight_files["facenet"], weights_only=True)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": sd, "config": _Payload()}, evil)
    with pytest.raises(WeightsError, match="not a weights-only PyTorch checkpoint") as info:
        import_weights("facenet", evil, weights_dir=tmp_path / "wd")
    assert "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="not a weights-only"):
        create_embedder("facenet", weights=str(evil)).load()
    assert UNPICKLED == []


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError):
        import_weights("facenet", junk, weights_dir=tmp_path / "wd")
    not_tensors = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(WeightsError, match="state_dict of tensors"):
        import_weights("resnet50", not_tensors, weights_dir=tmp_path / "wd")
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        import_weights("facenet", tmp_path / "nope.pt", weights_dir=tmp_path / "wd")
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        create_embedder("resnet50", weights=str(tmp_path / "nope.pt"))


def test_dlib_weights_cannot_be_imported_and_unknown_names(tmp_path):
    with pytest.raises(WeightsError, match="cannot be imported"):
        import_weights("dlib", tmp_path / "x.dat", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="known: dlib, facenet, resnet50"):
        weights_status("arcface")


def test_random_weights_are_flagged():
    info = create_embedder("resnet50", weights="random").weights
    assert info.random and info.path is None
    assert (info.name, info.source, info.sha256) == ("resnet50-random", "random (seed 0)", "random-seed0")
