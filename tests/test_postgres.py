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
        kwargs["folder"] = core.make_people(tmp_path / "people")
    unknown = set(wanted) - set(kwargs)
    assert not unknown, f"{scenario.__name__} needs fixtures this wrapper does not provide: {unknown}"
    scenario(**kwargs)
    # the scenario really ran on PostgreSQL: no SQLite file was created in the gallery folder
    assert not (tmp_path / "g" / "gallery.sqlite").exists()


def test_postgres_store_round_trip_and_names(pg_url, tmp_path):
    """Vectors survive byte-exact, odd names are plain data, and forget compacts on PostgreSQL too."""
    from db import queries as q
    from gallery.enroll import enroll_folder
    from gallery.maintenance import check
    from gallery.people import forget, list_people
    from tests.fakes import person_image

    names = ["O'Brien; DROP TABLE people;--", "Zoë \"Z\" Ångström", "x..y", "back\\slash"]
    root = tmp_path / "people"
    for n, name in enumerate(names):
        (root / name).mkdir(parents=True)
        person_image(100 * n + 1).save(root / name / "1.jpg")
    with core.open_gallery(tmp_path) as g:
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
