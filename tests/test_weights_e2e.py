"""Weights end to end through the CLI: import a saved state_dict -> enroll -> the stored vectors are exactly what
the architecture computes with those weights; without weights offline -> one line, exit 1."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from db import queries as q
from gallery.config import Settings
from gallery.store import Gallery
from indexer.detect import DetectedFace
from tests.fakes import person_image


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("FACEGALLERY_OFFLINE", "1")
    monkeypatch.setenv("FACEGALLERY_WEIGHTS", str(tmp_path / "weights"))
    return tmp_path


def _random_module(model: str) -> torch.nn.Module:
    torch.manual_seed(1234)
    if model == "facenet":
        from facenet_pytorch import InceptionResnetV1

        return InceptionResnetV1(pretrained=None, classify=False).eval()
    from torchvision.models import resnet50

    return resnet50(weights=None).eval()


def _folder(root):
    for p in range(2):
        d = root / f"p{p}"
        d.mkdir(parents=True)
        person_image(p * 100 + 1, size=(180, 200)).save(d / "a.png")
    return root


class WholeImageDetector:
    """Real detection is irrelevant here: these are synthetic pictures; use the whole image as the face box."""

    def detect(self, img):
        w, h = img.size
        return [DetectedFace(box=(10.0, 10.0, w - 10.0, h - 10.0), prob=0.99, landmarks=None)]

    def detect_batch(self, imgs):
        return [self.detect(i) for i in imgs]


@pytest.mark.parametrize("model", ["facenet", "resnet50"])
@pytest.mark.numeric
def test_import_then_enroll_matches_direct_forward(offline_env, model):
    tmp = offline_env
    net = _random_module(model)
    state = net.state_dict()
    torch.save(state, tmp / "w.pt")
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "import", "--model", model, str(tmp / "w.pt")])
    assert res.exit_code == 0, res.output
    listing = json.loads(runner.invoke(cli, ["models", "--json"]).stdout)["models"]
    row = next(m for m in listing if m["name"] == model)
    assert row["present"] and len(row["sha256"]) == 64

    folder = _folder(tmp / "people")
    settings = Settings(home=tmp / "g", progress=False)
    with Gallery(settings, detector=WholeImageDetector()) as g:
        from gallery.enroll.enroll import enroll_folder

        rep = enroll_folder(g, folder, models=[model], augment=0)
        assert rep.embeddings_added == {model: 2} and rep.random_weights == ()
        emb = g.embedder(model)
        with g.session() as s:
            (ids, stored), = list(q.iter_vectors(s, model))
        img = Image.open(folder / "p0" / "a.png").convert("RGB")
        crop = emb.crop(img, WholeImageDetector().detect(img)[0])
        if model == "resnet50":
            net.fc = torch.nn.Identity()
        with torch.inference_mode():
            direct = net(emb.preprocess([crop])).numpy()[0]
        direct /= np.linalg.norm(direct)
        np.testing.assert_allclose(stored[0], direct, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["facenet", "resnet50"])
def test_missing_weights_offline_is_one_line(offline_env, model):
    folder = _folder(offline_env / "people")
    res = CliRunner().invoke(cli, ["--gallery", str(offline_env / "g"), "enroll", str(folder), "--model", model])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert f"facegallery models import --model {model}" in lines[0]
    assert "Traceback" not in res.output


def test_random_weights_are_labelled(offline_env):
    folder = _folder(offline_env / "people")
    runner = CliRunner()
    res = runner.invoke(cli, ["--gallery", str(offline_env / "g"), "--weights", "random", "-q", "enroll", str(folder),
                              "--model", "facenet", "--augment", "0", "--whole-image-fallback"])
    assert res.exit_code == 0, res.output
    assert "random weights" in res.output
