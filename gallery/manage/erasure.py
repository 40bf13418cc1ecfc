"""Finishing an erasure: after the rows of a forgotten person are deleted, no other file may keep their data.

``forget`` deletes the person and records a pending erasure (:class:`db.models.PendingErasure`, the former person
id only) in one transaction. Finishing then rewrites every index file from the database (a file saved before the
delete holds their vectors), deletes every head trained with them, compacts the database files (SQLite: checkpoint
+ VACUUM; PostgreSQL: VACUUM FULL + CHECKPOINT, :func:`db.session.compact`) and only then clears the record. A
``forget`` killed anywhere after its commit leaves the record behind: the next writer finishes it (see
:meth:`gallery.store.Gallery.write_lock`), and so does ``facegallery forget --finish``.
"""
from __future__ import annotations

import logging

from db import queries as q
from db.session import UnreadableStoreError, compact
from gallery.errors import GalleryDamagedError
from gallery.heads.train import delete_heads_with
from gallery.store import Gallery

log = logging.getLogger(__name__)


def pending(gallery: Gallery) -> list[int]:
    with gallery.session() as s:
        return q.pending_erasures(s)


def finish_pending(gallery: Gallery, *, name: str | None = None, compact_store: bool = True) -> list[str]:
    """Finish every pending erasure (call while holding the writer lock); returns the heads deleted.

    ``name``: the person a ``forget`` in this process just deleted (their heads are found by name too).
    """
    ids = pending(gallery)
    if not ids:
        return []
    log.info("finishing %d pending erasure(s)", len(ids))
    _rewrite_indexes(gallery)
    gallery.save_indexes()  # and the temporary files an interrupted save left (they may hold the vectors)
    heads = delete_heads_with(gallery, name, ids)
    if compact_store:
        try:
            compact(gallery.engine)
        except UnreadableStoreError as exc:
            raise GalleryDamagedError(
                f"the rows were deleted, but the database file cannot be compacted ({exc}): it is damaged and may "
                f"still hold the erased data; run facegallery check (see README, 'A damaged database')") from exc
    with gallery.writing() as w:
        q.clear_pending_erasures(w.session, ids)
    return heads


def _rewrite_indexes(gallery: Gallery) -> None:
    """Every index file mirrors the database after this: stale ones rebuilt, those of emptied embedders deleted."""
    held = set(gallery.vector_sets())
    folder = gallery.settings.index_dir
    files = {p.stem: p for p in folder.glob("*.faiss")} if folder.is_dir() else {}
    for model in sorted(held | set(files)):
        if model in held:
            gallery.index(model)  # a file older than the delete is stale by its stamp: rebuilt and saved
        else:
            files[model].unlink(missing_ok=True)


def finish_erasures(gallery: Gallery) -> int:
    """``forget --finish``: complete the erasures a killed ``forget`` left; returns how many there were."""
    count = len(pending(gallery))
    with gallery.write_lock():  # a writer finishes them on its way in; this one fails loudly if that failed
        finish_pending(gallery)
    return count
