"""Engines and schema for the gallery store.

SQLite is the embedded default (a file in the gallery folder). It is opened in WAL mode with a busy timeout so
that a reader (``identify``) never blocks on a writer and a second writer waits instead of failing at once, and
with foreign keys on so deleting a person cascades in the database itself. Any other SQLAlchemy URL (PostgreSQL
through ``postgresql+psycopg://``) works unchanged: nothing below is SQLite-only except the pragmas.
"""
from __future__ import annotations

import logging
import time

from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from db.models import SCHEMA_VERSION, Base, Meta

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0


class SchemaVersionError(Exception):
    """The database was written by a newer (or unknown) schema version."""


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    """Create an engine for ``url`` with the pragmas the gallery relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every sqlite test
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # deleted rows (forgotten vectors) are zeroed in the file
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            try:
                cur.execute("PRAGMA journal_mode=WAL")
            except Exception:  # read-only media: keep the default journal
                log.debug("could not switch sqlite to WAL", exc_info=True)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def init_schema(engine: Engine, attempts: int = 5) -> None:
    """Create missing tables and record / check the schema version.

    Two processes opening a new gallery at once race here (both see no table, the second CREATE or the second
    schema_version row fails); the loser simply tries again and then finds what the winner made.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _create_schema(engine)
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            raced = isinstance(exc, IntegrityError) or "already exists" in str(exc.orig)
            if not raced or attempt == attempts:
                raise
            log.debug("schema creation raced with another process (%s); retrying", exc.orig)
            time.sleep(0.1 * attempt)


def _create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        row = s.get(Meta, "schema_version")
        if row is None:
            s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(row.value) != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database schema version {row.value} is not supported (this facegallery writes {SCHEMA_VERSION})"
            )


def schema_version(engine: Engine) -> int | None:
    with Session(engine) as s:
        try:
            row = s.scalar(select(Meta).where(Meta.key == "schema_version"))
        except OperationalError:
            return None
        return int(row.value) if row else None


#: Tables holding personal data (names, paths, boxes, vectors): rewritten by :func:`compact` on PostgreSQL.
PERSONAL_TABLES = ("embeddings", "faces", "photos", "people")


def compact(engine: Engine) -> None:
    """Give freed pages back so erased rows cannot be read from the database files.

    SQLite: checkpoint the WAL, VACUUM (with ``secure_delete`` on, freed pages are zeroed too), checkpoint again.
    PostgreSQL: ``VACUUM FULL`` rewrites each personal-data table and its indexes into new files and unlinks the
    old ones, ANALYZE replaces the column samples in ``pg_statistic``, then ``CHECKPOINT`` flushes them. What
    this cannot reach on PostgreSQL: the server's WAL segments (kept and recycled by the server's own settings),
    dead rows of the old samples inside pg_statistic's own file until the server vacuums it, replicas and backups; a non-superuser role without
    ``pg_checkpoint`` skips the CHECKPOINT (logged).
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            conn.execute(text("VACUUM"))
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        elif engine.dialect.name == "postgresql":
            for table in PERSONAL_TABLES:  # ANALYZE re-samples pg_statistic from the rows that are left
                conn.execute(text(f"VACUUM (FULL, ANALYZE) {table}"))
            try:
                conn.execute(text("CHECKPOINT"))
            except DBAPIError as exc:
                log.warning("CHECKPOINT not allowed for this role (%s); the server flushes on its own schedule",
                            str(exc.orig).splitlines()[0] if exc.orig else exc)
