"""Issue 14 on PostgreSQL: a ``forget`` killed after its delete committed is finished by ``forget --finish``,
shown at the byte level: the person's vectors, name and photo paths are in the table, TOAST and index files after
the kill (and a CHECKPOINT), and in none of them once the erasure is finished. Skips without
``FACEGALLERY_TEST_PG_URL`` (scripts/test.sh starts a throw-away server)."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from tests import test_gallery_core as core
from tests.test_postgres import _relation_files, pg_url  # noqa: F401  (pg_url is a fixture)
from tests.test_reliability2 import killed_forget, make_people


def test_a_killed_forget_on_postgres_is_finished_by_forget_finish(pg_url, tmp_path):  # noqa: F811
    from db import queries as q
    from db.session import PERSONAL_TABLES
    from gallery.enroll.enroll import enroll_folder

    name = "Erase Me Later"
    folder = make_people(tmp_path / "people", (name, "Stays Here"))
    with core.open_gallery(tmp_path) as g:
        enroll_folder(g, folder, models=["dlib"], augment=2)
        with g.session() as s:
            pid = q.person_by_name(s, name).id
            _, vecs = q.vectors_of_person(s, "dlib", pid)
            paths = [p.path for p in q.photos_of(s, pid).values()]
        files = _relation_files(g.engine, PERSONAL_TABLES)
        if not files or not all(os.access(f, os.R_OK) for f in files):
            pytest.skip("the PostgreSQL data directory is not readable from this process (remote server?)")
    needles = [q.vector_to_bytes(v) for v in vecs] + [name.encode()] + [p.encode() for p in paths]

    killed_forget(tmp_path / "g", name)

    with core.open_gallery(tmp_path) as g:
        with g.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("CHECKPOINT"))

        def everything() -> bytes:
            return b"".join(f.read_bytes() for f in _relation_files(g.engine, PERSONAL_TABLES))

        with g.session() as s:
            assert q.person_by_name(s, name) is None and q.pending_erasures(s) == [pid]
        assert [n for n in needles if n not in everything()] == [], "the killed forget left them in the files"
        res = CliRunner().invoke(cli, ["--gallery", str(tmp_path / "g"), "-q", "forget", "--finish"])
        assert res.exit_code == 0 and res.stdout == "Finished 1 pending erasure(s).\n", res.output
        assert [n for n in needles if n in everything()] == []
        assert b"Stays Here" in everything()
        with g.session() as s:
            assert q.pending_erasures(s) == []
