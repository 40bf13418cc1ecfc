"""Reliability, round 2 (issue 14): poisoned weights, a damaged database, a lost database, colliding paths,
unfinished erasure, Unicode names and the smaller defects. Each test reproduces a probe of the issue.

Fast fakes stand in for the detector and the embedders (tests/fakes.py) behind the real CLI, SQLite and FAISS; the
weights tests build the real FaceNet architecture with random weights.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from db import queries as q
from gallery.config import Settings
from gallery.enroll.enroll import enroll_folder
from gallery.errors import GalleryDamagedError, NoGalleryError
from gallery.manage.maintenance import check
from gallery.manage.people import forget, list_people
from gallery.store import Gallery
from tests.fakes import FakeDetector, FakeEmbedder, fake_factory, person_image

GREEN = (0, 255, 0)


class PoisonEmbedder(FakeEmbedder):
    """A fake embedder whose vector is NaN for crops that are green in their top-left corner (a "poisoned"
    photo), as weights holding a NaN make for every photo."""

    def embed_crops(self, crops, batch_size: int = 32):
        out = super().embed_crops(crops, batch_size)
        for i, c in enumerate(crops):
            r, g, b = c.convert("RGB").getpixel((0, 0))
            if g > 200 and r < 60 and b < 60:
                out[i] = np.nan
        return out


def poison_factory(store: dict | None = None):
    store = {} if store is None else store

    def factory(name, **_kw):
        if name not in store:
            store[name] = PoisonEmbedder(name)
        return store[name]

    return factory


def open_gallery(home: Path, factory=None, **kw) -> Gallery:
    return Gallery(Settings(home=home, progress=False), detector=FakeDetector(),
                   embedder_factory=factory or fake_factory(), **kw)


def make_people(root: Path, people=("Ann", "Bob", "Cy"), photos=2) -> Path:
    for p, name in enumerate(people):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(photos):
            person_image(p * 100 + i).save(root / name / f"{i}.jpg", quality=95)
    return root


def poisoned_image(seed: int):
    img = person_image(seed)
    w, h = img.size
    img.paste(GREEN, (0, 0, int(w * 0.3), int(h * 0.3)))
    return img


@pytest.fixture
def fake_cli(monkeypatch):
    """The real CLI with the fake detector/embedders behind every command that opens a gallery."""
    import cli.commands_core
    import cli.commands_more
    import cli.commands_store
    from cli.main import settings_of

    store: dict = {}

    def opener(ctx, **overrides):  # as cli.main.open_gallery: never creates a gallery
        settings = settings_of(ctx)
        return Gallery(settings.with_(**overrides) if overrides else settings, detector=FakeDetector(),
                       embedder_factory=poison_factory(store), create=False)

    for module in (cli.commands_core, cli.commands_more, cli.commands_store):
        monkeypatch.setattr(module, "open_gallery", opener)
    return store


def run(home: Path, *args, code=0):
    res = CliRunner().invoke(cli, ["--gallery", str(home), "-q", *map(str, args)])
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == code, (args, res.output)
    return res


def embedding_rows(home: Path) -> list[tuple[int, bytes]]:
    conn = sqlite3.connect(home / "gallery.sqlite")
    try:
        return conn.execute("SELECT id, vector FROM embeddings ORDER BY id").fetchall()
    finally:
        conn.close()


def nan_rows(home: Path) -> list[int]:
    return [i for i, raw in embedding_rows(home) if not np.isfinite(np.frombuffer(raw, "<f4")).all()]


# -- 1. weights holding NaN ------------------------------------------------------------------------------------------
@pytest.fixture
def nan_weights(tmp_path, monkeypatch) -> Path:
    import torch

    from indexer.embedders import create_embedder
    from indexer.embedders.weights import OFFLINE_ENV, WEIGHTS_ENV

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    state = {k: v.clone() for k, v in create_embedder("facenet", weights="random").load().state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[key].view(-1)[3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    return path


def test_models_import_refuses_weights_holding_nan(nan_weights, tmp_path):
    res = CliRunner().invoke(cli, ["models", "import", "--model", "facenet", str(nan_weights)])
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith(f"Error: {nan_weights} holds 1 NaN or infinite value(s) in ")
    assert res.stderr.endswith(": refusing these weights\n")
    assert not (tmp_path / "weights" / "facenet-vggface2.pt").exists()


def test_loading_weights_holding_nan_is_refused(nan_weights, tmp_path):
    """An explicit file (or one copied into the weights dir by hand) is checked at load too."""
    folder = make_people(tmp_path / "people", people=("Ann",), photos=1)
    res = CliRunner().invoke(cli, ["--gallery", str(tmp_path / "g"), "--weights", f"facenet={nan_weights}", "-q",
                                   "enroll", str(folder), "--model", "facenet", "--augment", "0",
                                   "--whole-image-fallback"])
    assert res.exit_code == 1 and "NaN or infinite value(s)" in res.stderr, res.output
    assert res.stderr.count("\n") == 1


def test_a_poisoned_photo_is_skipped_and_the_rest_of_its_chunk_commits(tmp_path):
    folder = make_people(tmp_path / "people")
    poisoned_image(1).save(folder / "Bob" / "1.jpg", quality=95)  # the 4th of 6 photos: mid-chunk
    with open_gallery(tmp_path / "g", poison_factory()) as g:
        rep = enroll_folder(g, folder, models=["dlib"], augment=1)
        assert [(Path(s.path).parent.name, Path(s.path).name) for s in rep.skipped] == [("Bob", "1.jpg")]
        assert rep.skipped[0].reason == "the dlib embedding holds NaN or infinity (check the dlib weights)"
        assert len(rep.enrolled) == 5 and rep.embeddings_added == {"dlib": 10}
        assert check(g).ok
    assert nan_rows(tmp_path / "g") == [] and len(embedding_rows(tmp_path / "g")) == 10


def test_verify_with_nan_vectors_is_an_error_not_a_similarity(tmp_path, fake_cli):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    poisoned_image(1).save(a)
    person_image(2).save(b)
    res = run(tmp_path / "g", "verify", a, b, "--model", "dlib", code=1)
    assert res.stderr == ("Error: the dlib embedding holds NaN or infinity: no similarity can be computed; check "
                          "the dlib weights\n")
    assert "nan" not in res.stdout


def _poison_row(home: Path, person: str) -> int:
    """Write NaN into one stored vector of ``person``, as the old enroll committed them."""
    with open_gallery(home) as g, g.session() as s:
        emb_id = int(q.embedding_ids(s, "dlib", q.person_by_name(s, person).id)[0])
    conn = sqlite3.connect(home / "gallery.sqlite")
    with conn:
        conn.execute("UPDATE embeddings SET vector = ? WHERE id = ?", (np.full(48, np.nan, "<f4").tobytes(), emb_id))
    conn.close()
    return emb_id


@pytest.mark.parametrize("victim", ["Bob", "Ann"])  # the bad vector's owner, or someone else
def test_a_nan_row_in_the_database_cannot_stop_forget_and_check_repairs_it(tmp_path, fake_cli, victim):
    home = tmp_path / "g"
    run(home, "enroll", make_people(tmp_path / "people"), "--model", "dlib", "--augment", "1")
    bad = _poison_row(home, "Bob")
    for f in (home / "indexes").glob("*.faiss"):
        f.unlink()  # the index is rebuilt from the database, NaN row included
    res = run(home, "check", code=1)
    assert f"problem: dlib: embedding {bad} (person 'Bob', photo " in res.stdout
    assert "holds NaN or infinity: facegallery check --repair deletes it" in res.stdout
    doc = json.loads(run(home, "forget", victim, "--yes", "--json").stdout)
    assert doc["photos"] == 2
    assert victim not in [p["name"] for p in json.loads(run(home, "people", "--json").stdout)["people"]]
    if victim == "Bob":
        assert nan_rows(home) == []
        run(home, "check")
        return
    res = run(home, "check", "--repair")
    assert "note: repaired: deleted 1 unusable dlib vector(s)" in res.stdout and res.stdout.endswith("OK\n")
    assert nan_rows(home) == []
    run(home, "check")


# -- 2. a damaged database -------------------------------------------------------------------------------------------
def _corrupt(path: Path) -> None:
    """16 bytes written over the header of a b-tree page in the middle of the file (the probe's damage)."""
    size = path.stat().st_size
    page = 4096
    assert size >= 6 * page, size
    with open(path, "r+b") as fh:
        fh.seek((size // page // 2) * page)
        fh.write(b"\xa5" * 16)


def _enrolled(tmp_path, fake_cli_unused=None, people=("Ann", "Bob", "Cy"), photos=4) -> Path:
    home = tmp_path / "g"
    run(home, "enroll", make_people(tmp_path / "people", people, photos), "--model", "dlib", "--augment", "3")
    return home


def test_check_reports_a_malformed_sqlite_file(tmp_path, fake_cli):
    home = _enrolled(tmp_path, people=tuple(f"P{i}" for i in range(12)))
    run(home, "check")
    _corrupt(home / "gallery.sqlite")
    res = run(home, "check", code=1)
    assert "problem: database: " in res.stdout and res.stdout.endswith("PROBLEMS FOUND\n")
    assert "note: the database file is damaged" in res.stdout
    full = json.loads(run(home, "check", "--full", "--json", code=1).stdout)
    assert not full["ok"] and all(p.startswith("database: ") for p in full["problems"])
    res = run(home, "reindex", code=1)  # it rebuilds from the database: it cannot repair it, and says so
    assert res.stderr.startswith("Error: the database file is damaged (") and "reindex cannot repair it" in res.stderr
    for name in ("P3", "P9"):  # whatever the damage meets, one line that says what happened
        res = run(home, "forget", name, "--yes", code=1)
        assert res.stderr.startswith("Error: ") and "unexpected" not in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1


def test_backup_and_restore_round_trip(tmp_path, fake_cli):
    home = _enrolled(tmp_path)
    people = run(home, "people", "--json").stdout
    with open_gallery(home) as reader:  # a reader with an open connection during the backup
        reader.index("dlib")
        doc = json.loads(run(home, "backup", tmp_path / "b.sqlite", "--json").stdout)
    assert doc["counts"] == {"people": 3, "photos": 12, "embeddings": 48}
    run(home, "backup", tmp_path / "b.sqlite", code=1)  # never overwrites by accident
    run(home, "forget", "Bob", "--yes")
    res = run(home, "restore", tmp_path / "b.sqlite", code=1)
    assert "is not empty (2 people): restore --force replaces it" in res.stderr
    doc = json.loads(run(home, "restore", tmp_path / "b.sqlite", "--force", "--json").stdout)
    assert doc["counts"]["people"] == 3
    assert run(home, "people", "--json").stdout == people
    run(home, "check")
    query = tmp_path / "q.jpg"
    person_image(101).save(query)
    ident = json.loads(run(home, "identify", query, "--model", "dlib", "--json").stdout)
    assert ident["images"][0]["faces"][0]["models"]["dlib"]["identity"] == "Bob"


def test_a_damaged_database_is_salvaged_and_restored(tmp_path, fake_cli):
    home = _enrolled(tmp_path, people=tuple(f"P{i}" for i in range(12)))
    _corrupt(home / "gallery.sqlite")
    run(home, "check", code=1)
    doc = json.loads(run(home, "salvage", tmp_path / "saved.sqlite", "--json").stdout)
    assert doc["counts"]["people"] >= 1 and doc["method"]
    run(home, "restore", tmp_path / "saved.sqlite", code=1)  # the damaged gallery counts as not empty
    run(home, "restore", tmp_path / "saved.sqlite", "--force")
    run(home, "check")


def test_backup_of_a_postgres_gallery_points_at_pg_dump(tmp_path):
    from gallery.errors import GalleryError
    from gallery.manage.backup import restore

    settings = Settings(home=tmp_path / "g", db_url="postgresql+psycopg://u:secret@db.example/gallery")
    with pytest.raises(GalleryError, match=r"pg_dump --format=custom .*u:\*\*\*@db.example"):
        restore(settings, tmp_path / "x.sqlite")


# -- 3. a lost database is not a new gallery -------------------------------------------------------------------------
def test_a_zero_length_database_beside_index_files_is_an_error(tmp_path, fake_cli):
    home = _enrolled(tmp_path)
    (home / "gallery.sqlite").write_bytes(b"")
    for side in ("-wal", "-shm"):
        (home / f"gallery.sqlite{side}").unlink(missing_ok=True)
    query = tmp_path / "q.jpg"
    person_image(101).save(query)
    for args in (["check"], ["people"], ["identify", query, "--model", "dlib"],
                 ["enroll", tmp_path / "people", "--model", "dlib"]):
        res = run(home, *args, code=1)
        assert res.stderr.startswith(f"Error: the gallery database {home / 'gallery.sqlite'} is empty (0 bytes), "
                                     f"but {home} shows past content (indexes/dlib.faiss, gallery.lock)"), res.stderr
        assert "facegallery restore BACKUP" in res.stderr and res.stderr.count("\n") == 1
    assert (home / "gallery.sqlite").stat().st_size == 0  # nothing was created over it
    with pytest.raises(GalleryDamagedError):
        open_gallery(home)
    res = run(home, "init", code=0 if False else 1)
    assert "shows past content" in res.stderr
    assert run(home, "init", "--force").stdout.startswith(f"Created {home}; deleted indexes/dlib.faiss")
    assert run(home, "people", "--json").stdout.strip() == '{\n  "people": []\n}'


def test_readers_never_create_a_gallery(tmp_path, fake_cli):
    home = tmp_path / "nothing"
    query = tmp_path / "q.jpg"
    person_image(1).save(query)
    for args in (["people"], ["check"], ["identify", query], ["forget", "Ann", "--yes"], ["reindex"],
                 ["backup", tmp_path / "b.sqlite"]):
        res = run(home, *args, code=1)
        assert res.stderr == f"Error: no gallery at {home}: enroll people first or run facegallery init\n", args
    assert not home.exists()
    with pytest.raises(NoGalleryError):
        list_people(open_gallery(home, create=False))
    assert run(home, "init").stdout == f"Created {home}\n"
    assert run(home, "init").stdout == f"A gallery already exists at {home}\n"
    run(home, "check")


def test_forget_library_call_still_works_after_a_reopen(tmp_path):
    folder = make_people(tmp_path / "people")
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=0)
    with open_gallery(tmp_path / "g", create=False) as g:
        forget(g, "Ann")
        assert [p.name for p in list_people(g)] == ["Bob", "Cy"]


# -- 4. two file names, one stored path -----------------------------------------------------------------------------
def _colliding(root: Path) -> tuple[Path, Path]:
    """A raw non-UTF-8 byte name and its escaped spelling, side by side (``display`` maps both to P/\\xff.jpg)."""
    folder = root / "P"
    folder.mkdir(parents=True)
    raw = Path(os.fsdecode(os.path.join(os.fsencode(folder), b"\xff.jpg")))
    escaped = folder / "\\xff.jpg"
    person_image(1).save(raw, format="JPEG")
    person_image(2).save(escaped, format="JPEG")
    return raw, escaped


def test_two_names_with_one_display_form_are_two_photos(tmp_path, fake_cli):
    raw, escaped = _colliding(tmp_path / "people")
    person_image(3).save(tmp_path / "people" / "P" / "z.jpg")  # a later photo of the run
    home = tmp_path / "g"
    doc = json.loads(run(home, "enroll", tmp_path / "people", "--model", "dlib", "--augment", "0", "--json").stdout)
    assert doc["skipped"] == [] and len(doc["enrolled"]) == 3
    again = json.loads(run(home, "enroll", tmp_path / "people", "--model", "dlib", "--augment", "0", "--json").stdout)
    assert again["unchanged"] == 3 and again["enrolled"] == []  # no swapping on a re-run
    from gallery.enroll.scan import key_path

    with open_gallery(home) as g, g.session() as s:
        stored = sorted(q.photos_of(s, q.person_by_name(s, "P").id))
    assert sorted(key_path(p) for p in stored) == sorted([raw, escaped, tmp_path / "people" / "P" / "z.jpg"])
    assert any(p.startswith("fs:") and p.endswith("/P/%FF.jpg") for p in stored)


def test_a_gallery_that_stored_the_lossy_name_moves_it_without_a_duplicate(tmp_path, fake_cli):
    raw, escaped = _colliding(tmp_path / "people")
    escaped.unlink()
    home = tmp_path / "g"
    run(home, "enroll", tmp_path / "people", "--model", "dlib", "--augment", "0")
    conn = sqlite3.connect(home / "gallery.sqlite")  # as an older version stored it: the display form
    with conn:
        conn.execute("UPDATE photos SET path = ?", (str(tmp_path / "people" / "P" / "\\xff.jpg"),))
    conn.close()
    doc = json.loads(run(home, "enroll", tmp_path / "people", "--model", "dlib", "--augment", "0", "--json").stdout)
    assert len(doc["enrolled"]) == 1 and doc["skipped"] == []
    with open_gallery(home) as g, g.session() as s:
        assert [p.startswith("fs:") for p in q.photos_of(s, q.person_by_name(s, "P").id)] == [True]
    run(home, "check")


def test_a_database_error_on_one_photo_is_a_skipped_photo_and_the_run_goes_on(tmp_path, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    import gallery.enroll.enroll as enroll_module

    real = q.add_photo_with_face

    def refusing(s, person, *, path, **kw):
        if path.endswith("/Bob/0.jpg"):
            raise IntegrityError("INSERT INTO photos ...", {}, Exception("UNIQUE constraint failed: photos.path"))
        return real(s, person, path=path, **kw)

    monkeypatch.setattr(enroll_module.q, "add_photo_with_face", refusing)
    folder = make_people(tmp_path / "people")
    with open_gallery(tmp_path / "g") as g:
        rep = enroll_folder(g, folder, models=["dlib"], augment=0)
        assert [(Path(x.path).parent.name, Path(x.path).name) for x in rep.skipped] == [("Bob", "0.jpg")]
        assert rep.skipped[0].reason == ("the database refused the write (Exception: UNIQUE constraint failed: "
                                         "photos.path); nothing of it was stored")
        assert len(rep.enrolled) == 5 and rep.embeddings_added == {"dlib": 5}
        assert sorted((p.name, p.photos) for p in list_people(g)) == [("Ann", 2), ("Bob", 1), ("Cy", 2)]
        assert check(g).ok


def test_two_uploads_with_one_name_are_not_a_database_error(tmp_path):
    from gallery.enroll.enroll import enroll_images

    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    person_image(1).save(a)
    person_image(2).save(b)
    with open_gallery(tmp_path / "g") as g:
        rep = enroll_images(g, "Ann", [("photo.jpg", a.read_bytes()), ("photo.jpg", b.read_bytes())],
                            models=["dlib"], augment=0)
        assert len(rep.enrolled) == 1
        assert [(x.path, x.reason) for x in rep.skipped] == [
            ("upload:photo.jpg", "same stored path as another photo of Ann in this run")]


# -- 5. a killed forget is finished --------------------------------------------------------------------------------
#: Runs the console script's entry point with the step after the delete's commit replaced by SIGKILL: the process
#: dies right after the delete commits, before any index file, head or database page is rewritten.
KILLED_FORGET = """
import os, signal, sys
from gallery.store import Gallery
Gallery.save_indexes = lambda self: os.kill(os.getpid(), signal.SIGKILL)
from cli.main import main
sys.argv = ["facegallery", *sys.argv[1:]]
main()
"""


def killed_forget(home: Path, name: str, extra_env: dict | None = None) -> None:
    import subprocess
    import sys

    env = {**os.environ, **(extra_env or {})}
    res = subprocess.run([sys.executable, "-c", KILLED_FORGET, "--gallery", str(home), "-q", "forget", name, "--yes"],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, timeout=300)
    assert res.returncode == -9, res.stderr.decode()


def gallery_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


@pytest.mark.parametrize("finisher", [("forget", "--finish"), ("forget", "Bob Gone", "--yes"), ("enroll",)])
def test_a_killed_forget_is_finished_by_the_next_writer(tmp_path, fake_cli, finisher):
    home = tmp_path / "g"
    folder = make_people(tmp_path / "people", ("Ann", "Bob Gone", "Cy"))
    run(home, "enroll", folder, "--model", "dlib", "--augment", "2")
    with open_gallery(home) as g, g.session() as s:
        _, vecs = q.vectors_of_person(s, "dlib", q.person_by_name(s, "Bob Gone").id)
    needles = [q.vector_to_bytes(v) for v in vecs] + [b"Bob Gone"]
    shutil.rmtree(folder / "Bob Gone")
    killed_forget(home, "Bob Gone")
    left = [n for n in needles if n in gallery_bytes(home)]
    assert len(left) == len(needles), "the kill should leave their vectors (index file) and name (database)"
    assert "Bob Gone" not in run(home, "people").stdout  # the delete committed
    if finisher[0] == "enroll":
        run(home, "enroll", folder, "--model", "dlib", "--augment", "2")
    else:
        res = run(home, *finisher, code=0 if "--finish" in finisher else 1)
        if "--finish" in finisher:
            assert res.stdout == "Finished 1 pending erasure(s).\n"
        else:
            assert res.stderr == "Error: no person named 'Bob Gone' in the gallery\n"
    assert [n for n in needles if n in gallery_bytes(home)] == []
    assert run(home, "forget", "--finish").stdout == "Finished 0 pending erasure(s).\n"
    run(home, "check")


# -- 6. names are Unicode-normalised ---------------------------------------------------------------------------------
def test_nfc_and_nfd_folders_are_one_person_and_forget_finds_them(tmp_path, fake_cli):
    import unicodedata

    nfc = unicodedata.normalize("NFC", "José Ñúñez")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    root = tmp_path / "people"
    for n, folder in enumerate((nfd, nfc, " Spacey ", "Spacey")):
        (root / folder).mkdir(parents=True)
        person_image(100 * (n // 2) + n).save(root / folder / f"{n}.jpg")
    home = tmp_path / "g"
    doc = json.loads(run(home, "enroll", root, "--model", "dlib", "--augment", "0", "--json").stdout)
    assert sorted(doc["people"]) == sorted([nfc, "Spacey"]) and not doc["skipped"]
    assert sorted(doc["notes"]) == sorted([f"folders {nfd!r}, {nfc!r} are one person: {nfc!r}",
                                           "folders ' Spacey ', 'Spacey' are one person: 'Spacey'"])
    text = run(home, "enroll", root, "--model", "dlib", "--augment", "0").stdout
    assert "note: folders ' Spacey ', 'Spacey' are one person: 'Spacey'" in text
    people = json.loads(run(home, "people", "--json").stdout)["people"]
    assert sorted((p["name"], p["photos"]) for p in people) == sorted([(nfc, 2), ("Spacey", 2)])
    assert json.loads(run(home, "forget", nfd, "--yes", "--json").stdout)["name"] == nfc  # typed in NFD
    assert json.loads(run(home, "forget", "  Spacey", "--yes", "--json").stdout)["photos"] == 2
    assert json.loads(run(home, "people", "--json").stdout)["people"] == []


def test_forget_in_nfc_finds_a_name_an_older_version_stored_in_nfd(tmp_path):
    import unicodedata

    nfd = unicodedata.normalize("NFD", "Zoë")
    folder = make_people(tmp_path / "people", ("Zoe",), 1)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=0)
    conn = sqlite3.connect(tmp_path / "g" / "gallery.sqlite")
    with conn:
        conn.execute("UPDATE people SET name = ?", (nfd,))
    conn.close()
    with open_gallery(tmp_path / "g") as g:
        assert forget(g, "Zoë").name == nfd and list_people(g) == []


def test_uploads_store_the_nfc_name(tmp_path):
    import unicodedata

    from gallery.enroll.enroll import enroll_images

    person_image(1).save(tmp_path / "a.jpg")
    with open_gallery(tmp_path / "g") as g:
        rep = enroll_images(g, unicodedata.normalize("NFD", " Ñúñez "), [("a.jpg", tmp_path / "a.jpg")],
                            models=["dlib"], augment=0)
        assert rep.people == ("Ñúñez",) and [p.name for p in list_people(g)] == ["Ñúñez"]


# -- smaller ones ----------------------------------------------------------------------------------------------------
def test_symlinks_out_of_the_people_folder_are_not_followed_by_default(tmp_path, fake_cli, caplog):
    root = make_people(tmp_path / "people", ("Ann",), 1)
    outside = make_people(tmp_path / "elsewhere", ("Eve",), 2)
    (root / "Ann" / "link.jpg").symlink_to(outside / "Eve" / "0.jpg")
    (root / "Ann" / "inside.jpg").symlink_to(root / "Ann" / "0.jpg")
    (root / "Eve").symlink_to(outside / "Eve", target_is_directory=True)
    home = tmp_path / "g"
    with caplog.at_level("WARNING"):
        doc = json.loads(run(home, "enroll", root, "--model", "dlib", "--augment", "0", "--json").stdout)
    assert {(Path(s["path"]).name, s["reason"]) for s in doc["skipped"]} == {
        ("link.jpg", "symbolic link to a file outside the people folder (--follow-symlinks enrolls it)"),
        ("Eve", "symbolic link to a folder outside the people folder (--follow-symlinks enrolls it)")}
    assert sorted(Path(p["path"]).name for p in doc["enrolled"]) == ["0.jpg", "inside.jpg"]
    assert "leads out of the people folder" in caplog.text
    doc = json.loads(run(home, "enroll", root, "--model", "dlib", "--augment", "0", "--follow-symlinks",
                         "--json").stdout)
    assert doc["skipped"] == [] and len(doc["enrolled"]) == 3


def test_a_16_bit_png_holding_8_bit_values_is_not_black(tmp_path):
    from PIL import Image

    from indexer.images import load_image

    grey = np.asarray(person_image(3).convert("L"), np.uint16)
    img = Image.fromarray(grey)
    img.save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = np.asarray(load_image(tmp_path / "g16.png").convert("L"))
    assert np.abs(out.astype(int) - grey.astype(int)).max() <= 1 and out.mean() > 50
    twelve = Image.fromarray((grey.astype(np.uint32) * 16).astype(np.uint16))  # 12-bit data
    twelve.save(tmp_path / "g12.png")
    out12 = np.asarray(load_image(tmp_path / "g12.png").convert("L"))
    assert np.abs(out12.astype(int) - grey.astype(int)).max() <= 2


def test_the_index_kind_chosen_by_reindex_survives_a_killed_rebuild(tmp_path, monkeypatch):
    from gallery.indexes import IndexCache
    from gallery.manage.maintenance import reindex

    folder = make_people(tmp_path / "people", tuple(f"P{i}" for i in range(6)), 4)
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, folder, models=["dlib"], augment=3)
        assert g.index("dlib").kind == "flat"
        real = IndexCache.rebuild
        monkeypatch.setattr(IndexCache, "rebuild", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):  # killed after the commit, while rebuilding
            reindex(g, ["dlib"], "ivf")
        monkeypatch.setattr(IndexCache, "rebuild", real)
    assert not (tmp_path / "g" / "indexes" / "dlib.faiss").exists()
    with open_gallery(tmp_path / "g") as g:
        assert g.index("dlib").kind == "ivf"  # rebuilt by a reader as the kind reindex was asked for
        assert [r.kind for r in reindex(g, ["dlib"])] == ["ivf"]
        assert [r.kind for r in reindex(g, ["dlib"], "auto")] == ["flat"]
        g.forget_cached_index("dlib")
        (tmp_path / "g" / "indexes" / "dlib.faiss").unlink()
        assert g.index("dlib").kind == "flat"


def test_models_says_unofficial_weights_for_a_random_resnet50(tmp_path, monkeypatch):
    import torch

    from indexer.embedders import create_embedder
    from indexer.embedders.weights import OFFLINE_ENV, WEIGHTS_ENV

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    torch.save(create_embedder("resnet50", weights="random").load().state_dict(), tmp_path / "r.pt")
    res = CliRunner().invoke(cli, ["models", "import", "--model", "resnet50", str(tmp_path / "r.pt")])
    assert res.exit_code == 0 and res.stdout.rstrip().endswith("; unofficial weights: not the published file")
    res = CliRunner().invoke(cli, ["models", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    listing = json.loads(res.stdout)["models"]
    assert {m["name"]: m["official"] for m in listing if m["present"]}["resnet50"] is False
    row = next(line for line in CliRunner().invoke(cli, ["models"]).stdout.splitlines()
               if line.startswith("resnet50"))
    assert "unofficial weights" in row


def test_a_nan_row_never_reaches_the_heads_nor_calibration(tmp_path):
    # heads and calibrate read every stored vector: a damaged row is left out (check names it), never trained on
    from gallery.calibration.calibrate import calibrate_gallery
    from gallery.heads.train import stored_vectors

    home = tmp_path / "g"
    with open_gallery(home) as g:
        enroll_folder(g, make_people(tmp_path / "people"), models=["dlib"], augment=1)
    _poison_row(home, "Bob")
    with open_gallery(home) as g:
        data = stored_vectors(g, "dlib")
        with g.session() as s:
            assert len(data.vectors) == len(q.embedding_ids(s, "dlib")) - 1
        assert np.isfinite(data.vectors).all()
        (cal,) = calibrate_gallery(g, ["dlib"])
        assert np.isfinite(cal.threshold)
