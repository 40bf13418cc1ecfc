"""Listing and forgetting people."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from db import queries as q
from db.session import compact
from gallery.errors import PersonNotFoundError
from gallery.heads.train import delete_heads_with
from gallery.store import Gallery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersonSummary:
    id: int
    name: str
    photos: int
    faces: int
    embeddings: dict[str, int]

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "photos": self.photos, "faces": self.faces,
                "embeddings": dict(self.embeddings)}


@dataclass(frozen=True)
class ForgetReport:
    name: str
    photos: int
    embeddings_removed: dict[str, int]
    heads_invalidated: list[str] = field(default_factory=list)
    compacted: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "photos": self.photos, "embeddings_removed": dict(self.embeddings_removed),
                "heads_invalidated": list(self.heads_invalidated), "compacted": self.compacted}


def list_people(gallery: Gallery) -> list[PersonSummary]:
    with gallery.session() as s:
        return [PersonSummary(pid, name, photos, faces, emb) for pid, name, photos, faces, emb in q.people_counts(s)]


def forget(gallery: Gallery, name: str, *, compact_store: bool = True) -> ForgetReport:
    """Erase a person: rows, vectors in every index, heads trained with them; then compact the database file."""
    with gallery.write_lock():
        with gallery.session() as s:
            person = q.person_by_name(s, name)
            if person is None:
                raise PersonNotFoundError(f"no person named {name!r} in the gallery")
            n_photos = len(q.photos_of(s, person.id))
        with gallery.writing(gallery.models_in_store()) as w:
            removed = q.delete_person(w.session, q.person_by_name(w.session, name))
            w.removed(removed)
        gallery.save_indexes()  # before compacting: no file keeps their vectors once the rows are gone
        invalidated = delete_heads_with(gallery, name)
        if compact_store:
            compact(gallery.engine)
    return ForgetReport(name, n_photos, {m: len(ids) for m, ids in removed.items()}, invalidated, compact_store)
