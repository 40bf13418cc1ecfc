"""Classifier heads: architectures, the by-photo validation split, determinism, saving, freshness, forget."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gallery.enroll.enroll import enroll_folder
from gallery.heads import train as heads
from gallery.heads.model import TrainConfig, build_head, fit_head, head_shape, split_by_photo
from gallery.heads.train import train_heads
from gallery.manage.people import forget
from gallery.recognize.identify import identify
from gallery.results import HeadAnswer
from tests.fakes import person_image
from tests.helpers import jpeg_bytes, make_people, open_gallery

FAST = TrainConfig(epochs=60, patience=8)


@pytest.mark.parametrize("model,dim,kinds", [
    ("facenet", 512, [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]),
    ("resnet50", 2048, [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]),
    ("dlib", 128, [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]),
])
def test_architectures(model, dim, kinds):
    head = build_head(dim, 7, head_shape(model, dim))
    assert [type(m) for m in head] == kinds
    linears = [m for m in head if isinstance(m, nn.Linear)]
    hidden = {"facenet": 256, "resnet50": 512, "dlib": 64}[model]
    assert (linears[0].in_features, linears[0].out_features) == (dim, hidden)
    assert (linears[1].in_features, linears[1].out_features) == (hidden, 7)
    drops = {m.p for m in head if isinstance(m, nn.Dropout)}
    assert drops == {0.5 if model == "resnet50" else 0.3}
    head.eval()
    assert head(torch.randn(3, dim)).shape == (3, 7)


def test_validation_split_keeps_each_photo_on_one_side():
    rng = np.random.default_rng(1)
    photos_per_person = [1, 2, 5, 9]
    labels, photo_ids, pid = [], [], 0
    for person, n in enumerate(photos_per_person):
        for _ in range(n):
            copies = int(rng.integers(1, 6))  # original + augmented copies of one photo
            labels += [person] * copies
            photo_ids += [pid] * copies
            pid += 1
    labels, photo_ids = np.array(labels), np.array(photo_ids)
    val = split_by_photo(labels, photo_ids, 0.2, seed=3)
    for p in np.unique(photo_ids):
        assert len(set(val[photo_ids == p])) == 1, "a photo's copies straddle train/val"
    for person, n in enumerate(photos_per_person):
        val_photos = set(photo_ids[(labels == person) & val])
        train_photos = set(photo_ids[(labels == person) & ~val])
        if n == 1:
            assert not val_photos and train_photos  # a single photo stays in training
        else:
            assert val_photos and train_photos
            assert len(val_photos) == min(n - 1, max(1, round(0.2 * n)))
    assert np.array_equal(val, split_by_photo(labels, photo_ids, 0.2, seed=3))


def _clusters(seed=0, people=5, photos=4, copies=3, dim=32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    x, y, ph = [], [], []
    for p in range(people):
        for i in range(photos):
            base = centres[p] + rng.normal(scale=0.6, size=dim)
            for _ in range(copies):
                x.append(base + rng.normal(scale=0.1, size=dim))
                y.append(p)
                ph.append(p * 100 + i)
    x = np.array(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.array(y), np.array(ph)


def test_fit_is_deterministic_and_learns():
    x, y, ph = _clusters()
    a = fit_head(x, y, ph, head_shape("dlib", 32), FAST)
    b = fit_head(x, y, ph, head_shape("dlib", 32), FAST)
    c = fit_head(x, y, ph, head_shape("dlib", 32), TrainConfig(epochs=60, patience=8, seed=1))
    assert a.history == b.history
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k])
    assert a.history != c.history
    assert a.val_rows > 0 and a.train_rows + a.val_rows == len(y)
    assert a.val_accuracy >= 0.9
    assert a.history["val_loss"][a.best_epoch] == min(a.history["val_loss"])
    assert len(a.history["train_loss"]) < FAST.epochs or a.best_epoch >= FAST.epochs - FAST.patience


def test_train_save_load_and_identify(tmp_path):
    folder = make_people(tmp_path / "people", people=4, photos=4)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=2)
        (rep,) = train_heads(g, ["dlib"], FAST)
        assert rep.people == 4 and rep.vectors == 4 * 4 * 3 and rep.val_vectors > 0
        payload = torch.load(rep.path, weights_only=True)
        assert payload["embedder"] == "dlib" and payload["dim"] == 48
        assert payload["person_names"] == ["person_0", "person_1", "person_2", "person_3"]
        assert len(payload["person_ids"]) == 4 and payload["weights_sha256"] == "f" * 64
        assert set(payload["history"]) >= {"train_loss", "val_loss", "val_accuracy"}
        assert heads.head_status(g, "dlib").fresh
        res = identify(g, [("q.jpg", jpeg_bytes(person_image(203)))], models=["dlib"])
        answer = res.images[0].faces[0].models["dlib"]
        assert isinstance(answer.head, HeadAnswer)
        assert answer.head.identity == "person_2" and 0.25 < answer.head.probability <= 1.0
        assert res.to_dict()["images"][0]["faces"][0]["models"]["dlib"]["head"]["identity"] == "person_2"


def test_head_goes_stale_when_people_change(tmp_path):
    folder = make_people(tmp_path / "people", people=3, photos=4)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=1)
        train_heads(g, ["dlib"], FAST)
        vec = np.ones((1, 48), np.float32) / np.sqrt(48)
        assert heads.head_answers(g, "dlib", vec) is not None
        make_people(folder, people=[7], photos=4)
        enroll_folder(g, folder, models=["dlib"], augment=1)
        status = heads.head_status(g, "dlib")
        assert status.exists and not status.fresh and "changed" in status.reason
        assert heads.head_answers(g, "dlib", vec) is None
        res = identify(g, [("q.jpg", jpeg_bytes(person_image(701)))], models=["dlib"])
        assert res.images[0].faces[0].models["dlib"].head is None
        train_heads(g, ["dlib"], FAST)
        assert heads.head_status(g, "dlib").fresh and heads.head_status(g, "dlib").people == 4


def test_forget_deletes_heads_trained_with_the_person(tmp_path):
    folder = make_people(tmp_path / "people", people=3, photos=4)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib", "facenet"], augment=1)
        reps = train_heads(g, None, FAST)
        assert {r.model for r in reps} == {"dlib", "facenet"}
        rep = forget(g, "person_1", compact_store=False)
        assert len(rep.heads_invalidated) == 2 and all("3 people" in d for d in rep.heads_invalidated)
        assert not list((tmp_path / "g" / "heads").glob("*.pt"))
        assert heads.delete_heads_with(g, "person_0") == []


def test_damaged_head_file_is_ignored(tmp_path):
    folder = make_people(tmp_path / "people", people=2, photos=3)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=0)
        (rep,) = train_heads(g, ["dlib"], FAST)
        with open(rep.path, "wb") as fh:
            fh.write(b"\x00not a torch file")
        assert heads.head_answers(g, "dlib", np.ones((1, 48), np.float32)) is None
        assert not heads.head_status(g, "dlib").fresh


def test_train_heads_cli(tmp_path, monkeypatch):
    import cli.commands_more as more
    from cli.main import cli

    folder = make_people(tmp_path / "people", people=3, photos=3)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=1)
    monkeypatch.setattr(more, "open_gallery", lambda ctx: open_gallery(tmp_path / "g"))
    result = CliRunner().invoke(cli, ["train-heads", "--model", "dlib", "--epochs", "30", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["heads"][0]["model"] == "dlib" and doc["heads"][0]["people"] == 3
    result = CliRunner().invoke(cli, ["train-heads", "--model", "dlib"])
    assert result.exit_code == 0 and "dlib" in result.stdout and "train/val vectors" in result.stdout
