"""Gallery bookkeeping with fast fakes for detector/embedders: real SQLite file, real FAISS indexes."""
from __future__ import annotations

import numpy as np
import pytest

from db import queries as q
from gallery.enroll.enroll import enroll_folder
from gallery.errors import PersonNotFoundError, WeightsMismatchError
from gallery.manage.maintenance import check, reindex
from gallery.manage.people import forget, list_people
from gallery.recognize.identify import identify
from tests.fakes import FakeEmbedder, person_image
from tests.helpers import jpeg_bytes, make_people, open_gallery

MODELS = ["facenet", "dlib"]


@pytest.fixture
def folder(tmp_path):
    return make_people(tmp_path / "people")


def test_enroll_counts_and_incremental(tmp_path, folder):
    store = {}
    with open_gallery(tmp_path / "g", store) as g:
        rep = enroll_folder(g, folder, models=MODELS, augment=2)
        assert len(rep.enrolled) == 9 and not rep.skipped
        assert rep.embeddings_added == {"facenet": 27, "dlib": 27}
        people = {p.name: p for p in list_people(g)}
        assert set(people) == {"person_0", "person_1", "person_2"}
        assert people["person_1"].photos == 3 and people["person_1"].embeddings == {"facenet": 9, "dlib": 9}
        again = enroll_folder(g, folder, models=MODELS, augment=2)
        assert again.embeddings_added == {"facenet": 0, "dlib": 0} and again.unchanged == 9
        # a new photo and a changed photo: only those are (re-)embedded
        person_image(5).save(folder / "person_0" / "new.jpg")
        person_image(7).save(folder / "person_1" / "0.jpg")
        before = store["dlib"].embedded
        third = enroll_folder(g, folder, models=MODELS, augment=2)
        assert sorted(p.path.rsplit("/", 2)[-2] + "/" + p.path.rsplit("/", 1)[-1] for p in third.enrolled) == [
            "person_0/new.jpg", "person_1/0.jpg"]
        assert store["dlib"].embedded - before == 6
        assert {p.name: p.photos for p in list_people(g)}["person_1"] == 3
        assert check(g).ok


def test_augmented_rows_record_source_and_index(tmp_path, folder):
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=3)
        with g.session() as s:
            ids = q.embedding_ids(s, "dlib")
            owners = q.owners(s, ids.tolist())
        augs = sorted({o[3] for o in owners.values()})
        assert augs == [0, 1, 2, 3]
        per_photo = {}
        for pid, name, photo, aug in owners.values():
            per_photo.setdefault(photo, []).append(aug)
        assert all(sorted(v) == [0, 1, 2, 3] for v in per_photo.values())


def test_adding_a_model_later_reuses_stored_faces(tmp_path, folder):
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=0)
        calls = g.detector.calls
        rep = enroll_folder(g, folder, models=["dlib", "facenet"], augment=0)
        assert rep.embeddings_added == {"dlib": 0, "facenet": 9}
        assert g.detector.calls == calls  # no new detection: the stored face box was reused


def test_forget_removes_every_vector(tmp_path, folder):
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=MODELS, augment=1)
        with g.session() as s:
            pid = q.person_by_name(s, "person_1").id
            own = {m: q.vectors_of_person(s, m, pid) for m in MODELS}
        rep = forget(g, "person_1")
        assert rep.embeddings_removed == {"facenet": 6, "dlib": 6}
        for m in MODELS:
            ids, vecs = own[m]
            index = g.index(m)
            _, found = index.search(vecs, 10)
            assert not set(found.ravel().tolist()) & set(ids.tolist())
        assert "person_1" not in {p.name for p in list_people(g)}
        with pytest.raises(PersonNotFoundError):
            forget(g, "person_1")
    # a fresh process sees the same: the saved index files hold none of the ids
    with open_gallery(tmp_path / "g") as g2:
        for m in MODELS:
            assert not set(g2.index(m).ids().tolist()) & set(own[m][0].tolist())
        assert check(g2).ok


@pytest.mark.parametrize("damage", ["delete", "garbage", "truncate"])
def test_damaged_index_is_rebuilt_with_same_results(tmp_path, folder, damage):
    query = person_image(2)  # person 0, photo 2
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=1)
        first = identify(g, [("q.jpg", jpeg_bytes(query))], models=["dlib"]).to_dict()
        path = g.index_path("dlib")
    if damage == "delete":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    else:
        path.write_bytes(path.read_bytes()[:50])
    with open_gallery(tmp_path / "g") as g:
        second = identify(g, [("q.jpg", jpeg_bytes(query))], models=["dlib"]).to_dict()
        assert second == first
        assert first["images"][0]["faces"][0]["models"]["dlib"]["identity"] == "person_0"
        assert check(g).ok


def test_stale_index_after_external_change_is_rebuilt(tmp_path, folder):
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=0)
    saved = (tmp_path / "g" / "indexes" / "dlib.faiss").read_bytes()
    with open_gallery(tmp_path / "g") as g:
        forget(g, "person_2")
    # put the old (stale) file back: its stamp no longer matches the database
    (tmp_path / "g" / "indexes" / "dlib.faiss").write_bytes(saved)
    with open_gallery(tmp_path / "g") as g:
        assert len(g.index("dlib")) == 6


def test_reindex_kinds(tmp_path, folder):
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=0)
        res = reindex(g, kind="flat")
        assert [(r.model, r.vectors, r.kind) for r in res] == [("dlib", 9, "flat")]


def test_weights_change_is_refused(tmp_path, folder):
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=0)
    store = {"dlib": FakeEmbedder("dlib", sha="0" * 64)}
    with open_gallery(tmp_path / "g", store) as g:
        with pytest.raises(WeightsMismatchError, match="made with weights"):
            enroll_folder(g, folder, models=["dlib"], augment=0)


def test_no_face_and_bad_files_are_skipped(tmp_path, folder):
    from PIL import Image

    Image.new("RGB", (100, 100), (120, 120, 120)).save(folder / "person_0" / "blank.png")
    (folder / "person_0" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "person_0" / "notes.txt").write_text("hello")
    (folder / "stray.jpg").write_bytes(b"x")
    (folder / "empty_person").mkdir()
    with open_gallery(tmp_path / "g") as g:
        rep = enroll_folder(g, folder, models=["dlib"], augment=0)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in ((s.path, s.reason) for s in rep.skipped)}
    assert reasons["blank.png"] == "no face detected"
    assert reasons["notes.txt"] == "not an image file extension"
    assert reasons["stray.jpg"] == "not inside a person folder"
    assert reasons["empty_person"] == "empty person folder"
    assert "broken.jpg" in reasons
    assert len(rep.enrolled) == 9


def test_vectors_stored_match_index(tmp_path, folder):
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=1)
        index = g.index("dlib")
        with g.session() as s:
            for ids, vecs in q.iter_vectors(s, "dlib"):
                for i, v in zip(ids, vecs):
                    np.testing.assert_allclose(index.reconstruct(int(i)), v, atol=1e-6)




def test_person_names_the_store_cannot_hold_are_skipped_with_a_reason(tmp_path):
    """Same answer on SQLite and PostgreSQL (which enforces VARCHAR(255)): checked before any write."""
    import os

    root = tmp_path / "people"
    longest = "a" * 255  # at the limit: accepted
    names = {"fine": "fine", "longest": longest}
    escaped = os.fsencode(root) + b"/" + b"\xff" * 70  # not UTF-8: stored as 280 characters of escapes
    tabbed = root / "tab\there"
    for folder in [root / "fine", root / longest, tabbed]:
        folder.mkdir(parents=True)
    os.mkdir(escaped)
    for n, folder in enumerate([root / "fine", root / longest, tabbed]):
        person_image(n + 1).save(folder / "1.jpg")
    person_image(9).save(os.fsdecode(escaped + b"/1.jpg"))
    with open_gallery(tmp_path / "g") as g:
        rep = enroll_folder(g, root, models=["dlib"], augment=0)
        assert sorted(p.name for p in list_people(g)) == sorted(names.values())
        reasons = sorted(s.reason for s in rep.skipped)
        assert reasons == ["person folder name contains control characters (such as NUL or a newline)",
                           "person folder name is 280 characters long (at most 255)"]
        assert check(g).ok


@pytest.mark.parametrize("case", [("   ", "blank"), ("x" * 256, "256 characters"), ("a\x00b", "control"),
                                  ("a\u2028b", "control")])
def test_uploads_for_a_name_the_store_cannot_hold_are_refused_in_one_line(tmp_path, case):
    import io

    name, reason = case

    from gallery.enroll.enroll import enroll_images
    from gallery.errors import InvalidInputError

    buf = io.BytesIO()
    person_image(1).save(buf, format="JPEG")
    with open_gallery(tmp_path / "g") as g:
        with pytest.raises(InvalidInputError, match=reason) as info:
            enroll_images(g, name, [("a.jpg", buf.getvalue())], models=["dlib"], augment=0)
        assert "\n" not in str(info.value)
        assert list_people(g) == []
