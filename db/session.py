"""Engines and schema for the gallery store.

SQLite is the embedded default (a file in the gallery folder). It is opened in WAL mode with a busy timeout so
that a reader (``identify``) never blocks on a writer and a second writer waits instead of failing at once, and
with foreign keys on so deleting a person cascades in the database itself. Any other SQLAlchemy URL (PostgreSQL
through ``postgresql+psycopg://``) works unchanged: nothing below is SQLite-only except the pragmas.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, make_url, select, text
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from db.models import SCHEMA_VERSION, UPGRADABLE_VERSIONS, Base, Meta

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


def open_schema(engine: Engine) -> None:
    """:func:`init_schema` that reports a damaged file as :class:`UnreadableStoreError`."""
    try:
        init_schema(engine)
    except (IntegrityError, OperationalError, ProgrammingError):
        raise
    except DatabaseError as exc:  # "database disk image is malformed", "file is not a database"
        raise UnreadableStoreError(_first_line(exc)) from exc


def _create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        row = s.get(Meta, "schema_version")
        if row is None:
            s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(row.value) in UPGRADABLE_VERSIONS:  # create_all above added what the newer schema has
            log.info("upgraded the gallery database from schema version %s to %d", row.value, SCHEMA_VERSION)
            row.value = str(SCHEMA_VERSION)
        elif int(row.value) != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database schema version {row.value} is not supported (this facegallery writes {SCHEMA_VERSION})"
            )


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for another database or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


class UnreadableStoreError(Exception):
    """The database cannot be read at all (a damaged file, or not a database)."""


def store_state(engine: Engine) -> str:
    """``missing`` (no SQLite file), ``empty`` (a zero-length one), ``new`` (a database without a gallery in it)
    or ``ready``. Opening a SQLite file this way never creates it. Raises :class:`UnreadableStoreError`."""
    path = sqlite_file(engine.url.render_as_string(hide_password=False))
    if path is not None:
        if not path.exists():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
    try:
        return "ready" if has_schema(engine) else "new"
    except DBAPIError as exc:
        raise UnreadableStoreError(_first_line(exc)) from exc


def has_schema(engine: Engine) -> bool:
    """Whether the database holds a gallery (its ``meta`` table with a schema version); a damaged file raises
    :class:`sqlalchemy.exc.DatabaseError`."""
    if not inspect(engine).has_table(Meta.__tablename__):
        return False
    with Session(engine) as s:
        return s.get(Meta, "schema_version") is not None


def integrity_problems(engine: Engine, full: bool = False) -> list[str] | None:
    """SQLite's own check of the file: ``PRAGMA quick_check`` (``full``: ``integrity_check``, which also compares
    every index with its table). Returns what it reports ([] when the file is sound), or None for a database
    that has no such check here (PostgreSQL checks its pages itself; see README)."""
    if engine.dialect.name != "sqlite":
        return None
    pragma = "integrity_check" if full else "quick_check"
    try:
        with engine.connect() as conn:
            rows = [str(r[0]) for r in conn.execute(text(f"PRAGMA {pragma}"))]
    except DBAPIError as exc:
        return [f"the database file cannot be read: {_first_line(exc)}"]
    return [] if rows == ["ok"] else _problem_lines(rows)


def _problem_lines(rows: list[str]) -> list[str]:
    """SQLite's report as one problem a line, without its "*** in database main ***" headings."""
    return [line.strip() for row in rows for line in row.splitlines()
            if line.strip() and not line.startswith("*** in database")]


def _first_line(exc: DBAPIError) -> str:
    return (str(exc.orig) if exc.orig is not None else str(exc)).splitlines()[0]


def _driver(conn) -> sqlite3.Connection:
    return conn.driver_connection if hasattr(conn, "driver_connection") else conn


def backup_sqlite(engine: Engine, dest: Path) -> None:
    """Copy the SQLite database into ``dest`` with SQLite's online backup API: one consistent snapshot, taken
    while readers (and a writer, whose commit it does not see) go on. ``dest`` must not exist."""
    raw = engine.raw_connection()
    try:
        target = sqlite3.connect(dest)
        try:
            _driver(raw).backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (no -wal beside it)
        finally:
            target.close()
    finally:
        raw.close()


def file_problems(path: Path) -> list[str]:
    """``PRAGMA quick_check`` of a SQLite file that no engine has open (a backup to restore); [] when sound."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return [f"cannot open {path}: {exc}"]
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error as exc:
        return [f"{path} is not a facegallery database: {exc}"]
    finally:
        conn.close()
    if rows != ["ok"]:
        return _problem_lines(rows)
    if version is None or int(version[0]) not in (SCHEMA_VERSION, *UPGRADABLE_VERSIONS):
        return [f"{path} holds schema version {version[0] if version else 'none'} (this facegallery writes "
                f"{SCHEMA_VERSION})"]
    return []


def file_counts(path: Path, tables: tuple[str, ...] = ("people", "photos", "embeddings")) -> dict[str, int]:
    """Row counts of a SQLite gallery file that no engine has open."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def restore_sqlite(src: Path, engine: Engine) -> None:
    """Overwrite the engine's SQLite database with ``src`` through the backup API (page by page, in one
    transaction of the destination, so readers see the old or the new database, never a mix). The caller holds
    the gallery's writer lock and has checked ``src`` with :func:`file_problems`."""
    engine.dispose()
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        raw = engine.raw_connection()
        try:
            source.backup(_driver(raw))
        finally:
            raw.close()
    finally:
        source.close()
    engine.dispose()


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
            try:
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
                conn.execute(text("VACUUM"))
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            except DatabaseError as exc:
                if isinstance(exc, OperationalError) and "locked" in str(exc.orig):
                    raise
                raise UnreadableStoreError(_first_line(exc)) from exc  # "database disk image is malformed"
        elif engine.dialect.name == "postgresql":
            for table in PERSONAL_TABLES:  # ANALYZE re-samples pg_statistic from the rows that are left
                conn.execute(text(f"VACUUM (FULL, ANALYZE) {table}"))
            try:
                conn.execute(text("CHECKPOINT"))
            except DBAPIError as exc:
                log.warning("CHECKPOINT not allowed for this role (%s); the server flushes on its own schedule",
                            str(exc.orig).splitlines()[0] if exc.orig else exc)
