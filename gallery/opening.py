"""Opening a gallery: an existing one, a new one only when asked, and never a lost one as if it were new.

A SQLite file that is missing, zero bytes long or holds no gallery is a *new* gallery only when nothing beside it
shows past content. Index files, trained heads or the writer lock (created by the first write, after the database)
mean a gallery lived here: its database was deleted, truncated or replaced, and answering from an empty one would
silently say "unknown" to everyone. That is an error naming what was found and what to do. Readers never create a
gallery where there is no database file (``create=False``: "no gallery at DIR"); the first ``enroll`` or
``facegallery init`` does. An empty file with nothing beside it is a gallery another process is creating right now
(its first connection made the file): it is opened as an empty gallery, as the creator will leave it.
"""
from __future__ import annotations

import logging

from db.session import UnreadableStoreError, open_schema, store_state
from gallery.config import Settings
from gallery.errors import GalleryDamagedError, GalleryError, NoGalleryError

log = logging.getLogger(__name__)

WHAT_TO_DO = ("restore a backup with `facegallery restore BACKUP`, or start an empty gallery with "
              "`facegallery init --force` (deletes those files)")


def past_content(settings: Settings) -> list[str]:
    """Files of the gallery folder that only a gallery with content leaves behind, relative to the folder."""
    found = []
    for folder, pattern in ((settings.index_dir, "*.faiss"), (settings.heads_dir, "*.pt")):
        if folder.is_dir():
            found += [str(p.relative_to(settings.home)) for p in sorted(folder.glob(pattern))]
    if settings.lock_path.exists():
        found.append(settings.lock_path.name)
    return found


def describe(settings: Settings, state: str) -> str:
    where = settings.db_url if state == "new" else settings.db_url.removeprefix("sqlite:///")
    return {"missing": f"the gallery database {where} is missing",
            "empty": f"the gallery database {where} is empty (0 bytes)",
            "new": f"the gallery database {where} holds no gallery"}[state]


def no_gallery(settings: Settings) -> NoGalleryError:
    return NoGalleryError(f"no gallery at {settings.home}: enroll people first or run facegallery init")


def open_store(settings: Settings, engine, *, create: bool, force: bool = False) -> bool:
    """Check the database behind ``engine`` and create the schema when that is allowed (see module docstring).
    Returns whether a gallery exists now (False: none was ever made here and ``create`` is False).

    ``force``: create a new gallery even though files beside it show past content (``init --force``, which
    deletes them first).
    """
    try:
        state = store_state(engine)
    except UnreadableStoreError as exc:
        raise GalleryDamagedError(f"the gallery database cannot be read ({exc}): run `facegallery check`; "
                                  f"restore a backup with `facegallery restore BACKUP` (see README: a damaged "
                                  f"database)") from exc
    if state != "ready" and not force:
        past = past_content(settings)
        if past:
            raise GalleryDamagedError(f"{describe(settings, state)}, but {settings.home} shows past content "
                                      f"({', '.join(past)}): the database was lost or replaced; {WHAT_TO_DO}")
    if state == "missing" and not create:
        return False  # a file that exists (even empty) is a gallery being created: a reader waits for nothing
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GalleryError(f"cannot create gallery folder {settings.home}: {exc.strerror}") from exc
    try:
        open_schema(engine)  # also adds tables a newer facegallery introduced to an existing gallery
    except UnreadableStoreError as exc:
        raise GalleryDamagedError(f"the gallery database cannot be read ({exc}): {WHAT_TO_DO}") from exc
    return True
