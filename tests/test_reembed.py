"""Re-embedding a gallery after its FaceNet weights change, end to end.

Real MTCNN on real five_celebrity photos, real SQLite and FAISS, FaceNet with two random-init weight files
(A and B, saved as plain state_dicts like an imported checkpoint, so their sha256 differ) and the real dlib
embedder riding along to show that the rows of an embedder that is not re-embedded are never touched. Torch runs
on one thread (the machine is small; two spinning OpenMP threads are slower there).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import select

import gallery.enroll.reembed as reembed_mod
from cli.main import cli
from db import queries as q
from db.models import Embedding, Face, IndexState, Person, Photo, Setting
from gallery.calibration.curve import read_curves, write_curves
from gallery.calibration.thresholds import store_thresholds, stored_thresholds
from gallery.config import Settings
from gallery.enroll.enroll import enroll_folder, enroll_images
from gallery.enroll.prepare import stored_face
from gallery.enroll.reembed import reembed
from gallery.errors import SourcesMissingError, WeightsMismatchError
from gallery.heads.model import TrainConfig
from gallery.heads.train import head_answers, head_status, train_heads
from gallery.manage.maintenance import check
from gallery.recognize.identify import identify
from gallery.store import Gallery
from indexer.augment import aug_seed, augment
from indexer.embedders.weights import sha256_file
from indexer.images import load_image
from indexer.vector_index import VectorIndex

REPO = Path(__file__).resolve().parents[1]
PEOPLE = ("ben_afflek", "elton_john", "madonna")
PHOTOS_PER_PERSON = 2
K = 2
MESSAGE = "run `facegallery reembed --model facenet`"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread_module):
    """One intra-op thread for every fixture and test of this module (conftest.py)."""


def _facenet(seed: int) -> torch.nn.Module:
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(seed)
    return InceptionResnetV1(pretrained=None, classify=False).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Two random-init FaceNet state_dict files; returns (path A, path B, module B for the direct forward)."""
    root = tmp_path_factory.mktemp("weights")
    net_b = None
    for name, seed in (("A", 1), ("B", 2)):
        net = _facenet(seed)
        torch.save(net.state_dict(), root / f"{name}.pt")
        net_b = net
    assert sha256_file(root / "A.pt") != sha256_file(root / "B.pt")
    return root / "A.pt", root / "B.pt", net_b


def _copy_photos(five_celebrity: Path, dest: Path) -> Path:
    for person in PEOPLE:
        (dest / person).mkdir(parents=True)
        for src in sorted((five_celebrity / "train" / person).iterdir())[:PHOTOS_PER_PERSON]:
            shutil.copy(src, dest / person / src.name)
    return dest


def _open(home: Path, facenet_weights: Path) -> Gallery:
    return Gallery(Settings(home=home, weights={"facenet": str(facenet_weights)}, progress=False, batch_size=8))


def _enroll(home: Path, people: Path, weights_file: Path) -> None:
    with _open(home, weights_file) as g:
        rep = enroll_folder(g, people, models=["facenet", "dlib"], augment=K)
    assert len(rep.enrolled) == len(PEOPLE) * PHOTOS_PER_PERSON, rep.to_dict()


@pytest.fixture(scope="module")
def template(tmp_path_factory, five_celebrity, weights):
    """A gallery enrolled with weights A (facenet + dlib, K=2). Tests copy it; the photos stay where they are."""
    root = tmp_path_factory.mktemp("template")
    people = _copy_photos(five_celebrity, root / "people")
    _enroll(root / "g", people, weights[0])
    return root / "g", people


@pytest.fixture
def home(template, tmp_path) -> Path:
    shutil.copytree(template[0], tmp_path / "g")
    return tmp_path / "g"


def _rows(g: Gallery, model: str | None = None) -> dict[int, tuple]:
    """embedding id -> (embedder, weights sha256, dim, vector bytes, face id, aug index)."""
    with g.session() as s:
        stmt = select(Embedding.id, Embedding.embedder, Embedding.weights_sha256, Embedding.dim, Embedding.vector,
                      Embedding.face_id, Embedding.aug_index)
        if model:
            stmt = stmt.where(Embedding.embedder == model)
        return {r[0]: tuple(r[1:]) for r in s.execute(stmt)}


def _snapshot(g: Gallery) -> tuple:
    with g.session() as s:
        state = sorted(tuple(r) for r in s.execute(select(IndexState.embedder, IndexState.generation,
                                                          IndexState.weights_sha256)))
        settings = sorted(tuple(r) for r in s.execute(select(Setting.key, Setting.value)))
        photos = sorted(tuple(r) for r in s.execute(select(Photo.id, Photo.path, Photo.sha256)))
        faces = sorted(tuple(r) for r in s.execute(select(Face.id, Face.photo_id, Face.x1, Face.y1, Face.x2, Face.y2)))
    return _rows(g), state, settings, photos, faces


def _direct_vectors(g: Gallery, net: torch.nn.Module) -> dict[int, np.ndarray]:
    """Oracle: each stored facenet row recomputed by hand: stored box -> crop -> K augmented copies -> forward."""
    emb = g.embedder("facenet")
    out = {}
    with g.session() as s:
        for photo in s.scalars(select(Photo)):
            image = load_image(photo.path)
            for face in s.scalars(select(Face).where(Face.photo_id == photo.id)):
                rows = s.execute(select(Embedding.id, Embedding.aug_index).where(
                    Embedding.face_id == face.id, Embedding.embedder == "facenet")).all()
                if not rows:
                    continue
                crop = emb.crop(image, stored_face(face))
                copies = [crop] + augment(crop, K, aug_seed(0, photo.sha256))
                with torch.inference_mode():
                    vecs = net(emb.preprocess(copies)).numpy()
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                out.update({emb_id: vecs[aug] for emb_id, aug in rows})
    return out


def _temp_files(home: Path) -> list[str]:
    return [p.name for p in (home / "indexes").iterdir() if ".tmp" in p.name]


def test_reembed_recomputes_every_vector_with_the_new_weights(home, template, weights, tmp_path):
    path_a, path_b, net_b = weights
    sha_a, sha_b = sha256_file(path_a), sha256_file(path_b)
    with _open(home, path_a) as g:
        with g.writing() as w:
            store_thresholds(w, {"facenet": 0.5, "dlib": 0.93})
        curve = {"thresholds": [0.1, 0.9], "far": [1.0, 0.0], "frr": [0.0, 1.0], "source": "test"}
        write_curves(home, {"facenet": curve, "dlib": curve})
        train_heads(g, ["facenet"], TrainConfig(epochs=3))
        assert head_status(g, "facenet").fresh
    with _open(home, path_b) as g:
        one_photo = str(next((template[1] / PEOPLE[1]).iterdir()))
        with pytest.raises(WeightsMismatchError, match=MESSAGE):
            enroll_folder(g, template[1], models=["facenet"], augment=K)
        with pytest.raises(WeightsMismatchError, match=MESSAGE):
            identify(g, [one_photo], models=["facenet"])
        dlib_before = _rows(g, "dlib")
        with g.session() as s:
            generation = q.generation(s, "facenet")
        rep = reembed(g)
        n = len(PEOPLE) * PHOTOS_PER_PERSON
        assert rep.up_to_date == ("dlib",) and rep.models_skipped == {}
        (r,) = rep.reembedded
        assert (r.model, r.old_weights, r.new_weights) == ("facenet", (sha_a,), sha_b)
        assert (r.photos, r.vectors, r.vectors_removed, r.skipped) == (n, n * (1 + K), 0, ())
        assert r.threshold_dropped == 0.5 and r.generation == generation + 1 and not r.random_weights
        assert r.head_stale and not head_status(g, "facenet").fresh  # trained on the old vectors: never used
        assert head_answers(g, "facenet", np.full((1, 512), 512 ** -0.5, np.float32)) is None
        assert stored_thresholds(g) == {"dlib": 0.93}
        assert set(read_curves(home)) == {"dlib"}  # the curve went with the threshold
        json.dumps(rep.to_dict())

        rows = _rows(g, "facenet")
        assert len(rows) == n * (1 + K) and {v[1] for v in rows.values()} == {sha_b}
        direct = _direct_vectors(g, net_b)
        assert set(direct) == set(rows)
        for emb_id, row in rows.items():
            np.testing.assert_allclose(q.bytes_to_vector(row[3]), direct[emb_id], rtol=0, atol=1e-5)
        assert _rows(g, "dlib") == dlib_before
        with g.session() as s:
            assert q.generation(s, "facenet") == generation + 1
            assert s.get(IndexState, "facenet").weights_sha256 == sha_b
        stamp = g.index_stamp("facenet").to_dict()
        assert VectorIndex.load(g.index_path("facenet"), expected_stamp=stamp) is not None  # rebuilt and saved
        assert len(g.index("facenet")) == n * (1 + K)
        assert check(g).ok and _temp_files(home) == []
        answer = identify(g, [one_photo], models=["facenet"]).images[0].faces[0].models["facenet"]
        assert answer.identity == PEOPLE[1] and answer.score > 0.999  # its own stored vector

        again = reembed(g)
        assert (again.reembedded, again.up_to_date, again.vectors) == ((), ("dlib", "facenet"), 0)
        with g.session() as s:
            assert q.generation(s, "facenet") == generation + 1

    # the same as enrolling the photos with weights B from the start
    _enroll(tmp_path / "fresh", template[1], path_b)
    with _open(tmp_path / "fresh", path_b) as fresh, _open(home, path_b) as g:
        want, got = _by_photo(fresh), _by_photo(g)
    assert set(want) == set(got)
    for key, vec in got.items():
        np.testing.assert_allclose(vec, want[key], rtol=0, atol=1e-5)


def _by_photo(g: Gallery) -> dict[tuple, np.ndarray]:
    """(photo path, face box, aug index) -> stored facenet vector: comparable across two galleries."""
    with g.session() as s:
        where = {f.id: (p.path, f.x1, f.y1, f.x2, f.y2) for f, p in s.execute(select(Face, Photo).join(Photo))}
    return {(where[v[4]], v[5]): q.bytes_to_vector(v[3]) for v in _rows(g, "facenet").values()}


def test_missing_changed_and_uploaded_sources_are_skipped(tmp_path, five_celebrity, weights):
    path_a, path_b, _ = weights
    people = _copy_photos(five_celebrity, tmp_path / "people")
    _enroll(tmp_path / "g", people, path_a)
    deleted, changed = sorted((people / PEOPLE[0]).iterdir())
    upload = next((people / PEOPLE[2]).iterdir()).read_bytes()
    with _open(tmp_path / "g", path_a) as g:
        enroll_images(g, "uploader", [("u.jpg", upload)], models=["facenet"], augment=K)
    deleted.unlink()
    shutil.copy(next((people / PEOPLE[1]).iterdir()), changed)
    with _open(tmp_path / "g", path_b) as g:
        dlib_before = _rows(g, "dlib")
        facenet_before = _rows(g, "facenet")
        # by default: refused, one line, nothing changed (a moved folder must not empty the gallery)
        with pytest.raises(SourcesMissingError, match=r"2 of 7 photos cannot be re-read.*--drop-missing") as info:
            reembed(g, ["facenet"])
        assert "\n" not in str(info.value)
        assert _rows(g, "facenet") == facenet_before and _rows(g, "dlib") == dlib_before
        (r,) = reembed(g, ["facenet"], drop_missing=True).reembedded
        reasons = {s.path: s.reason for s in r.skipped}
        assert reasons == {
            str(deleted): "no such file",
            str(changed): "source file changed since enrollment (sha256 differs)",
            "upload:u.jpg": "uploaded image: its file is not kept (enroll it again)",
        }
        kept = len(PEOPLE) * PHOTOS_PER_PERSON - 2
        assert (r.photos, r.vectors, r.vectors_removed, r.photos_removed) == (kept, kept * (1 + K), 3 * (1 + K), 1)
        with g.session() as s:
            paths = {p.path for p in s.scalars(select(Photo))}
            with_facenet = {p for (p,) in s.execute(select(Photo.path).join(Face).join(Embedding)
                                                     .where(Embedding.embedder == "facenet"))}
            uploader = s.scalar(select(Person).where(Person.name == "uploader"))
            assert q.photos_of(s, uploader.id) == {}
        assert str(deleted) in paths and str(changed) in paths and "upload:u.jpg" not in paths  # dlib keeps them
        assert str(deleted) not in with_facenet and str(changed) not in with_facenet and len(with_facenet) == kept
        assert _rows(g, "dlib") == dlib_before
        assert {v[1] for v in _rows(g, "facenet").values()} == {sha256_file(path_b)}
        assert len(g.index("facenet")) == kept * (1 + K) and check(g).ok
        kept_photo = str(next((people / PEOPLE[1]).iterdir()))
        answer = identify(g, [kept_photo], models=["facenet"]).images[0].faces[0].models["facenet"]
        assert answer.identity == PEOPLE[1]


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupt_midway_leaves_the_gallery_as_it_was(home, weights, monkeypatch, error):
    path_a, path_b, _ = weights
    real = reembed_mod._embed_chunk
    calls = []

    def embed_then_interrupt(run, items):
        if calls:
            raise error("injected")  # Ctrl-C or a failure after the first chunk was embedded
        calls.append(len(items))
        real(run, items)

    monkeypatch.setattr(reembed_mod, "_embed_chunk", embed_then_interrupt)
    with _open(home, path_b) as g:
        before = _snapshot(g)
        index_files = {p.name: p.read_bytes() for p in (home / "indexes").iterdir()}
        with pytest.raises(error):
            reembed(g, ["facenet"], chunk=2)
        assert calls == [2] and _temp_files(home) == []
        assert _snapshot(g) == before
        assert {p.name: p.read_bytes() for p in (home / "indexes").iterdir()} == index_files
        with pytest.raises(WeightsMismatchError, match=MESSAGE):
            identify(g, [b"not read"], models=["facenet"])
    with _open(home, path_a) as g:  # the old weights still work, untouched
        assert check(g).ok and len(g.index("facenet")) == len(before[0]) // 2


CHILD = """
import sys, time
import gallery.enroll.reembed as m
from gallery.config import Settings
from gallery.store import Gallery

real = m._embed_chunk
def slow(run, items):
    real(run, items)
    print("embedded", flush=True)
    time.sleep(120)  # killed here, with the new vectors in the scratch file
m._embed_chunk = slow
with Gallery(Settings(home=sys.argv[1], weights={"facenet": sys.argv[2]}, progress=False)) as g:
    m.reembed(g, ["facenet"], chunk=2)
"""


def test_sigkill_midway_leaves_the_gallery_as_it_was(home, weights):
    path_a, path_b, _ = weights
    with _open(home, path_b) as g:
        before = _snapshot(g)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(home), str(path_b)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the first chunk is embedded
        assert line.strip() == "embedded", proc.stderr.read() if proc.poll() is not None else line
        assert _temp_files(home)  # the scratch memmap exists now
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with _open(home, path_b) as g:
        assert _snapshot(g) == before
        assert _temp_files(home)  # the killed run's scratch file
        with g.write_lock():  # the next writer removes it as it takes the lock
            assert _temp_files(home) == []
        rep = reembed(g, ["facenet"])
        assert rep.vectors == len(before[0]) // 2 and check(g).ok


def test_force_with_the_same_weights_keeps_vectors_and_threshold(home, weights):
    path_a, _, _ = weights
    with _open(home, path_a) as g:
        with g.writing() as w:
            store_thresholds(w, {"facenet": 0.5})
        before = _rows(g, "facenet")
        nothing = reembed(g, ["facenet"])
        assert (nothing.reembedded, nothing.up_to_date, nothing.vectors) == ((), ("facenet",), 0)
        with g.session() as s:
            generation = q.generation(s, "facenet")
        (r,) = reembed(g, ["facenet"], force=True).reembedded
        assert r.vectors == len(before) and r.generation == generation + 1 and r.threshold_dropped is None
        assert stored_thresholds(g)["facenet"] == 0.5
        after = _rows(g, "facenet")
        assert set(after) == set(before)
        for emb_id, row in after.items():
            assert row[1] == before[emb_id][1]
            np.testing.assert_allclose(q.bytes_to_vector(row[3]), q.bytes_to_vector(before[emb_id][3]), atol=1e-5)
        # same weights, sources gone, --drop-missing: the stored vectors are still valid and are never deleted
        with g.session() as s:
            gone = [Path(p) for p in s.scalars(select(Photo.path)) if not p.startswith("upload:")]
        moved = home.parent / "moved"
        moved.mkdir()
        for p in gone:
            shutil.move(str(p), moved / f"{p.parent.name}-{p.name}")
        try:
            (r,) = reembed(g, ["facenet"], force=True, drop_missing=True).reembedded
            assert r.vectors == 0 and r.vectors_removed == 0 and len(r.skipped) == len(gone)
            assert set(_rows(g, "facenet")) == set(before) and check(g).ok
        finally:
            for p in gone:
                shutil.move(str(moved / f"{p.parent.name}-{p.name}"), p)


def test_cli_points_at_reembed_and_runs_it(home, template, weights):
    _, path_b, _ = weights
    runner = CliRunner()
    base = ["--gallery", str(home), "--weights", f"facenet={path_b}", "-q"]
    photo = str(next((template[1] / PEOPLE[0]).iterdir()))
    res = runner.invoke(cli, [*base, "identify", photo, "--model", "facenet"])
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and MESSAGE in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(cli, [*base, "reembed", "--model", "facenet", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["vectors"] == len(PEOPLE) * PHOTOS_PER_PERSON * (1 + K)
    assert doc["reembedded"][0]["new_weights"] == sha256_file(path_b) and doc["reembedded"][0]["skipped"] == []
    res = runner.invoke(cli, [*base, "reembed", "--model", "facenet"])
    assert res.exit_code == 0 and res.stdout.strip() == "facenet: up to date (nothing to re-embed)"
    res = runner.invoke(cli, [*base, "identify", photo, "--model", "facenet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"][0]["faces"][0]["models"]["facenet"]["identity"] == PEOPLE[0]


def test_a_changed_source_found_while_reading_also_stops_with_nothing_changed(home, weights):
    """The up-front check only sees missing files; a changed file is found by its sha256 while reading."""
    _, path_b, _ = weights
    with _open(home, path_b) as g:
        with g.session() as s:
            paths = sorted(Path(p) for p in s.scalars(select(Photo.path)))
        before = _rows(g)
        original = paths[0].read_bytes()
        paths[0].write_bytes(paths[1].read_bytes())
        try:
            with pytest.raises(SourcesMissingError, match="1 of .*sha256 differs.*--drop-missing"):
                reembed(g, ["facenet"])
        finally:
            paths[0].write_bytes(original)
        assert _rows(g) == before and not list(g.settings.index_dir.glob("*.tmp*"))
