"""The photo library (issue 15): scan, clusters, name / move / unassign, find, forget, check, contact sheets.

The bookkeeping tests run on the fast fakes; the flow tests run the real pipeline (MTCNN + the real dlib weights)
on LFW photos and skip without the data.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import text

from cli.main import cli
from db import queries as q
from gallery.config import Settings
from gallery.errors import InvalidInputError
from gallery.library.clusters import list_clusters, update_clusters
from gallery.library.find import find_by_photo, find_person, make_album
from gallery.library.naming import assign_faces, merge_clusters, move_face, name_cluster, unassign_face
from gallery.library.scan import scan_library
from gallery.library.sheets import COLUMNS, HEADER, PAD, THUMB, write_contact_sheet
from gallery.manage.maintenance import check
from gallery.manage.people import forget, list_people
from gallery.recognize.identify import identify
from gallery.results import display
from gallery.store import Gallery
from tests.fakes import person_image
from tests.helpers import ForkServer, open_gallery

LFW = "lfw-deepfunneled"


def fake_library(root: Path) -> Path:
    """A folder tree of fake photos: nested folders, a non-image, a hidden file, a corrupt JPEG, a blank image."""
    (root / "2019" / "summer").mkdir(parents=True)
    (root / "2020").mkdir(parents=True)
    for i in range(3):
        person_image(i).save(root / "2019" / f"a{i}.jpg", quality=95)
        person_image(10 + i).save(root / "2019" / "summer" / f"b{i}.png")
        person_image(20 + i).save(root / "2020" / f"c {i} é.jpg", quality=95)
    (root / "2020" / "notes.txt").write_text("not a photo")
    (root / "2020" / ".hidden.jpg").write_bytes(b"\xff\xd8 hidden")
    (root / "2020" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    Image.new("RGB", (80, 80), (90, 90, 90)).save(root / "2020" / "blank.jpg")
    return root


def pattern(seed: int) -> Image.Image:
    """A picture whose fake vector (its 4x4 thumbnail) is far from every other seed's."""
    cells = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((120, 120), Image.Resampling.NEAREST)


def library_state(g: Gallery) -> dict[str, tuple]:
    """path -> (sha256, sorted face boxes, {model: sorted vectors}) of every library photo."""
    out = {}
    with g.session() as s:
        for path, photo_id in q.library_paths(s).items():
            faces = q.library_faces_of_photo(s, photo_id)
            vecs = q.library_vectors_of_faces(s, [f.id for f in faces])
            per_model: dict[str, list] = {}
            for f in faces:
                for m, (_, raw) in vecs.get(f.id, {}).items():
                    per_model.setdefault(m, []).append(np.frombuffer(raw, "<f4"))
            photo = q.library_photo_at(s, path)
            out[path] = (photo.sha256, sorted((round(f.x1, 2), round(f.y1, 2)) for f in faces),
                         {m: np.stack(v) for m, v in per_model.items()})
    return out


# -- bookkeeping, on the fakes ------------------------------------------------------------------------------------
def test_scan_is_incremental_and_handles_changes(tmp_path):
    lib = fake_library(tmp_path / "lib")
    with open_gallery(tmp_path / "g") as g:
        rep = scan_library(g, lib, models=["dlib"])
        assert len(rep.scanned) == 10  # 9 faces + the blank photo; broken.jpg skipped, hidden and .txt passed over
        assert rep.faces_added == 9 and rep.photos_without_face == 1
        assert [s.path for s in rep.skipped] == [str(lib / "2020" / "broken.jpg")]
        assert rep.other_files == 1
        assert g.index("dlib") is None  # library faces never enter identify's index
        assert len(g.index(q.library_key("dlib"))) == 9

        again = scan_library(g, lib, models=["dlib"])
        assert again.scanned == [] and again.unchanged == 10 and again.faces_added == 0

        person_image(99).save(lib / "2019" / "a0.jpg", quality=95)  # changed content
        (lib / "2020" / "c 1 é.jpg").unlink()  # deleted
        person_image(50).save(lib / "2020" / "new.jpg", quality=95)  # added
        rep = scan_library(g, lib, models=["dlib"])
        assert sorted(p.path for p in rep.scanned) == [str(lib / "2019" / "a0.jpg"), str(lib / "2020" / "new.jpg")]
        assert [p.replaced for p in sorted(rep.scanned, key=lambda p: p.path)] == [True, False]
        assert rep.removed == [str(lib / "2020" / "c 1 é.jpg")]
        assert len(g.index(q.library_key("dlib"))) == 9
        with g.session() as s:
            assert q.library_counts(s)["faces"] == 9
        assert check(g).ok


def test_scan_adds_a_missing_embedder_from_stored_faces(tmp_path):
    lib = fake_library(tmp_path / "lib")
    with open_gallery(tmp_path / "g") as g:
        scan_library(g, lib, models=["dlib"])
        calls = g.detector.calls
        rep = scan_library(g, lib, models=["dlib", "facenet"])
        assert g.detector.calls == calls  # the stored faces were used: nothing detected again
        assert rep.vectors_added == {"dlib": 0, "facenet": 9}
        assert len(g.index(q.library_key("facenet"))) == 9


def test_scan_embeds_again_what_other_weights_made(tmp_path):
    from tests.fakes import FakeEmbedder

    lib = fake_library(tmp_path / "lib")
    with open_gallery(tmp_path / "g") as g:
        scan_library(g, lib, models=["dlib"])
    with open_gallery(tmp_path / "g", store={"dlib": FakeEmbedder("dlib", sha="a" * 64)}) as g:
        calls = g.detector.calls
        rep = scan_library(g, lib, models=["dlib"])
        assert rep.vectors_added == {"dlib": 9} and g.detector.calls == calls
        with g.session() as s:
            assert q.weights_in_store(s, q.library_key("dlib")) == ("a" * 64,)
        assert len(g.index(q.library_key("dlib"))) == 9 and check(g).ok


def test_scan_rejects_a_missing_folder_and_keeps_the_library(tmp_path):
    lib = fake_library(tmp_path / "lib")
    with open_gallery(tmp_path / "g") as g:
        scan_library(g, lib, models=["dlib"])
        with pytest.raises(InvalidInputError, match="not a folder"):
            scan_library(g, tmp_path / "nowhere", models=["dlib"])
        with g.session() as s:
            assert q.library_counts(s)["faces"] == 9


def test_clusters_ids_are_stable_and_merge(tmp_path):
    """Re-clustering keeps ids; a new member joins its cluster; ids are never reused; merge moves faces."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in range(3):
        for i in range(3):  # near-identical pictures of one fake person: one cluster each
            pattern(p).save(lib / f"p{p}_{i}.jpg", quality=90 - 10 * i)
    with open_gallery(tmp_path / "g") as g:
        scan_library(g, lib, models=["dlib"])
        first = update_clusters(g, method="chinese-whispers")
        ids = sorted(c.id for c in first.clusters)
        assert len(ids) == 3 and first.new_ids == 3 and first.kept_ids == 0
        second = update_clusters(g, method="chinese-whispers")
        assert sorted(c.id for c in second.clusters) == ids and second.kept_ids == 3 and second.new_ids == 0
        pattern(0).save(lib / "p0_new.jpg", quality=85)
        scan_library(g, lib, models=["dlib"])
        third = update_clusters(g, method="chinese-whispers")
        sizes = {c.id: c.size for c in third.clusters}
        assert sorted(sizes) == ids and sorted(sizes.values()) == [3, 3, 4]
        merged = merge_clusters(g, ids[0], ids[1])
        assert merged.faces == sizes[ids[0]] + sizes[ids[1]]
        listed = list_clusters(g)
        assert {c.id: c.size for c in listed.clusters} == {ids[0]: merged.faces, ids[2]: sizes[ids[2]]}
        # the merge is remembered: clustering again (the two groups are far apart) keeps them together
        again = update_clusters(g, method="chinese-whispers")
        assert {c.id: c.size for c in again.clusters} == {ids[0]: merged.faces, ids[2]: sizes[ids[2]]}
        with pytest.raises(InvalidInputError, match="no cluster"):
            merge_clusters(g, ids[0], 9999)


def test_contact_sheet_is_a_png_with_one_tile_per_face(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(11):
        person_image(i).save(lib / f"{i}.jpg", quality=95)
    with open_gallery(tmp_path / "g") as g:
        scan_library(g, lib, models=["dlib"])
        with g.session() as s:
            faces = q.library_faces_where(s)
        path = write_contact_sheet(tmp_path / "sheets" / "c.png", 7, faces)
        capped = write_contact_sheet(tmp_path / "sheets" / "capped.png", 7, faces, max_thumbnails=5)
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    rows = -(-11 // COLUMNS)
    assert img.size == (PAD + COLUMNS * (THUMB + PAD), HEADER + PAD + rows * (THUMB + PAD))
    arr = np.asarray(img.convert("L"))
    tiles = [arr[HEADER + PAD + r * (THUMB + PAD):][:THUMB, PAD + c * (THUMB + PAD):][:, :THUMB]
             for r in range(rows) for c in range(COLUMNS)]
    assert sum(t.std() > 1 for t in tiles) == 11  # 11 face tiles, 5 white cells
    assert Image.open(capped).size == (PAD + 5 * (THUMB + PAD), HEADER + PAD + THUMB + PAD)


def test_a_version_1_gallery_is_upgraded(tmp_path):
    home = tmp_path / "g"
    with open_gallery(home) as g:
        g.create()
    with Gallery(Settings(home=home, progress=False)) as g, g.engine.begin() as conn:
        for table in ("library_embeddings", "library_faces", "library_photos"):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    lib = fake_library(tmp_path / "lib")
    with open_gallery(home) as g:
        assert scan_library(g, lib, models=["dlib"]).faces_added == 9
        with g.session() as s:
            assert s.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == "2"


def test_cli_library_commands_give_one_line_errors(tmp_path):
    runner = CliRunner()
    home = str(tmp_path / "g")
    r = runner.invoke(cli, ["--gallery", home, "find"])
    assert r.exit_code == 2 and "give a NAME or --photo" in r.output
    r = runner.invoke(cli, ["--gallery", home, "clusters"])
    assert r.exit_code == 1 and "no gallery at" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["--gallery", home, "scan", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "not a folder" in r.output


# -- the real pipeline on LFW -------------------------------------------------------------------------------------
ENROLLED = {"Colin_Powell": (1, 2, 3), "Tony_Blair": (1, 2, 3)}
LIBRARY = {"Colin_Powell": (1, 4, 5, 6), "Tony_Blair": (4, 5, 6), "Serena_Williams": (1, 2, 3, 4),
           "Hugo_Chavez": (1, 2, 3, 4)}


def _copy(lfw: Path, person: str, n: int, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lfw / LFW / person / f"{person}_{n:04d}.jpg", dest)
    return dest


@pytest.fixture
def real(tmp_path, lfw_dir):
    people = tmp_path / "people"
    for person, numbers in ENROLLED.items():
        for n in numbers:
            _copy(lfw_dir, person, n, people / person / f"{n}.jpg")
    lib = tmp_path / "library"
    for i, (person, numbers) in enumerate(LIBRARY.items()):
        for n in numbers:  # a tree with no per-person layout; file names say nothing
            _copy(lfw_dir, person, n, lib / f"roll{i % 2}" / f"{person[:2]}{n}" / f"IMG_{i}{n:02d}.jpg")
    g = Gallery(Settings(home=tmp_path / "g", progress=False))
    from gallery.enroll.enroll import enroll_folder

    enroll_folder(g, people, models=["dlib"], augment=0)
    yield g, lib
    g.close()


def _names(report) -> set[str]:
    return {Path(p.path).parent.name for p in report.photos}


def test_real_library_scan_find_name_forget(real, lfw_dir):
    g, lib = real
    rep = scan_library(g, lib, models=["dlib"])
    assert rep.faces_added >= 15 and not rep.skipped
    assert rep.from_references == 1  # Colin_Powell_0001 is also an enrolled reference photo
    people = {p.name: p for p in list_people(g)}
    assert people["Colin_Powell"].photos == 3 and people["Colin_Powell"].library == 1
    assert people["Colin_Powell"].suggested >= 3 and people["Tony_Blair"].suggested >= 3

    # find lists exactly the person's photos, best first
    assert _names(find_person(g, "Colin_Powell")) == {"Co1", "Co4", "Co5", "Co6"}
    assert _names(find_person(g, "Tony_Blair")) == {"To4", "To5", "To6"}
    hugo = find_by_photo(g, lfw_dir / LFW / "Hugo_Chavez" / "Hugo_Chavez_0010.jpg")
    assert _names(hugo) == {"Hu1", "Hu2", "Hu3", "Hu4"}
    scores = [p.score for p in hugo.photos]
    assert scores == sorted(scores, reverse=True)
    album = make_album(find_person(g, "Tony_Blair"), g.settings.home / "album")
    links = sorted(os.listdir(album.album))
    assert album.album_files == 3 and links[0].startswith("001_") and all(
        os.path.islink(Path(album.album) / n) for n in links)

    # the unknown people form clusters of their own; naming one enrolls it and identify names a new photo
    clusters = update_clusters(g)
    with g.session() as s:
        members = {c.id: {Path(p.path).parent.name[:2] for f, p in q.library_faces_where(s, cluster_id=c.id)}
                   for c in clusters.clusters}
    serena = [c for c in clusters.clusters if members[c.id] == {"Se"} and c.size >= 3]
    assert serena, f"no pure Serena cluster: {members}"
    named = name_cluster(g, serena[0].id, "Serena Williams")
    assert named.new_person and named.enrolled == serena[0].size
    probe = lfw_dir / LFW / "Serena_Williams" / "Serena_Williams_0010.jpg"
    answer = identify(g, [probe], models=["dlib"]).images[0].faces[0].models["dlib"]
    assert answer.identity == "Serena Williams"
    assert {c.id for c in list_clusters(g, min_size=1).clusters}.isdisjoint({serena[0].id})

    # unassign and move correct mistakes: the enrolled copy goes with the assignment
    face = named.faces[0]
    undone = unassign_face(g, face)
    assert undone.person == "Serena Williams" and undone.enrolled_removed
    assert {p.name: p.photos for p in list_people(g)}["Serena Williams"] == serena[0].size - 1
    moved = move_face(g, named.faces[1], "Tony_Blair")
    assert moved.moved_from == {named.faces[1]: "Serena Williams"} and not moved.new_person
    move_face(g, named.faces[1], "Serena Williams")
    with pytest.raises(InvalidInputError, match="no library face"):
        assign_faces(g, [10**9], "Serena Williams")

    # forget erases the library faces assigned to or suggested for the person; check covers the library
    before = library_state(g)
    report = forget(g, "Serena Williams")
    assert report.library_faces >= serena[0].size - 1
    with g.session() as s:
        left = {f.id for f, _ in q.library_faces_where(s)}
    assert not set(named.faces[1:]) & left
    assert len(library_state(g)) == len(before)  # the photos stay in the library; only the faces go
    assert check(g).ok
    again = scan_library(g, lib, models=["dlib"])  # unchanged files: the erased faces do not come back
    assert again.faces_added == 0


def test_cli_scan_clusters_find_json(real):
    g, lib = real
    runner = CliRunner()
    home = str(g.settings.home)
    g.close()
    r = runner.invoke(cli, ["--gallery", home, "-q", "scan", str(lib), "--model", "dlib", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["faces_added"] >= 15
    r = runner.invoke(cli, ["--gallery", home, "-q", "clusters", "--json", "--sheet", str(Path(home) / "sheets")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["clusters"] and all(Image.open(io.BytesIO(Path(c["sheet"]).read_bytes())).format == "PNG"
                                   for c in doc["clusters"])
    r = runner.invoke(cli, ["--gallery", home, "-q", "find", "Tony_Blair", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["photos"]) == 3
    r = runner.invoke(cli, ["--gallery", home, "-q", "find", "Nobody"])
    assert r.exit_code == 1 and "no person named" in r.output


def test_scan_survives_sigkill(tmp_path, lfw_dir):
    """A scan killed at random moments loses nothing committed; check passes after each kill; re-scans finish
    to exactly the state of a clean scan."""
    lib = tmp_path / "lib"
    for person, numbers in {"Colin_Powell": (1, 2, 3), "Hugo_Chavez": (1, 2, 3), "Tony_Blair": (1, 2)}.items():
        for n in numbers:
            _copy(lfw_dir, person, n, lib / person[:4] / f"{n}.jpg")
    seed = int(os.environ.get("FACEGALLERY_CRASH_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    server = ForkServer(chunk=2)
    try:
        argv = lambda home: ["--gallery", home, "-q", "scan", lib, "--model", "dlib", "--json"]  # noqa: E731
        clean_home = tmp_path / "clean"
        times = []
        for run in range(2):  # the first run also pays for cold file caches: kill moments follow the faster one
            shutil.rmtree(clean_home, ignore_errors=True)
            t0 = time.monotonic()
            killed, code = server.run(argv(clean_home), tmp_path / "clean.out")
            times.append(time.monotonic() - t0)
            assert not killed and code == 0, (tmp_path / "clean.out.err").read_text()
        took = min(times)
        with Gallery(Settings(home=clean_home, progress=False)) as g:
            clean = library_state(g)
        assert len(clean) == 8
        home = tmp_path / "killed"
        kills = rounds = 0
        for attempt in range(16):  # kill moments uniform over a clean run; a run that completes starts a round
            killed, code = server.run(argv(home), tmp_path / f"run{attempt}.out",
                                      kill_after=rng.uniform(0.05, 0.8) * took)
            if (home / "gallery.sqlite").exists():
                with Gallery(Settings(home=home, progress=False)) as g:
                    assert check(g).ok, f"seed {seed}: check failed after kill {attempt}"
                    now = library_state(g)
                for path, (sha, boxes, vecs) in now.items():
                    assert path in clean, f"seed {seed}"
                    assert (sha, boxes) == clean[path][:2], f"seed {seed}: {path}"
            kills += killed
            if not killed:
                assert code == 0 and set(now) == set(clean), f"seed {seed}"
                shutil.rmtree(home)
                rounds += 1
        killed, code = server.run(argv(home), tmp_path / "final.out")
        assert not killed and code == 0
        with Gallery(Settings(home=home, progress=False)) as g:
            final = library_state(g)
            assert check(g).ok
        assert set(final) == set(clean), f"seed {seed}"
        for path, (sha, boxes, vecs) in final.items():
            assert (sha, boxes) == clean[path][:2]
            for m, v in vecs.items():  # the torch engine's sums may reorder with another batch: 1e-5
                np.testing.assert_allclose(v, clean[path][2][m], atol=1e-5)
        assert kills >= 4, f"seed {seed}: only {kills} run(s) were killed"
        assert not [p for p in (home / "indexes").iterdir() if ".tmp" in p.name]
    finally:
        server.close()


def test_scan_over_the_bad_input_corpus(tmp_path, lfw_dir, monkeypatch):
    """Every awkward file of the bad-input corpus (tests/test_bad_inputs.py) is scanned or skipped with the reason
    enroll gives, through the real CLI, and what the library held before is untouched."""
    import cli.commands_library as commands
    from tests.helpers import fake_opener
    from tests.test_bad_inputs import GOOD, NO_FACE, build_corpus

    monkeypatch.setattr(commands, "open_gallery", fake_opener({}))
    root = tmp_path / "corpus"
    items = build_corpus(root, lfw_dir)
    home = str(tmp_path / "g")
    runner = CliRunner()
    try:
        before_lib = fake_library(tmp_path / "before")
        assert runner.invoke(cli, ["--gallery", home, "-q", "scan", str(before_lib), "--model", "dlib"]).exit_code == 0
        with Gallery(Settings(home=Path(home), progress=False)) as g:
            before = library_state(g)
        r = runner.invoke(cli, ["--gallery", home, "-q", "scan", str(root), "--model", "dlib", "--json"])
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
        doc = json.loads(r.output)
        skipped = {s["path"]: s["reason"] for s in doc["skipped"]}
        scanned = {p["path"]: p["faces"] for p in doc["scanned"]}
        passed_over = ("hidden file", "not an image file extension", "empty person folder",
                       "is a directory (nested folders are not enrolled)")
        for it in items:
            where = it.shown(root)
            if it.reason in passed_over:
                assert where not in skipped and where not in scanned, it.kind
            elif it.reason in (GOOD, NO_FACE, "not inside a person folder"):
                assert where in scanned, f"{it.kind}: {skipped.get(where)}"
            elif it.kind == "symlink to /dev/zero":
                assert "out of the library folder" in skipped[where]
            else:
                assert skipped.get(where) == it.reason, f"{it.kind}: {where} -> {skipped.get(where)!r}"
        assert scanned[str(root / "Broken" / "no_face.png")] == 0
        with Gallery(Settings(home=Path(home), progress=False)) as g:
            after = library_state(g)
            assert check(g).ok
        for path, (sha, boxes, vecs) in before.items():
            assert after[path][:2] == (sha, boxes) and all(np.array_equal(v, after[path][2][m])
                                                           for m, v in vecs.items())
        again = json.loads(runner.invoke(cli, ["--gallery", home, "-q", "scan", str(root), "--model", "dlib",
                                               "--json"]).output)
        assert again["scanned"] == [] and again["unchanged"] == len(scanned)
        latin = os.path.join(os.fsencode(root), b"Alice/\xff\xfe latin-1 \xe9.jpg")  # a non-UTF-8 name, deleted
        os.unlink(latin)
        gone = json.loads(runner.invoke(cli, ["--gallery", home, "-q", "scan", str(root), "--model", "dlib",
                                              "--json"]).output)
        assert gone["removed"] == [display(latin)]
    finally:
        os.chmod(os.path.join(root, "Broken", "unreadable.jpg"), 0o644)


def test_reembed_reads_named_faces_from_their_library_photos(tmp_path):
    """A face named from the library is enrolled as ``<photo>#face<id>``; reembed re-reads that library photo."""
    from gallery.enroll.reembed import reembed
    from gallery.enroll.scan import reference_path, source_key
    from tests.fakes import FakeEmbedder

    lib = fake_library(tmp_path / "lib")
    with open_gallery(tmp_path / "g") as g:
        scan_library(g, lib, models=["dlib"])
        with g.session() as s:
            face, photo = q.library_faces_where(s)[0]
        assert move_face(g, face.id, "Ann").enrolled == 1
        assert source_key(reference_path(photo.path, face.id)) == photo.path
    with open_gallery(tmp_path / "g", store={"dlib": FakeEmbedder("dlib", sha="b" * 64)}) as g:
        (r,) = reembed(g, ["dlib"]).reembedded
        assert (r.photos, r.vectors, r.skipped) == (1, 1, ())
        with g.session() as s:
            assert q.weights_in_store(s, "dlib") == ("b" * 64,)
        with pytest.raises(InvalidInputError, match="other weights.*scan on the library again"):
            find_person(g, "Ann")  # library vectors of the old weights are never compared with the new ones
        scan_library(g, lib, models=["dlib"])
        assert [p.face_id for p in find_person(g, "Ann").photos if p.assigned] == [face.id]


def test_unassign_after_the_library_folder_was_renamed(tmp_path):
    """A named face whose folder is renamed is found again (same bytes, same box) and stays named; unassigning the
    new face removes the enrolled copy made under the old path, so it is not assigned again."""
    lib = fake_library(tmp_path / "lib")
    with open_gallery(tmp_path / "g") as g:
        scan_library(g, lib, models=["dlib"])
        with g.session() as s:
            face, _ = next((f, p) for f, p in q.library_faces_where(s) if "/2019/a0" in p.path)
        move_face(g, face.id, "Ann")
        (lib / "2019").rename(lib / "2018")
        rep = scan_library(g, lib, models=["dlib"])
        assert rep.from_references == 1  # the renamed photo's face: assigned to Ann again
        with g.session() as s:
            (new, _), = [(f, p) for f, p in q.library_faces_where(s, person_id=q.person_by_name(s, "Ann").id)]
        assert new.id != face.id
        undone = unassign_face(g, new.id)
        assert undone.person == "Ann" and undone.enrolled_removed
        assert {p.name: p.photos for p in list_people(g)}["Ann"] == 0
        with g.session() as s:
            assert q.library_faces(s, [new.id])[new.id][0].person_id is None  # the refresh did not assign it again
        assert check(g).ok
