"""Making, backing up, restoring and salvaging a gallery's database.

The database is the whole gallery: index files are caches rebuilt from it and heads are retrained from it, so a
backup is one SQLite file. ``backup`` uses SQLite's online backup API (one consistent snapshot while readers and
writers go on) and checks the copy; ``restore`` checks a backup, takes the writer lock, copies it over the live
database page by page and deletes the index files and heads made from the old one (rebuilt on next use);
``salvage`` writes what a damaged file still holds into a new one (see :mod:`db.salvage`). PostgreSQL galleries are
backed up with the server's own tools (``pg_dump`` / ``pg_restore``).
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from db.salvage import salvage_sqlite
from db.session import (
    UnreadableStoreError,
    backup_sqlite,
    file_counts,
    file_problems,
    integrity_problems,
    restore_sqlite,
    sqlite_file,
    store_state,
)
from gallery.config import Settings
from gallery.errors import GalleryDamagedError, GalleryError, InvalidInputError
from gallery.opening import open_store, past_content
from gallery.store import Gallery

log = logging.getLogger(__name__)

PG_BACKUP = ("this gallery lives in PostgreSQL ({url}): back it up with the server's tools, e.g. "
             "pg_dump --format=custom --file gallery.dump '{url}', and restore with "
             "pg_restore --clean --if-exists --dbname '{url}' gallery.dump; then run facegallery reindex")


@dataclass(frozen=True)
class DatabaseCopy:
    """A backup, restore or salvage: the file written or read, its row counts, and what to know about it."""

    action: str
    path: str
    counts: dict[str, int]
    method: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _sqlite_only(settings: Settings) -> Path:
    path = sqlite_file(settings.db_url)
    if path is None:
        raise GalleryError(PG_BACKUP.format(url=_hide_password(settings.db_url)))
    return path


def _hide_password(url: str) -> str:
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, creds = head.partition("//")
    return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"


def _new_file(dest: Path, force: bool) -> Path:
    dest = Path(dest).expanduser()
    if dest.is_dir():
        raise InvalidInputError(f"{dest} is a folder: name the backup file to write")
    if dest.exists() and not force:
        raise InvalidInputError(f"{dest} exists: choose a new file name (or --force to replace it)")
    if not dest.parent.is_dir():
        raise InvalidInputError(f"{dest.parent} is not a folder")
    return dest


def _tmp(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def backup(gallery: Gallery, dest: str | Path, *, force: bool = False) -> DatabaseCopy:
    """Copy the gallery's database into ``dest`` (a consistent snapshot, taken while others read and write)."""
    _sqlite_only(gallery.settings)
    if not gallery.exists:
        gallery.session()  # raises "no gallery at ..."
    dest = _new_file(Path(dest), force)
    tmp = _tmp(dest)
    try:
        backup_sqlite(gallery.engine, tmp)
        problems = file_problems(tmp)
        if problems:
            raise GalleryDamagedError(f"the copy fails SQLite's check ({problems[0]}): the gallery database is "
                                      f"damaged; salvage it with facegallery salvage NEW_FILE")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return DatabaseCopy("backup", str(dest), file_counts(dest), "SQLite online backup API",
                        ["index files and heads are not in the backup: they are rebuilt and retrained from it"])


def restore(settings: Settings, src: str | Path, *, force: bool = False) -> DatabaseCopy:
    """Replace the gallery's database with the backup ``src`` (``force`` to replace one that holds people or
    cannot be read); the index files and heads of the old database are deleted and the indexes rebuilt."""
    live = _sqlite_only(settings)
    src = Path(src).expanduser()
    if not src.is_file():
        raise InvalidInputError(f"{src}: no such backup file")
    if src.resolve() == live.resolve():
        raise InvalidInputError(f"{src} is the gallery's own database")
    problems = file_problems(src)
    if problems:
        raise InvalidInputError(f"{src} cannot be restored: {problems[0]}")
    settings.home.mkdir(parents=True, exist_ok=True)
    with Gallery(settings, check=False) as g, g.write_lock():
        held = _held(g)
        if held and not force:
            raise GalleryError(f"the gallery at {settings.home} is not empty ({held}): restore --force replaces it")
        try:
            restore_sqlite(src, g.engine)
            method = "SQLite backup API"
        except Exception as exc:  # noqa: BLE001 - a live file too damaged to write into is replaced whole
            log.warning("cannot restore into the damaged database (%s); replacing the file", exc)
            _replace_file(src, live, g)
            method = "file replaced (the old one could not be written into)"
        removed = _drop_derived(settings)
        open_store(settings, g.engine, create=False)  # adds tables this version has and the backup lacks
        g.exists = True
        for m in g.vector_sets():
            g.forget_cached_index(m)
            g.index(m)  # rebuilt now, under the lock, and saved
    notes = [f"deleted {len(removed)} index file(s) and head(s) made from the old database"] if removed else []
    notes.append("people forgotten after this backup was made are back: forget them again")
    return DatabaseCopy("restore", str(src), file_counts(live), method, notes)


def _held(g: Gallery) -> str:
    """What the live database holds ("" when it is empty, new or missing), for the --force question."""
    try:
        state = store_state(g.engine)
    except UnreadableStoreError:
        return "its database cannot be read"
    if state != "ready":
        return ""
    if integrity_problems(g.engine):
        return "its database is damaged"
    counts = file_counts(sqlite_file(g.settings.db_url))
    return "" if not counts["people"] and not counts["embeddings"] else f"{counts['people']} people"


def _replace_file(src: Path, live: Path, g: Gallery) -> None:
    g.engine.dispose()
    tmp = _tmp(live)
    shutil.copyfile(src, tmp)
    for side in ("-wal", "-shm"):  # they belong to the damaged file
        live.with_name(live.name + side).unlink(missing_ok=True)
    os.replace(tmp, live)


def _drop_derived(settings: Settings) -> list[Path]:
    removed = []
    for folder, pattern in ((settings.index_dir, "*.faiss"), (settings.heads_dir, "*.pt")):
        for path in sorted(folder.glob(pattern)) if folder.is_dir() else ():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def salvage(settings: Settings, dest: str | Path, *, force: bool = False) -> DatabaseCopy:
    """Write what can still be read of the gallery's (damaged) database into the new file ``dest``."""
    live = _sqlite_only(settings)
    if not live.is_file() or live.stat().st_size == 0:
        raise InvalidInputError(f"{live}: no database file to salvage")
    dest = _new_file(Path(dest), force)
    tmp = _tmp(dest)
    try:
        got = salvage_sqlite(live, tmp)
        problems = file_problems(tmp)
        if problems:
            raise GalleryDamagedError(f"the salvaged copy is not sound either ({problems[0]})")
        os.replace(tmp, dest)
    finally:
        for side in ("", "-wal", "-shm"):
            tmp.with_name(tmp.name + side).unlink(missing_ok=True)
    notes = list(got.notes)
    if got.lost:
        notes.append("unreadable rows: " + ", ".join(f"{t}={n}" for t, n in got.lost.items()))
    if got.dropped:
        notes.append(f"{got.dropped} row(s) dropped because their person, photo or face was lost")
    notes.append(f"check it, then: facegallery restore {dest} --force")
    return DatabaseCopy("salvage", str(dest), {t: got.rows.get(t, 0) for t in ("people", "photos", "embeddings")},
                        got.method, notes)


@dataclass(frozen=True)
class InitReport:
    home: str
    created: bool
    removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def init_gallery(settings: Settings, *, force: bool = False) -> InitReport:
    """Create an empty gallery (nothing happens to one that exists). ``force``: even where index files, heads or
    the lock show a lost database's past; those files are deleted first."""
    with Gallery(settings, check=False) as g:
        try:
            state = store_state(g.engine)
        except UnreadableStoreError as exc:
            raise GalleryDamagedError(f"the gallery database cannot be read ({exc}): move it away or restore a "
                                      f"backup (facegallery restore BACKUP --force)") from exc
        if state == "ready":
            return InitReport(str(settings.home), False)
        removed = []
        if force and past_content(settings):
            settings.home.mkdir(parents=True, exist_ok=True)
            with g.write_lock():
                removed = [str(p.relative_to(settings.home)) for p in _drop_derived(settings)]
                open_store(settings, g.engine, create=True, force=True)
        else:
            open_store(settings, g.engine, create=True)
    return InitReport(str(settings.home), True, removed)
