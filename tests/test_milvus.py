"""The Milvus vector backend (indexer/milvus_index.py, gallery/milvus_cache.py), issue 16, on Milvus Lite.

The gallery tests below run twice, parametrised over the backend: FAISS files and a Milvus Lite folder. Both are
caches of the same database rows, so every answer must agree. Milvus-only cases follow: identify answers equal
FAISS flat on the same gallery (same names, scores within 1e-5), a stale or missing collection is rebuilt, a reader
that meets a writer mid-update answers from the database, forget leaves no byte of the person's vectors in Milvus
Lite's files, and the service runs on it. A Milvus server or cluster is not tested here (none can be started on
this machine).
"""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from cli.main import cli  # noqa: E402
from db import queries as q  # noqa: E402
from gallery.config import Settings  # noqa: E402
from gallery.enroll.enroll import enroll_folder  # noqa: E402
from gallery.indexes import VectorChanges  # noqa: E402
from gallery.manage.maintenance import check, reindex  # noqa: E402
from gallery.manage.people import forget, list_people  # noqa: E402
from gallery.milvus_cache import MilvusCache  # noqa: E402
from gallery.recognize.identify import identify  # noqa: E402
from gallery.store import Gallery  # noqa: E402
from indexer.milvus_index import MilvusIndex, connect  # noqa: E402
from indexer.vector_index import VectorIndex  # noqa: E402
from tests.fakes import FakeDetector, fake_factory, person_image  # noqa: E402

MODELS = ["dlib", "facenet"]


def make_people(root, people=4, photos=3, first=0):
    for p in range(first, first + people):
        (root / f"person_{p}").mkdir(parents=True, exist_ok=True)
        for i in range(photos):
            person_image(100 * p + i).save(root / f"person_{p}" / f"{i}.jpg", quality=95)
    return root


def query_files(tmp_path, people=range(4)):
    out = []
    for p in people:
        path = tmp_path / f"q{p}.jpg"
        person_image(100 * p + 9).save(path, quality=95)
        out.append(path)
    return out


def open_gallery(home, vectors=None) -> Gallery:
    return Gallery(Settings(home=home, progress=False, vectors=vectors), detector=FakeDetector(),
                   embedder_factory=fake_factory())


@pytest.fixture(params=["faiss", "milvus"])
def vectors(request, tmp_path):
    return None if request.param == "faiss" else str(tmp_path / "vectors.db")


def names(report, model="dlib"):
    return [img.faces[0].models[model].identity if img.faces else None for img in report.images]


# -- the same gallery tests on both backends ------------------------------------------------------------------
def test_enroll_identify_incrementally_and_forget(tmp_path, vectors):
    root = make_people(tmp_path / "people", people=2)
    home = tmp_path / "g"
    queries = query_files(tmp_path, range(3))
    with open_gallery(home, vectors) as g:
        enroll_folder(g, root, models=MODELS, augment=1)
        assert names(identify(g, queries[:2])) == ["person_0", "person_1"]
        make_people(root, people=1, first=2)  # a delta: one new person, the others unchanged
        rep = enroll_folder(g, root, models=MODELS, augment=1)
        assert rep.unchanged == 6 and len(rep.enrolled) == 3
        assert names(identify(g, queries)) == ["person_0", "person_1", "person_2"]
        for m in MODELS:
            with g.session() as s:
                assert np.array_equal(np.sort(g.index(m).ids()), np.sort(q.embedding_ids(s, m)))
        with g.session() as s:
            own = q.vectors_of_person(s, "dlib", q.person_by_name(s, "person_1").id)
        forget(g, "person_1")
        assert "person_1" not in {hit.id for hits in g.index("dlib").search_lists(own[1], 50) for hit in hits}
        assert not set(own[0].tolist()) & set(g.index("dlib").ids().tolist())
        assert [p.name for p in list_people(g)] == ["person_0", "person_2"]
        assert names(identify(g, queries))[1] != "person_1"
        report = check(g)
        assert report.ok and not [n for n in report.notes if "index file" in n], report.notes  # no FAISS file here
    with open_gallery(home, vectors) as g:  # a new process: the stored caches are fresh, answers the same
        assert names(identify(g, [queries[0], queries[2]])) == ["person_0", "person_2"]


def test_reindex_and_the_cli_on_both_backends(tmp_path, vectors):
    root = make_people(tmp_path / "people", people=2)
    home = tmp_path / "g"
    with open_gallery(home, vectors) as g:
        enroll_folder(g, root, models=["dlib"], augment=0)
        [res] = reindex(g, ["dlib"])
        assert res.vectors == 6 and res.kind == ("flat" if vectors is None else "milvus")
        assert names(identify(g, query_files(tmp_path, range(2)))) == ["person_0", "person_1"]
    args = ["--gallery", str(home)] + (["--vectors", vectors] if vectors else []) + ["people", "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert [p["name"] for p in json.loads(res.stdout)["people"]] == ["person_0", "person_1"]


def test_a_write_that_replaces_vectors_in_place_is_searched_after_it(tmp_path, vectors):
    root = make_people(tmp_path / "people", people=2)
    home = tmp_path / "g"
    with open_gallery(home, vectors) as g:
        enroll_folder(g, root, models=["dlib"], augment=0)
    with open_gallery(home, vectors) as g:  # a new process: nothing loaded before the write
        with g.session() as s:
            ids = q.embedding_ids(s, "dlib")
        new = np.random.default_rng(1).normal(size=(len(ids), 48)).astype(np.float32)
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        with g.writing() as w:
            q.replace_vectors(w.session, ids, new, "f" * 64)
            w.replaced("dlib", "f" * 64)
        scores, found = g.index("dlib").search(new[:3], 1)
        assert found[:, 0].tolist() == ids[:3].tolist() and np.allclose(scores[:, 0], 1.0, atol=1e-5)


# -- Milvus only -----------------------------------------------------------------------------------------------
def test_milvus_answers_equal_faiss_flat_on_the_same_gallery(tmp_path):
    root = make_people(tmp_path / "people", people=5, photos=3)
    home = tmp_path / "g"
    queries = query_files(tmp_path, range(5)) + [tmp_path / "q_stranger.jpg"]
    person_image(90_000).save(queries[-1], quality=95)
    with open_gallery(home) as g:  # FAISS flat
        enroll_folder(g, root, models=MODELS, augment=2)
        faiss_rep = identify(g, queries, top_k=4)
        assert g.index("dlib").kind == "flat"
    with open_gallery(home, str(tmp_path / "vectors.db")) as g:  # the same rows, searched in Milvus
        milvus_rep = identify(g, queries, top_k=4)
        assert isinstance(g.index("dlib"), MilvusIndex)
    for a, b in zip(faiss_rep.images, milvus_rep.images):
        for fa, fb in zip(a.faces, b.faces):
            for m in MODELS:
                ma, mb = fa.models[m], fb.models[m]
                assert (ma.identity, ma.status) == (mb.identity, mb.status)
                assert [c.identity for c in ma.candidates] == [c.identity for c in mb.candidates]
                assert abs(ma.score - mb.score) <= 1e-5
                assert all(abs(x.score - y.score) <= 1e-5 for x, y in zip(ma.candidates, mb.candidates))


def test_a_stale_or_missing_collection_is_rebuilt_from_the_database(tmp_path):
    root = make_people(tmp_path / "people", people=2)
    home, store = tmp_path / "g", str(tmp_path / "vectors.db")
    with open_gallery(home, store) as g:
        enroll_folder(g, root, models=["dlib"], augment=0)
        client = g._indexes.client()
        MilvusIndex(client, "facegallery_dlib", 48).remove(np.array([1, 2]))  # damage behind the gallery's back
        g._indexes.stamps().write("facegallery_dlib", {"embedder": "dlib", "generation": -1})  # and mark it stale
        g.forget_cached_index("dlib")
        assert len(g.index("dlib")) == 6  # rebuilt: every row is back
        client.drop_collection("facegallery_dlib")
        g._indexes.stamps().write("facegallery_dlib", None)
        g.forget_cached_index("dlib")
        assert sorted(g.index("dlib").ids().tolist()) == list(range(1, 7))


def test_a_reader_that_meets_a_writer_mid_update_answers_from_the_database(tmp_path):
    root = make_people(tmp_path / "people", people=2)
    home, store = tmp_path / "g", str(tmp_path / "vectors.db")
    with open_gallery(home, store) as g:
        enroll_folder(g, root, models=["dlib"], augment=0)
        cache: MilvusCache = g._indexes
        cache.stamps().write("facegallery_dlib", None)  # a writer committed and has not stamped the collection yet
        cache.drop("dlib")
        cache._try_locked = lambda action: False  # ...and still holds the writer lock
        index = cache.get("dlib")
        assert isinstance(index, VectorIndex) and len(index) == 6  # the database's rows, in memory


def test_forget_erases_the_vectors_from_milvus_lite_files(tmp_path):
    """A delete (even compacted) leaves the bytes in Milvus Lite's files; forget rebuilds the collection."""
    root = make_people(tmp_path / "people", people=3, photos=4)
    home, store = tmp_path / "g", tmp_path / "vectors.db"
    with open_gallery(home, str(store)) as g:
        enroll_folder(g, root, models=["dlib"], augment=2)
        with g.session() as s:
            own = q.vectors_of_person(s, "dlib", q.person_by_name(s, "person_1").id)[1]
            other = q.vectors_of_person(s, "dlib", q.person_by_name(s, "person_0").id)[1]

        def found(vecs) -> int:
            data = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
            return sum(q.vector_to_bytes(v) in data for v in vecs)

        assert found(own) > 0 and found(other) > 0  # the needles can be found in Milvus' files
        forget(g, "person_1")
        assert found(own) == 0 and found(other) > 0
        assert len(g.index("dlib")) == 2 * 4 * 3


def test_the_milvus_index_adds_removes_and_searches(tmp_path):
    client = connect(str(tmp_path / "v.db"))
    try:
        rng = np.random.default_rng(0)
        vecs = rng.normal(size=(50, 8)).astype(np.float32)
        index = MilvusIndex.build(client, "c", np.arange(50), vecs)
        assert index.remove(np.arange(10)) == 10
        assert len(MilvusIndex.open(client, "c")) == 40 and index.ids().tolist() == list(range(10, 50))
        scores, ids = index.search(vecs[10:12], 3)
        assert ids[:, 0].tolist() == [10, 11] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    finally:
        client.close()


def test_the_milvus_index_checks_vectors_like_faiss(tmp_path):
    from indexer.vector_index import InvalidVectorsError

    client = connect(str(tmp_path / "v.db"))
    try:
        index = MilvusIndex.create(client, "c", 4)
        with pytest.raises(InvalidVectorsError, match="zero vector"):
            index.add(np.array([1]), np.zeros((1, 4), np.float32))
        with pytest.raises(InvalidVectorsError, match=r"expected shape \(n, 4\)"):
            index.search(np.ones((1, 3), np.float32), 1)
        index.add(np.array([7]), np.array([[3.0, 0, 0, 4.0]], np.float32))  # normalised on the way in
        scores, ids = index.search(np.array([[0.6, 0, 0, 0.8]], np.float32), 5)
        assert ids.tolist() == [[7]] and abs(float(scores[0, 0]) - 1.0) <= 1e-5
    finally:
        client.close()


def test_an_unknown_vectors_setting_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["--gallery", str(tmp_path / "g"), "--vectors", "redis://x", "people"])
    assert res.exit_code == 1
    assert res.output.strip() == ("Error: --vectors 'redis://x': use faiss, milvus://HOST:PORT or a Milvus Lite "
                                  "path ending in .db")


def test_the_service_on_milvus_lite(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from gallery.manage.keys import create_key
    from server.app import create_app
    from server.config import ServerOptions
    from tests.test_server import jpg

    settings = Settings(home=tmp_path / "g", progress=False, vectors=str(tmp_path / "vectors.db"))
    with Gallery(settings) as g:
        token = create_key(g, "k").token
    app = create_app(settings, ServerOptions(), detector=FakeDetector(), embedder_factory=fake_factory())
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as c:
        for p in range(2):
            res = c.post(f"/v1/people/person_{p}/photos", headers=auth, params={"model": "dlib"},
                         files=[("photos", (f"{i}.jpg", jpg(100 * p + i))) for i in range(2)])
            assert res.status_code == 200, res.text
        got = c.post("/v1/identify", headers=auth, files=[("images", ("q.jpg", jpg(105)))]).json()
        assert got["images"][0]["faces"][0]["models"]["dlib"]["identity"] == "person_1"
        assert c.delete("/v1/people/person_1", headers=auth).status_code == 200
        got = c.post("/v1/identify", headers=auth, files=[("images", ("q.jpg", jpg(105)))]).json()
        assert got["images"][0]["faces"][0]["models"]["dlib"]["identity"] != "person_1"


def test_apply_without_a_collection_creates_one(tmp_path):
    home, store = tmp_path / "g", str(tmp_path / "vectors.db")
    with open_gallery(home, store) as g:
        cache: MilvusCache = g._indexes
        assert cache.get("dlib") is None  # nothing stored yet
        changes = VectorChanges.empty()
        assert cache.path("dlib").endswith("#facegallery_dlib") and changes.added() is None


def test_a_nan_row_in_the_database_never_stops_a_milvus_rebuild_nor_forget(tmp_path):
    # An older version could commit a NaN vector. The collection is rebuilt without it (as a FAISS index is),
    # so searches and forget go on; before, the rebuild raised on the first chunk holding it.
    root = make_people(tmp_path / "people", people=2)
    home, vectors = tmp_path / "g", str(tmp_path / "vectors.db")
    with open_gallery(home, vectors) as g:
        enroll_folder(g, root, models=["dlib"], augment=0)
        with g.session() as s:
            bad = int(q.embedding_ids(s, "dlib", q.person_by_name(s, "person_0").id)[0])
    conn = sqlite3.connect(home / "gallery.sqlite")
    with conn:
        conn.execute("UPDATE embeddings SET vector = ? WHERE id = ?", (np.full(48, np.nan, "<f4").tobytes(), bad))
        conn.execute("UPDATE index_state SET generation = generation + 1")  # the collection is stale now
    conn.close()
    with open_gallery(home, vectors) as g:
        ids = set(g.index("dlib").ids().tolist())
        with g.session() as s:
            assert ids == set(q.embedding_ids(s, "dlib").tolist()) - {bad}
        forget(g, "person_0")
        assert [p.name for p in list_people(g)] == ["person_1"]
