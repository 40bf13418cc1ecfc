"""Listing and forgetting people."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from db import queries as q
from gallery.enroll.scan import person_name
from gallery.errors import PersonNotFoundError
from gallery.store import Gallery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersonSummary:
    id: int
    name: str
    photos: int
    faces: int
    embeddings: dict[str, int]
    library: int = 0  # library faces assigned to them (named clusters, move, their reference photos)
    suggested: int = 0  # unassigned library faces that match them at the open-set threshold

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ForgetReport:
    name: str
    photos: int
    embeddings_removed: dict[str, int]
    heads_invalidated: list[str] = field(default_factory=list)
    compacted: bool = False
    library_faces: int = 0  # library faces assigned to or suggested for them, erased too

    def to_dict(self) -> dict:
        return {"name": self.name, "photos": self.photos, "embeddings_removed": dict(self.embeddings_removed),
                "heads_invalidated": list(self.heads_invalidated), "compacted": self.compacted,
                "library_faces": self.library_faces}


def list_people(gallery: Gallery) -> list[PersonSummary]:
    with gallery.session() as s:
        library = q.library_counts_by_person(s)
        return [PersonSummary(pid, name, photos, faces, emb, *library.get(pid, (0, 0)))
                for pid, name, photos, faces, emb in q.people_counts(s)]


def find_person(s, name: str):
    """The person ``name`` means: compared in Unicode NFC without surrounding blanks, as enrollment stores names
    (a name stored by an older version in another form is still found when only one matches)."""
    wanted = person_name(name)
    person = q.person_by_name(s, wanted)
    if person is None:
        matches = [p for p in q.all_people(s) if person_name(p.name) == wanted]
        person = matches[0] if len(matches) == 1 else None
    return person


def forget(gallery: Gallery, name: str, *, compact_store: bool = True) -> ForgetReport:
    """Erase a person: rows, vectors in every index, heads trained with them, the library faces assigned to or
    suggested for them (their photos stay in the library, so a re-scan of the unchanged files adds nothing back);
    then compact the database file.

    The delete and a pending-erasure record commit together; the rest (index files, heads, compaction) is
    finished right after, or by the next writer when this process is killed first (:mod:`.erasure`).
    """
    from gallery.manage.erasure import finish_pending  # heads and torch: only a forget needs them

    with gallery.write_lock():
        with gallery.session() as s:
            person = find_person(s, name)
            if person is None:
                raise PersonNotFoundError(f"no person named {name!r} in the gallery")
            person_id, name, n_photos = person.id, person.name, len(q.photos_of(s, person.id))
        with gallery.writing(gallery.models_in_store()) as w:
            library_faces = q.library_faces_of_people(w.session, person_id)
            w.removed(q.delete_library_faces(w.session, library_faces))
            removed = q.delete_person(w.session, q.person_by_name(w.session, name))
            q.add_pending_erasure(w.session, person_id)
            w.removed(removed)
        gallery.save_indexes()  # before compacting: no file keeps their vectors once the rows are gone
        invalidated = finish_pending(gallery, name=name, compact_store=compact_store)
    return ForgetReport(name, n_photos, {m: len(ids) for m, ids in removed.items()}, invalidated, compact_store,
                        len(library_faces))
