"""The store tests of tests/test_gallery_core.py, run again against a real PostgreSQL server.

``FACEGALLERY_TEST_PG_URL`` (set by scripts/test.sh, which starts a throw-away cluster on 127.0.0.1) names a
server and a database we may create databases from, e.g. ``postgresql+psycopg://postgres@127.0.0.1:55432/postgres``.
Every test gets a fresh database (created here, dropped afterwards) and sees it through ``FACEGALLERY_DB_URL``,
exactly as a user would pass ``--db-url``; the SQLite scenarios then run unchanged. Skips without the variable.
"""
from __future__ import annotations

import inspect
import os
import uuid

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests import test_gallery_core as core
from tests.helpers import make_people, open_gallery

PG_ENV = "FACEGALLERY_TEST_PG_URL"


def _server_url():
    raw = os.environ.get(PG_ENV)
    if not raw:
        pytest.skip(f"no PostgreSQL server ({PG_ENV} is not set; scripts/test.sh starts one)")
    return make_url(raw)


@pytest.fixture
def pg_url(monkeypatch):
    """A fresh, empty database for this test; FACEGALLERY_DB_URL points at it (as --db-url would)."""
    server = _server_url()
    name = f"fg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - a server we cannot use is a skip, not a failure of the code
        admin.dispose()
        pytest.skip(f"cannot create a database on {server.render_as_string(hide_password=True)}: {exc}")
    url = server.set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("FACEGALLERY_DB_URL", url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _core_scenarios():
    """Every test function of test_gallery_core, expanded over its own parametrize marks."""
    out = []
    for name, fn in sorted(vars(core).items()):
        if not (name.startswith("test_") and inspect.isfunction(fn)):
            continue
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            out.append(pytest.param(fn, {}, id=name))
            continue
        (mark,) = marks  # the core tests use at most one parametrize
        argname = mark.args[0]
        for value in mark.args[1]:
            out.append(pytest.param(fn, {argname: value}, id=f"{name}[{value}]"))
    return out


@pytest.mark.parametrize("scenario, params", _core_scenarios())
def test_core_store_scenario_on_postgres(scenario, params, pg_url, tmp_path):
    wanted = inspect.signature(scenario).parameters
    kwargs = dict(params)
    if "tmp_path" in wanted:
        kwargs["tmp_path"] = tmp_path
    if "folder" in wanted:
        kwargs["folder"] = make_people(tmp_path / "people")
    unknown = set(wanted) - set(kwargs)
    assert not unknown, f"{scenario.__name__} needs fixtures this wrapper does not provide: {unknown}"
    scenario(**kwargs)
    # the scenario really ran on PostgreSQL: no SQLite file was created in the gallery folder
    assert not (tmp_path / "g" / "gallery.sqlite").exists()


LIBRARY_SCENARIOS = ("test_scan_is_incremental_and_handles_changes", "test_scan_adds_a_missing_embedder_from_stored_faces",
                     "test_scan_embeds_again_what_other_weights_made", "test_clusters_ids_are_stable_and_merge",
                     "test_contact_sheet_is_a_png_with_one_tile_per_face")


@pytest.mark.parametrize("name", LIBRARY_SCENARIOS)
def test_library_scenario_on_postgres(name, pg_url, tmp_path):
    """The photo library's bookkeeping (tests/test_library.py, with the fakes) on PostgreSQL."""
    from tests import test_library

    getattr(test_library, name)(tmp_path)
    assert not (tmp_path / "g" / "gallery.sqlite").exists()


def test_postgres_store_round_trip_and_names(pg_url, tmp_path):
    """Vectors survive byte-exact, odd names are plain data, and forget compacts on PostgreSQL too."""
    from db import queries as q
    from gallery.enroll.enroll import enroll_folder
    from gallery.manage.maintenance import check
    from gallery.manage.people import forget, list_people
    from tests.fakes import person_image

    names = ["O'Brien; DROP TABLE people;--", "Zoë \"Z\" Ångström", "x..y", "back\\slash"]
    root = tmp_path / "people"
    for n, name in enumerate(names):
        (root / name).mkdir(parents=True)
        person_image(100 * n + 1).save(root / name / "1.jpg")
    with open_gallery(tmp_path / "g") as g:
        assert g.engine.dialect.name == "postgresql"
        rep = enroll_folder(g, root, models=["dlib"], augment=1)
        assert not rep.skipped and len(rep.enrolled) == len(names)
        assert sorted(p.name for p in list_people(g)) == sorted(names)
        with g.session() as s:
            pid = q.person_by_name(s, names[0]).id
            ids, vecs = q.vectors_of_person(s, "dlib", pid)
        index = g.index("dlib")
        for i, v in zip(ids, vecs):
            np.testing.assert_array_equal(index.reconstruct(int(i)), v)
        forget(g, names[0])
        assert sorted(p.name for p in list_people(g)) == sorted(names[1:])
        assert not set(g.index("dlib").ids().tolist()) & set(ids.tolist())
        assert check(g).ok


def _relation_files(engine, tables) -> list:
    """The on-disk files (all segments) of ``tables``, their TOAST tables and every index on them."""
    from pathlib import Path

    with engine.connect() as conn:
        root = Path(conn.execute(text("SHOW data_directory")).scalar())
        rels = conn.execute(text(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c "
            "WHERE c.oid IN (SELECT x::regclass FROM unnest(CAST(:t AS text[])) x) "
            "OR c.oid IN (SELECT reltoastrelid FROM pg_class WHERE oid IN "
            "  (SELECT x::regclass FROM unnest(CAST(:t AS text[])) x)) "
            "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN "
            "  (SELECT x::regclass FROM unnest(CAST(:t AS text[])) x))"), {"t": list(tables)}).scalars().all()
    files = []
    for rel in rels:
        if rel:
            base = root / rel
            files += [p for p in base.parent.glob(base.name + "*") if p.is_file()]
    return files


def test_forget_leaves_no_bytes_in_postgres_table_files(pg_url, tmp_path):
    """Byte-level erasure on PostgreSQL: after forget, no table, TOAST or index file of the database holds the
    person's vectors, name or photo paths (the server's WAL is out of reach and documented as such)."""
    from db import queries as q
    from db.session import PERSONAL_TABLES
    from gallery.enroll.enroll import enroll_folder
    from gallery.manage.people import forget
    from tests.fakes import person_image

    name, other = "Erase Me Completely", "Stays Here"
    root = tmp_path / "people"
    for n, who in enumerate((name, other)):
        (root / who).mkdir(parents=True)
        for k in range(2):
            person_image(100 * n + k + 1).save(root / who / f"{k}.jpg")
    with open_gallery(tmp_path / "g") as g:
        enroll_folder(g, root, models=["dlib"], augment=2)
        with g.session() as s:
            pid = q.person_by_name(s, name).id
            _, vecs = q.vectors_of_person(s, "dlib", pid)
            _, kept = q.vectors_of_person(s, "dlib", q.person_by_name(s, other).id)
            paths = [p.path for p in q.photos_of(s, pid).values()]
        with g.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("CHECKPOINT"))
        files = _relation_files(g.engine, PERSONAL_TABLES)
        if not files or not all(os.access(f, os.R_OK) for f in files):
            pytest.skip("the PostgreSQL data directory is not readable from this process (remote server?)")

        def everything() -> bytes:
            return b"".join(f.read_bytes() for f in _relation_files(g.engine, PERSONAL_TABLES))

        needles = [q.vector_to_bytes(v) for v in vecs] + [name.encode()] + [p.encode() for p in paths]
        before = everything()
        assert [n for n in needles if n not in before] == [], "all of it should be on disk before forget"
        forget(g, name)
        after = everything()
        assert [n for n in needles if n in after] == []
        assert q.vector_to_bytes(kept[0]) in after and other.encode() in after  # the others are untouched


def test_forget_as_a_role_that_may_not_checkpoint_warns_and_still_erases(pg_url, tmp_path, caplog):
    """A plain database owner (no superuser, no pg_checkpoint) can VACUUM its tables but not CHECKPOINT:
    forget logs one warning and still removes the person."""
    from gallery.enroll.enroll import enroll_folder
    from gallery.manage.people import forget, list_people
    from tests.fakes import person_image

    role = f"fg_plain_{uuid.uuid4().hex[:8]}"
    url = make_url(pg_url)
    admin = create_engine(_server_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'ALTER DATABASE "{url.database}" OWNER TO "{role}"'))
    try:
        plain = url.set(username=role).render_as_string(hide_password=False)
        root = tmp_path / "people"
        for n, who in enumerate(("Gone", "Kept")):
            (root / who).mkdir(parents=True)
            person_image(n + 1).save(root / who / "1.jpg")
        with open_gallery(tmp_path / "g", db_url=plain) as g:
            enroll_folder(g, root, models=["dlib"], augment=0)
            with caplog.at_level("WARNING"):
                forget(g, "Gone")
            assert [p.name for p in list_people(g)] == ["Kept"]
        assert "CHECKPOINT not allowed" in caplog.text
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{url.database}" OWNER TO postgres'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
