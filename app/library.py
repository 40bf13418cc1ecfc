"""What the web app's Library and Person pages show (issue 15), computed here so ``app/page.py`` only lays it out.

**Library**: scan a folder (:func:`scan_folder`: ``scan_library`` then ``update_clusters``), the unassigned
faces, and the clusters largest first as thumbnail grids (:func:`library_view`, a page of
:data:`CLUSTERS_PER_PAGE` clusters with up to :data:`THUMBS_PER_CLUSTER` thumbnails each), each with the person
most of its faces are suggested for; naming a cluster (:func:`name_cluster`) and merging two
(:func:`merge_clusters`). **Person**: the library photos of one person from ``find_person``, each a downscaled
copy with the face boxed, its score and whether the face is assigned to them or only matched
(:func:`person_view`).

Thumbnails and boxed photos are kept in one bounded in-process cache (:data:`IMAGE_CACHE`) keyed by photo path,
sha256 and box, so a Streamlit rerun does not decode every photo again. Errors the user can fix
(``gallery.errors.USER_ERRORS``) are raised to the page, which shows them as one line.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image

from gallery.errors import InvalidInputError
from gallery.library.clusters import ClusterSummary, list_clusters, update_clusters
from gallery.library.find import find_person
from gallery.library.naming import merge_clusters as merge
from gallery.library.naming import name_cluster as assign_cluster
from gallery.library.scan import scan_library
from gallery.library.sheets import boxed_photos, thumbnails_of_faces
from gallery.manage.people import list_people
from gallery.store import Gallery

CLUSTERS_PER_PAGE = 20
THUMBS_PER_CLUSTER = 12
THUMB_PX = 96
PHOTOS_SHOWN = 48
PHOTO_PX = 360


class ImageCache:
    """A thread-safe LRU mapping (Streamlit runs each browser session in its own thread)."""

    def __init__(self, max_items: int = 1500) -> None:
        self.max_items = max_items
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


#: ~1500 thumbnails of 96 px (27 KB each) or fewer boxed photos: tens of MB at most.
IMAGE_CACHE = ImageCache()


# -- library ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterView:
    id: int
    size: int
    thumbnails: list[Image.Image]
    suggested: str | None = None
    suggested_faces: int = 0

    @property
    def title(self) -> str:
        shown = len(self.thumbnails)
        more = f", showing {shown}" if shown < self.size else ""
        return f"Cluster {self.id}: {self.size} faces{more}"

    @property
    def suggestion(self) -> str | None:
        """``suggested: Jane (3 of 5 faces match)``, or None."""
        if self.suggested is None:
            return None
        return f"suggested: {self.suggested} ({self.suggested_faces} of {self.size} faces match)"


@dataclass(frozen=True)
class LibraryView:
    clusters: list[ClusterView]  # this page's clusters, largest first
    cluster_ids: list[int]  # every cluster of min_size+ faces, largest first (the merge choices)
    sizes: dict[int, int]
    unassigned: int
    unclustered: int
    page: int  # 0-based
    pages: int

    @property
    def summary(self) -> str:
        if not self.unassigned and not self.cluster_ids:
            return "No unassigned faces: scan a folder, or every face already has a person."
        clustered = self.unassigned - self.unclustered
        return (f"{self.unassigned} unassigned face(s): {clustered} in {len(self.cluster_ids)} cluster(s) "
                f"(largest first), {self.unclustered} on their own.")

    def choice(self, cluster_id: int) -> str:
        """How the merge selectboxes show a cluster."""
        return f"{cluster_id} ({self.sizes.get(cluster_id, 0)} faces)"


def library_view(gallery: Gallery, *, page: int = 0, per_page: int = CLUSTERS_PER_PAGE,
                 thumbs: int = THUMBS_PER_CLUSTER, min_size: int = 2) -> LibraryView:
    """The unassigned count and one page of clusters (``page`` 0-based, clamped), with their thumbnails."""
    report = list_clusters(gallery, min_size=min_size)
    pages = max(1, -(-len(report.clusters) // per_page))
    page = min(max(0, int(page)), pages - 1)
    shown: list[ClusterSummary] = report.clusters[page * per_page:(page + 1) * per_page]
    views = [ClusterView(c.id, c.size, thumbnails_of_faces(gallery, c.face_ids[:thumbs], THUMB_PX, IMAGE_CACHE),
                         c.suggested, c.suggested_faces) for c in shown]
    # faces in a cluster under min_size (one face left after the others were named) are not shown: on their own
    alone = report.unassigned - sum(c.size for c in report.clusters)
    return LibraryView(views, [c.id for c in report.clusters], {c.id: c.size for c in report.clusters},
                       report.unassigned, alone, page, pages)


def scan_folder(gallery: Gallery, folder: str, *, models: list[str] | None = None) -> list[tuple[str, str]]:
    """Scan ``folder`` into the library with ``models`` (None: every embedder with weights) and cluster the
    unassigned faces again; the outcome as ``(kind, line)`` messages (kind: success / info / warning) for the page;
    skipped files are named relative to ``folder``."""
    folder = folder.strip()
    if not folder:
        raise InvalidInputError("enter the path of a folder of photos on this machine")
    scan = scan_library(gallery, folder, models=models or None)
    clusters = update_clusters(gallery)
    found = len(scan.scanned)
    out = [("success", f"Scanned {found} photo(s) in {scan.root}: {scan.faces_added} face(s) found; "
                       f"{scan.unchanged} unchanged, {len(scan.removed)} removed. "
                       f"{sum(1 for c in clusters.clusters if c.size >= 2)} cluster(s) of 2+ faces.")]
    if scan.from_references or scan.suggested:
        out.append(("info", f"{scan.from_references} face(s) are enrolled reference photos (assigned); "
                            f"{scan.suggested} face(s) match an enrolled person (suggested)."))
    if scan.photos_without_face:
        out.append(("info", f"{scan.photos_without_face} photo(s) had no face."))
    if scan.skipped:
        root = scan.root.rstrip("/") + "/"
        out.append(("warning", f"{len(scan.skipped)} file(s) skipped: "
                               + "; ".join(f"{s.path.removeprefix(root)}: {s.reason}" for s in scan.skipped[:5])
                               + (" ..." if len(scan.skipped) > 5 else "")))
    for m, why in scan.models_skipped.items():
        out.append(("warning", f"{m} not used: {why}"))
    if scan.random_weights:
        out.append(("warning", "Random weights (development only): " + ", ".join(scan.random_weights)))
    return out


def name_cluster(gallery: Gallery, cluster_id: int, name: str) -> tuple[str, str]:
    """Assign every face of the cluster to ``name`` (enrolling them): (the person's stored name, the line the
    page shows)."""
    report = assign_cluster(gallery, int(cluster_id), name)
    who = f"{report.person} (new person)" if report.new_person else report.person
    line = f"Named cluster {cluster_id} {who}: {len(report.faces)} face(s) assigned, {report.enrolled} enrolled"
    if report.already_enrolled:
        line += f", {report.already_enrolled} already enrolled reference photo(s)"
    if report.moved_from:
        line += f", {len(report.moved_from)} taken from someone else"
    return report.person, line + ". Their photos are on the Person page."


def merge_clusters(gallery: Gallery, into: int, other: int) -> str:
    report = merge(gallery, int(into), int(other))
    return f"Merged cluster {report.merged} into cluster {report.into}: {report.faces} faces."


# -- person -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhotoView:
    path: str
    face_id: int
    picture: Image.Image | None  # downscaled, the face boxed; None when the photo can no longer be read
    score: float
    assigned: bool

    @property
    def status(self) -> str:
        return "assigned" if self.assigned else "matched"

    @property
    def caption(self) -> str:
        name = self.path.rsplit("/", 1)[-1]
        return f"{name}: {self.status}, score {self.score:.3f}"


@dataclass(frozen=True)
class PersonView:
    name: str
    model: str | None
    threshold: float | None
    photos: list[PhotoView]  # the first ``shown`` of ``total``, best first
    total: int
    random_weights: bool = False

    @property
    def summary(self) -> str:
        if self.model is None:
            return f"The library is empty: scan a folder on the Library page to find {self.name}'s photos."
        if not self.total:
            return (f"No library photo of {self.name} yet ({self.model}, threshold {self.threshold:.3f}): "
                    "scan a folder or name a cluster on the Library page.")
        assigned = sum(1 for p in self.photos if p.assigned)
        more = f"; showing the best {len(self.photos)}" if len(self.photos) < self.total else ""
        return (f"{self.total} library photo(s) of {self.name} ({self.model}, threshold {self.threshold:.3f}): "
                f"{assigned} assigned, {len(self.photos) - assigned} matched{more}.")


def people_names(gallery: Gallery) -> list[str]:
    """Everyone enrolled: people with library photos (assigned, then suggested) first, then by name."""
    people = list_people(gallery)
    return [p.name for p in sorted(people, key=lambda p: (-(p.library > 0), -(p.suggested > 0), p.name))]


def person_view(gallery: Gallery, name: str, *, limit: int = PHOTOS_SHOWN, max_side: int = PHOTO_PX) -> PersonView:
    """The library photos of ``name``, best first, the first ``limit`` with the face boxed."""
    report = find_person(gallery, name)
    shown = report.photos[:limit]
    pictures = boxed_photos(gallery, [p.face_id for p in shown], max_side, IMAGE_CACHE)
    photos = [PhotoView(p.path, p.face_id, pic, p.score, p.assigned) for p, pic in zip(shown, pictures)]
    return PersonView(report.query, report.model, report.threshold, photos, len(report.photos),
                      report.random_weights)
