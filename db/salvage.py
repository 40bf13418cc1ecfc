"""Salvaging what can still be read from a damaged SQLite gallery into a new file.

First choice: the ``sqlite3`` shell's ``.recover`` (SQLite's own recovery, which reads every page it can, even of
a damaged b-tree). Without the shell, or when it fails: row by row through the Python driver, table after table in
dependency order, a range of rowids at a time and single rows where a range fails. Either way rows whose parent
was lost are dropped (an embedding without its face, a face without its photo, ...), so the result is a consistent
gallery that ``facegallery restore`` accepts. What could not be read is counted, never guessed.
"""
from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from db.models import Base
from db.session import has_schema, init_schema, make_engine, sqlite_url

log = logging.getLogger(__name__)

RANGE = 500
SHELL_TIMEOUT_S = 3600
#: Children whose parent is gone, deleted in this order (a photo must go before its faces are judged).
ORPHANS = (
    "DELETE FROM photos WHERE person_id NOT IN (SELECT id FROM people)",
    "DELETE FROM faces WHERE photo_id NOT IN (SELECT id FROM photos)",
    "DELETE FROM embeddings WHERE face_id NOT IN (SELECT id FROM faces)",
    "DELETE FROM faces WHERE id NOT IN (SELECT face_id FROM embeddings)",
    "DELETE FROM photos WHERE id NOT IN (SELECT photo_id FROM faces)",
    "DELETE FROM library_faces WHERE photo_id NOT IN (SELECT id FROM library_photos)",
    "DELETE FROM library_embeddings WHERE face_id NOT IN (SELECT id FROM library_faces)",
    "DELETE FROM library_faces WHERE id NOT IN (SELECT face_id FROM library_embeddings)",
)
#: References to a lost person: the library face stays, unassigned.
UNLINKED = (
    "UPDATE library_faces SET person_id = NULL WHERE person_id NOT IN (SELECT id FROM people)",
    "UPDATE library_faces SET suggested_person_id = NULL, suggested_score = NULL "
    "WHERE suggested_person_id NOT IN (SELECT id FROM people)",
)


@dataclass
class Salvaged:
    method: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows in the new file
    lost: dict[str, int] = field(default_factory=dict)  # table -> rows that could not be read (row by row only)
    dropped: int = 0  # rows dropped because their parent was lost
    notes: list[str] = field(default_factory=list)


def salvage_sqlite(src: Path, dest: Path) -> Salvaged:
    """Write what can be read of ``src`` into the new file ``dest`` (which must not exist)."""
    shell = shutil.which("sqlite3")
    result = None
    if shell is not None:
        try:
            result = _recover_with_shell(shell, src, dest)
        except (OSError, subprocess.SubprocessError, sqlite3.Error) as exc:
            log.warning("sqlite3 .recover failed (%s); reading row by row instead", exc)
            _remove(dest)
    if result is None:
        result = _row_by_row(src, dest)
    result.dropped = _drop_orphans(dest)
    conn = sqlite3.connect(dest)
    try:
        result.rows = {t.name: conn.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0]
                       for t in Base.metadata.sorted_tables}
        conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (no -wal beside it)
    finally:
        conn.close()
    return result


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


def _recover_with_shell(shell: str, src: Path, dest: Path) -> Salvaged | None:
    dump = subprocess.run([shell, "-readonly", str(src), ".recover"], capture_output=True, timeout=SHELL_TIMEOUT_S)
    if dump.returncode != 0 or not dump.stdout:
        raise subprocess.SubprocessError(dump.stderr.decode(errors="replace").strip()[:200] or "no output")
    load = subprocess.run([shell, str(dest)], input=dump.stdout, capture_output=True, timeout=SHELL_TIMEOUT_S)
    if load.returncode != 0:
        raise subprocess.SubprocessError(load.stderr.decode(errors="replace").strip()[:200])
    engine = make_engine(sqlite_url(dest))
    try:
        if not has_schema(engine):  # page 1 or the meta table was lost: not a gallery we can vouch for
            raise sqlite3.DatabaseError("the recovered file holds no gallery schema")
        init_schema(engine)  # tables .recover could not find come back empty
    finally:
        engine.dispose()
    out = Salvaged(".recover (sqlite3 shell)")
    conn = sqlite3.connect(dest)
    try:
        lost = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'lost_and_found%'")
        for (name,) in lost.fetchall():
            n = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            conn.execute(f'DROP TABLE "{name}"')  # pieces of rows without their table: nothing to restore
            out.notes.append(f"{n} fragment(s) that belong to no table were left out ({name})")
        conn.commit()
    finally:
        conn.close()
    return out


def _row_by_row(src: Path, dest: Path) -> Salvaged:
    engine = make_engine(sqlite_url(dest))
    try:
        init_schema(engine)
    finally:
        engine.dispose()
    out = Salvaged("row by row (Python sqlite3)")
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dest)
    try:
        target.execute("PRAGMA foreign_keys=OFF")
        for table in Base.metadata.sorted_tables:  # parents first
            cols = [c.name for c in table.columns]
            insert = (f"INSERT OR REPLACE INTO {table.name} ({', '.join(cols)}) "
                      f"VALUES ({', '.join('?' * len(cols))})")
            read, lost = _copy_table(source, target, table.name, cols, insert)
            if lost:
                out.lost[table.name] = lost
            log.info("salvaged %d rows of %s (%d unreadable)", read, table.name, lost)
        target.commit()
    finally:
        source.close()
        target.close()
    return out


def _copy_table(source, target, table: str, cols: list[str], insert: str) -> tuple[int, int]:
    select = f"SELECT {', '.join(cols)} FROM {table} WHERE rowid BETWEEN ? AND ?"
    try:
        top = source.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.Error:
        return 0, 1  # even the table's root cannot be read
    read = lost = 0
    for lo in range(0, top + 1, RANGE):
        try:
            rows = source.execute(select, (lo, lo + RANGE - 1)).fetchall()
        except sqlite3.Error:
            rows = []
            for rowid in range(lo, lo + RANGE):
                try:
                    rows += source.execute(select, (rowid, rowid)).fetchall()
                except sqlite3.Error:
                    lost += 1
        target.executemany(insert, rows)
        read += len(rows)
    return read, lost


def _drop_orphans(dest: Path) -> int:
    conn = sqlite3.connect(dest)
    try:
        dropped = sum(conn.execute(stmt).rowcount for stmt in ORPHANS)
        for stmt in UNLINKED:
            conn.execute(stmt)
        # generations move on: no index file or head made from the damaged database matches the salvaged one
        conn.execute("UPDATE index_state SET generation = generation + 1000000")
        conn.commit()
    finally:
        conn.close()
    return dropped
