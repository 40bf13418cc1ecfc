"""Erasure that can be proven: ``facegallery forget NAME`` (issue 7).

A gallery with three embedders (fast fakes, real SQLite and FAISS) and a classifier head per embedder; a reader
process keeps its connection open during the forget, as the web app would, so the SQLite WAL file exists. An
interrupted writer's temporary copies of an index and a head are planted beside the real files. After
``forget`` through the real CLI: no row of the person is left, their vectors are gone from every index (each
index is searched with the person's own vectors), every head trained with them is deleted, and neither their
vectors' exact float32 bytes nor their name nor their photo paths can be found in any file of the gallery folder
(database, -wal, -shm, index and head files), while the other people's vectors still can (the search works).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import cli
from db import queries as q
from db.models import Embedding, Face, Person, Photo
from gallery.enroll.enroll import enroll_folder
from gallery.heads import train as heads
from gallery.heads.model import TrainConfig
from gallery.manage.maintenance import check
from gallery.recognize.identify import answer_vectors
from tests.fakes import person_image
from tests.helpers import open_gallery

MODELS = ["dlib", "facenet", "resnet50"]
NAME = "Zelda Forgettable-Ünïcode"
OTHERS = ["person_0", "person_2", "person_3"]


def gallery_bytes(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


def found_in(files: dict[str, bytes], needles: list[bytes]) -> list[str]:
    return [f"{name} holds needle {i}" for name, data in files.items() for i, n in enumerate(needles) if n in data]


@pytest.fixture
def gallery_with_heads(tmp_path):
    root = tmp_path / "people"
    for p, name in enumerate(["person_0", NAME, "person_2", "person_3"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            person_image(p * 100 + i).save(root / name / f"{i}.jpg", quality=95)
    home = tmp_path / "g"
    with open_gallery(home) as g:
        enroll_folder(g, root, models=MODELS, augment=2)
        reports = heads.train_heads(g, MODELS, TrainConfig(epochs=30, patience=5))
        assert [r.people for r in reports] == [4, 4, 4]
        with g.session() as s:
            pid = q.person_by_name(s, NAME).id
            own = {m: q.vectors_of_person(s, m, pid) for m in MODELS}
            other = q.vectors_of_person(s, "dlib", q.person_by_name(s, "person_0").id)[1]
            paths = [p.path for p in q.photos_of(s, pid).values()]
    return home, own, other, paths


def test_forget_leaves_nothing_searchable_or_recoverable(gallery_with_heads):
    home, own, other, paths = gallery_with_heads
    forgotten_ids = {m: set(ids.tolist()) for m, (ids, _) in own.items()}
    vec_bytes = [q.vector_to_bytes(v) for _, vecs in own.values() for v in vecs]
    assert len(vec_bytes) == 3 * 4 * 3  # 3 embedders x 4 photos x (1 + 2 augmented copies)
    needles = vec_bytes + [NAME.encode()] + [p.encode() for p in paths]
    before = gallery_bytes(home)
    assert found_in(before, vec_bytes), "the vectors should be readable in the files before forget"
    # an interrupted writer's leftovers: a half-saved index and a half-saved head, both holding the person
    shutil.copy(home / "indexes" / "dlib.faiss", home / "indexes" / "dlib.faiss.tmp-99999")
    shutil.copy(home / "heads" / "dlib.pt", home / "heads" / ".dlib.pt.x1y2z3.tmp")

    with open_gallery(home) as reader:  # a reader with an open connection during the forget (keeps the -wal)
        reader.index("dlib")
        res = CliRunner().invoke(cli, ["--gallery", str(home), "forget", NAME, "--yes", "--json"])
        assert res.exit_code == 0, res.output
        rep = json.loads(res.stdout)
        assert rep["embeddings_removed"] == {m: 12 for m in MODELS} and rep["photos"] == 4
        assert len(rep["heads_invalidated"]) == 3 and rep["compacted"]
        after = gallery_bytes(home)
        assert "gallery.sqlite-wal" in after
        assert not found_in(after, needles), found_in(after, needles)
        # the reader's own next answers know nothing of the person either
        for m in MODELS:
            for answer in answer_vectors(reader, m, own[m][1], threshold=-1.0, top_k=10):
                assert NAME not in {c.identity for c in answer.candidates} and answer.identity != NAME

    assert not found_in(gallery_bytes(home), needles)
    assert q.vector_to_bytes(other[0]) in gallery_bytes(home)["gallery.sqlite"]  # the others are still there

    with open_gallery(home) as g:
        with g.session() as s:
            assert q.person_by_name(s, NAME) is None
            assert not s.scalars(select(Photo.id).where(Photo.path.in_(paths))).all()
            for m in MODELS:
                assert not s.scalars(select(Embedding.id).where(Embedding.id.in_(forgotten_ids[m]))).all()
            names = set(s.scalars(select(Person.name)))
            assert names == set(OTHERS)
            assert s.scalar(select(Face.id).where(~Face.photo_id.in_(select(Photo.id)))) is None
        for m in MODELS:
            index = g.index(m)
            assert len(index) == 3 * 4 * 3
            _, hits = index.search(own[m][1], len(index))  # every vector of the index, for every query
            assert not set(hits.ravel().tolist()) & forgotten_ids[m]
            assert heads.head_status(g, m).reason.startswith("no head trained")
        assert not list((home / "heads").iterdir()) and not list((home / "indexes").glob("*.tmp*"))
        assert check(g).ok


def test_forget_unknown_name_changes_nothing(gallery_with_heads):
    home, *_ = gallery_with_heads
    before = gallery_bytes(home)
    res = CliRunner().invoke(cli, ["--gallery", str(home), "forget", "Nobody; DROP TABLE people;--", "--yes"])
    assert res.exit_code == 1
    assert res.stderr == "Error: no person named 'Nobody; DROP TABLE people;--' in the gallery\n"
    after = gallery_bytes(home)
    assert {k: v for k, v in after.items() if "sqlite" not in k} == {
        k: v for k, v in before.items() if "sqlite" not in k}
    with open_gallery(home) as g:
        assert len(heads.head_status(g, "dlib").reason) and heads.head_status(g, "dlib").fresh
        assert sorted(p for p in (home / "heads").iterdir()) and check(g).ok
