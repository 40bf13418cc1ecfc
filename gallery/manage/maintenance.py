"""Rebuilding the FAISS caches and checking that the gallery is consistent."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from db import queries as q
from gallery.store import Gallery
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReindexResult:
    model: str
    vectors: int
    kind: str
    path: str

    def to_dict(self) -> dict:
        return {"model": self.model, "vectors": self.vectors, "kind": self.kind, "path": self.path}


def reindex(gallery: Gallery, models: Sequence[str] | None = None, kind: str | None = None) -> list[ReindexResult]:
    """Rebuild each index from the database (``kind`` forces flat or ivf; default: chosen by size)."""
    with gallery.writing() as w:
        chosen = list(models or q.embedders_in_store(w.session))
        for m in chosen:
            w.rebuild_index(m, kind)
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


def check(gallery: Gallery, attempts: int = 10) -> CheckReport:
    """Every embedding row has its vector in its index and vice versa; rows reference existing parents.

    Readers take no lock, so a writer may commit while the check reads: it is repeated until the database state
    (every embedder's stamp) is the same before and after, so a commit landing mid-check is never reported as
    damage.
    """
    for _ in range(attempts):
        before = _stamps(gallery)
        report = _check_once(gallery)
        if _stamps(gallery) == before:
            return report
        time.sleep(random.uniform(0.05, 0.3))  # out of step with the writer's commits
    note = "the gallery kept changing during the check (a writer is running): check again when it is done"
    return CheckReport(report.problems, report.counts, report.notes + [note])


def _stamps(gallery: Gallery) -> dict[str, dict]:
    return {m: gallery.index_stamp(m) for m in gallery.models_in_store()}


def _check_once(gallery: Gallery) -> CheckReport:
    problems: list[str] = []
    with gallery.session() as s:
        counts = q.table_counts(s)
        problems += [f"{n} {what}" for what, n in q.orphan_counts(s).items() if n]
    notes: list[str] = []
    for m in gallery.models_in_store():
        problems.extend(_check_index(gallery, m, notes))
    return CheckReport(problems, counts, notes)


def _check_index(gallery: Gallery, model: str, notes: list[str]) -> list[str]:
    """Compare the index file on disk with the database rows.

    A missing or stale file is not damage (an interrupted writer leaves one; the file is a cache): it is
    rebuilt from the database, noted, and then checked like any other.
    """
    with gallery.session() as s:
        db_ids = np.sort(q.embedding_ids(s, model))
    index = VectorIndex.load(gallery.index_path(model), expected_stamp=gallery.index_stamp(model).to_dict())
    if index is None:
        notes.append(f"{model}: index file missing or stale; rebuilt from the database")
        gallery.forget_cached_index(model)
        index = gallery.index(model)
    idx_ids = np.sort(index.ids())
    missing = np.setdiff1d(db_ids, idx_ids)
    extra = np.setdiff1d(idx_ids, db_ids)
    out = []
    if len(missing):
        out.append(f"{model}: {len(missing)} embedding rows have no vector in the index")
    if len(extra):
        out.append(f"{model}: {len(extra)} index vectors have no embedding row")
    return out
