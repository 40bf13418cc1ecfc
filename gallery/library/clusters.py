"""``facegallery clusters``: group the library faces nobody is assigned to, under ids that stay put.

Every run clusters all unassigned faces again with :func:`gallery.library.clustering.cluster` (cost ~ n·k on a
FAISS k-nearest-neighbour graph) and then maps the new groups onto the stored ids
(:func:`gallery.library.clustering.stable_ids`): a group keeps the id most of its members had, so new photos join
the clusters the user has seen and a cluster is never renumbered from scratch; a new group gets a new id, never one
used before. Faces left alone (noise, singletons) have no cluster. Ids are stored on the faces (one transaction).
Merges the user made (:func:`gallery.library.naming.merge_clusters`) are remembered per face and re-applied.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from db import queries as q
from gallery.errors import InvalidInputError
from gallery.library import clustering
from gallery.library.suggest import library_model, q_dim, refresh_library_matches
from gallery.results import display
from gallery.store import Gallery
from gallery.vectors import decode_rows

log = logging.getLogger(__name__)

NEXT_ID_KEY = "library.next_cluster_id"
MODEL_KEY = "library.cluster_model"
METHOD_KEY = "library.cluster_method"
MERGES_KEY = "library.cluster_merges"


@dataclass(frozen=True)
class ClusterSummary:
    id: int
    size: int
    face_ids: tuple[int, ...]
    suggested: str | None = None  # the enrolled person most of its faces are suggested for
    suggested_faces: int = 0
    sheet: str | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "size": self.size, "face_ids": list(self.face_ids), "suggested": self.suggested,
                "suggested_faces": self.suggested_faces, "sheet": self.sheet}


@dataclass(frozen=True)
class ClustersReport:
    model: str | None
    method: str | None
    clusters: list[ClusterSummary]  # size >= min_size, largest first
    unassigned: int  # library faces with no person
    clustered: int  # of those, in a cluster of any size
    kept_ids: int  # clusters that kept an id from the previous run
    new_ids: int
    seconds: float
    random_weights: bool = False
    min_size: int = 2

    @property
    def unclustered(self) -> int:
        return self.unassigned - self.clustered

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "clusters": [c.to_dict() for c in self.clusters],
                "unassigned": self.unassigned, "clustered": self.clustered, "unclustered": self.unclustered,
                "kept_ids": self.kept_ids, "new_ids": self.new_ids, "seconds": round(self.seconds, 3),
                "random_weights": self.random_weights, "min_size": self.min_size}


def update_clusters(gallery: Gallery, *, model: str | None = None, method: str | None = None) -> ClustersReport:
    """Refresh the suggestions, cluster every unassigned library face again and store the ids (see the module
    docstring)."""
    method = method or clustering.DEFAULT_METHOD
    if method not in clustering.METHODS:
        raise InvalidInputError(f"unknown clustering method {method!r}; known: {', '.join(clustering.METHODS)}")
    start = time.perf_counter()
    with gallery.write_lock():
        refresh_library_matches(gallery)  # people enrolled or forgotten since the last scan change suggestions
        model = library_model(gallery, model)
        if model is None:
            return ClustersReport(None, method, [], 0, 0, 0, 0, time.perf_counter() - start)
        with gallery.session() as s:
            _, rows = q.library_vectors(s, model, unassigned_only=True)
            old = q.cluster_of_faces(s)
            next_id = int(q.get_setting(s, NEXT_ID_KEY) or 1)
            merges = merged_faces(s)
        face_ids, vecs, bad = decode_rows(rows, q_dim(rows)) if rows else (None, None, [])
        if bad:
            log.warning("%d library vector(s) are unusable and left out of the clusters (facegallery check)",
                        len(bad))
        assignment: dict[int, int] = {}
        if rows and len(face_ids):
            labels = clustering.cluster(vecs, method, clustering.ClusterParams.for_model(model, method))
            assignment = keep_merges(clustering.stable_ids(old, face_ids, labels, next_id), merges)
        merges = {f: c for f, c in merges.items() if f in assignment}  # named or gone faces leave the record
        used = set(assignment.values())
        kept = len(used & set(old.values()))
        new_next = max([next_id - 1, *used]) + 1
        with gallery.writing() as w:
            q.set_clusters(w.session, assignment)
            q.set_setting(w.session, NEXT_ID_KEY, str(new_next))
            q.set_setting(w.session, MODEL_KEY, model)
            q.set_setting(w.session, METHOD_KEY, method)
            q.set_setting(w.session, MERGES_KEY, json.dumps({str(f): c for f, c in sorted(merges.items())}))
    report = list_clusters(gallery, min_size=1)
    return ClustersReport(model, method, report.clusters, report.unassigned, report.clustered, kept,
                          len(used) - kept, time.perf_counter() - start,
                          gallery.settings.weights.get(model) == "random")


def merged_faces(s) -> dict[int, int]:
    """face id -> the cluster a merge put it in (``merge_clusters``), kept so that re-clustering honours it."""
    return {int(f): int(c) for f, c in json.loads(q.get_setting(s, MERGES_KEY) or "{}").items()}


def keep_merges(assignment: dict[int, int], merges: dict[int, int]) -> dict[int, int]:
    """Re-apply the user's merges to a fresh assignment: a new cluster most of whose merged faces were put in
    cluster X by a merge becomes X (two groups the algorithm split again are joined again)."""
    if not merges:
        return assignment
    members: dict[int, list[int]] = {}
    for face, cid in assignment.items():
        members.setdefault(cid, []).append(face)
    relabel = {}
    for cid, faces in members.items():
        votes = Counter(merges[f] for f in faces if f in merges)
        if votes:
            target, n = votes.most_common(1)[0]
            if 2 * n >= len(faces) and target != cid:
                relabel[cid] = target
    return {face: relabel.get(cid, cid) for face, cid in assignment.items()}


def list_clusters(gallery: Gallery, *, min_size: int = 2, sheet_dir: str | Path | None = None,
                  max_thumbnails: int = 48) -> ClustersReport:
    """The stored clusters of size >= ``min_size``, largest first (ties: smaller id first); ``sheet_dir``: write a
    contact sheet PNG per cluster there (:mod:`gallery.library.sheets`)."""
    if min_size < 1:
        raise InvalidInputError("--min-size must be >= 1")
    with gallery.session() as s:
        members = q.library_faces_where(s, clustered=True)
        counts = q.library_counts(s)
        names = q.person_names(s, sorted({f.suggested_person_id for f, _ in members
                                          if f.suggested_person_id is not None}))
        model = q.get_setting(s, MODEL_KEY)
        method = q.get_setting(s, METHOD_KEY)
    by_cluster: dict[int, list] = {}
    for face, photo in members:
        by_cluster.setdefault(face.cluster_id, []).append((face, photo))
    order = sorted(by_cluster, key=lambda c: (-len(by_cluster[c]), c))
    out = []
    for cid in order:
        faces = by_cluster[cid]
        if len(faces) < min_size:
            continue
        votes = Counter(f.suggested_person_id for f, _ in faces if f.suggested_person_id is not None)
        top = votes.most_common(1)
        sheet = None
        if sheet_dir is not None:
            from gallery.library.sheets import write_contact_sheet

            sheet = display(write_contact_sheet(Path(sheet_dir) / f"cluster-{cid:05d}.png", cid, faces,
                                                max_thumbnails=max_thumbnails))
        out.append(ClusterSummary(cid, len(faces), tuple(f.id for f, _ in faces),
                                  names.get(top[0][0]) if top else None, top[0][1] if top else 0, sheet))
    return ClustersReport(model, method, out, counts["unassigned"], counts["clustered"], 0, 0, 0.0,
                          min_size=min_size)
