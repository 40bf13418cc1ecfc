"""Rebuilding the FAISS caches and checking that the gallery is consistent."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from db import queries as q
from gallery.errors import GalleryDamagedError
from gallery.indexes import index_kind_key
from gallery.store import Gallery
from gallery.vectors import unusable_rows
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReindexResult:
    model: str
    vectors: int
    kind: str
    path: str

    def to_dict(self) -> dict:
        return asdict(self)


def reindex(gallery: Gallery, models: Sequence[str] | None = None, kind: str | None = None) -> list[ReindexResult]:
    """Rebuild each index from the database. ``kind`` flat or ivf is remembered in the database, so any later
    rebuild (after a crash, by a reader) makes the same kind; ``auto`` forgets it (chosen by size again);
    None keeps what was chosen before."""
    damaged = gallery.integrity_problems()
    if damaged:  # index files are rebuilt from the database: a damaged one cannot be repaired this way
        raise GalleryDamagedError(f"the database file is damaged ({damaged[0]}): reindex cannot repair it; "
                                  f"run facegallery check (see README, 'A damaged database')")
    with gallery.writing() as w:
        chosen = list(models or q.embedders_in_store(w.session))
        for m in chosen:
            if kind == "auto":
                q.delete_setting(w.session, index_kind_key(m))
            elif kind is not None:
                q.set_setting(w.session, index_kind_key(m), kind)
            w.rebuild_index(m, None if kind == "auto" else kind)
    out = []
    for m in chosen:
        index = gallery.index(m)
        if index is None:
            out.append(ReindexResult(m, 0, "none", ""))
        else:
            out.append(ReindexResult(m, len(index), index.kind, str(gallery.index_path(m))))
    return out


@dataclass(frozen=True)
class CheckReport:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": list(self.problems), "counts": dict(self.counts),
                "notes": list(self.notes)}


DAMAGED_ADVICE = ("the database file is damaged: keep a copy of the gallery folder, then restore the last backup "
                  "(facegallery restore BACKUP) or salvage what can be read (facegallery salvage NEW_FILE, then "
                  "facegallery restore NEW_FILE --force); see README, 'A damaged database'")


def check(gallery: Gallery, attempts: int = 10, *, full: bool = False, repair: bool = False) -> CheckReport:
    """The database file is sound (SQLite's ``quick_check``; ``full``: ``integrity_check``), every stored vector
    is usable, every embedding row has its vector in its index and vice versa, rows reference existing parents.

    ``repair`` first deletes unusable vectors (NaN, wrong size, zero) through the one write path; a photo left
    with no vector goes with them. Readers take no lock, so a writer may commit while the check reads: it is
    repeated until the database state (every embedder's stamp) is the same before and after, so a commit landing
    mid-check is never reported as damage.
    """
    damaged = gallery.integrity_problems(full)
    if damaged:  # nothing else can be trusted (or even read) in a damaged file
        shown = [f"database: {p}" for p in damaged[:10]]
        if len(damaged) > 10:
            shown.append(f"database: ... and {len(damaged) - 10} more")
        return CheckReport(shown, {}, [DAMAGED_ADVICE])
    repaired = repair_vectors(gallery) if repair else []
    report = _check_repeated(gallery, attempts)
    if repaired:
        return CheckReport(report.problems, report.counts, report.notes + repaired)
    return report


def repair_vectors(gallery: Gallery) -> list[str]:
    """Delete every unusable stored vector (and a photo left with none); returns what was done, one line each."""
    done = []
    with gallery.writing() as w:
        for m in [q.library_key(m) for m in q.library_models(w.session)]:
            bad = [i for i, _ in unusable_rows(w.session, m)]
            if bad:  # a library face's vector: the face goes with it (a re-scan of a changed file finds it again)
                faces = q.library_face_ids_of_vectors(w.session, m.removeprefix(q.LIBRARY_PREFIX), bad)
                w.removed(q.delete_library_faces(w.session, sorted(set(faces.values()))))
                done.append(f"repaired: deleted {len(bad)} unusable {m} vector(s) and their library face(s)")
        for m in q.embedders_in_store(w.session):
            bad = [i for i, _ in unusable_rows(w.session, m)]
            if not bad:
                continue
            photos = {photo for _, _, photo, _ in q.owners(w.session, bad).values()}
            q.delete_embeddings(w.session, bad)
            w.removed({m: bad})
            emptied = q.photos_without_embeddings(w.session, photos)
            for photo_id in emptied:
                w.removed(q.delete_photo_by_id(w.session, photo_id))
            done.append(f"repaired: deleted {len(bad)} unusable {m} vector(s)"
                        + (f" and {len(emptied)} photo(s) left without any" if emptied else ""))
    return done


def _check_repeated(gallery: Gallery, attempts: int) -> CheckReport:
    for _ in range(attempts):
        before = _stamps(gallery)
        report = _check_once(gallery)
        if _stamps(gallery) == before:
            return report
        time.sleep(random.uniform(0.05, 0.3))  # out of step with the writer's commits
    note = "the gallery kept changing during the check (a writer is running): check again when it is done"
    return CheckReport(report.problems, report.counts, report.notes + [note])


def _stamps(gallery: Gallery) -> dict[str, dict]:
    return {m: gallery.index_stamp(m) for m in gallery.vector_sets()}


def _check_once(gallery: Gallery) -> CheckReport:
    problems: list[str] = []
    with gallery.session() as s:
        counts = q.table_counts(s)
        counts.update({f"library_{k}": v for k, v in q.library_counts(s).items() if k in ("photos", "faces")})
        problems += [f"{n} {what}" for what, n in q.orphan_counts(s).items() if n]
        problems += [f"{n} {what}" for what, n in q.library_orphan_counts(s).items() if n]
    notes: list[str] = []
    for m in gallery.vector_sets():
        bad = _unusable(gallery, m)
        problems += bad[1]
        problems.extend(_check_index(gallery, m, notes, bad[0]))
    return CheckReport(problems, counts, notes)


def _unusable(gallery: Gallery, model: str, shown: int = 5) -> tuple[set[int], list[str]]:
    """The ids of ``model``'s unusable stored vectors and a problem line naming each (the first ``shown``)."""
    with gallery.session() as s:
        bad = unusable_rows(s, model)
        owners = q.owners(s, [i for i, _ in bad[:shown]])
        paths = q.photo_paths(s, [o[2] for o in owners.values()])
    lines = []
    if model.startswith(q.LIBRARY_PREFIX):
        lines += [f"{model}: library vector {i} {why}: facegallery check --repair deletes it" for i, why in bad[:shown]]
        bad_shown = []
    else:
        bad_shown = bad[:shown]
    for emb_id, why in bad_shown:
        _, name, photo_id, aug = owners.get(emb_id, (None, "?", None, 0))
        lines.append(f"{model}: embedding {emb_id} (person {name!r}, photo {paths.get(photo_id, '?')}, copy {aug}) "
                     f"{why}: facegallery check --repair deletes it")
    if len(bad) > shown:
        lines.append(f"{model}: ... and {len(bad) - shown} more unusable vectors")
    return {i for i, _ in bad}, lines


def _check_index(gallery: Gallery, model: str, notes: list[str], unusable: set[int] = frozenset()) -> list[str]:
    """Compare the index file on disk with the database rows.

    A missing or stale file is not damage (an interrupted writer leaves one; the file is a cache): it is
    rebuilt from the database, noted, and then checked like any other.
    """
    with gallery.session() as s:
        db_ids = np.sort(q.embedding_ids(s, model))
    if unusable:  # reported on their own above; an index never holds them
        db_ids = np.setdiff1d(db_ids, np.fromiter(unusable, np.int64, len(unusable)))
    if gallery.settings.milvus_uri is not None:  # a Milvus collection: checked as the gallery serves it
        gallery.forget_cached_index(model)
        index = gallery.index(model)
    else:
        index = VectorIndex.load(gallery.index_path(model), expected_stamp=gallery.index_stamp(model).to_dict())
        if index is None:
            notes.append(f"{model}: index file missing or stale; rebuilt from the database")
            gallery.forget_cached_index(model)
            index = gallery.index(model)
    idx_ids = np.sort(index.ids()) if index is not None else np.zeros(0, np.int64)
    missing = np.setdiff1d(db_ids, idx_ids)
    extra = np.setdiff1d(idx_ids, db_ids)
    out = []
    if len(missing):
        out.append(f"{model}: {len(missing)} embedding rows have no vector in the index")
    if len(extra):
        out.append(f"{model}: {len(extra)} index vectors have no embedding row")
    return out
