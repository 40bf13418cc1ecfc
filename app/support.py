"""What the web app (``app/page.py``) shows, computed here so the Streamlit script only lays things out.

The app process gets its settings from the ``facegallery app`` command through one environment variable
(:data:`APP_SETTINGS_ENV`, a JSON object of :class:`Settings` fields); started directly with ``streamlit run``
it falls back to the usual variables (``FACEGALLERY_HOME``, ``FACEGALLERY_DB_URL``, ``FACEGALLERY_WEIGHTS``).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from PIL import Image

from gallery.config import Settings
from gallery.errors import GalleryError
from gallery.manage.models import list_models, stored_weights
from gallery.manage.people import list_people
from gallery.recognize.annotate import annotate_source
from gallery.recognize.identify import identify
from gallery.results import FaceResult, IdentifyReport, ImageResult, ModelAnswer
from gallery.store import Gallery

log = logging.getLogger(__name__)

APP_SETTINGS_ENV = "FACEGALLERY_APP_SETTINGS"
#: Uploads larger than this are refused before decoding (Streamlit's own limit is set higher by `facegallery app`).
MAX_UPLOAD_BYTES = 25 * 2**20
#: File types the upload widgets accept.
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp")
NO_FACE = "no face detected"

_PATH_FIELDS = ("home", "weights_dir")


def settings_to_env(settings: Settings) -> str:
    """``settings`` as the JSON document the app process reads from :data:`APP_SETTINGS_ENV`."""
    doc = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        doc[f.name] = str(value) if isinstance(value, Path) else value
    return json.dumps(doc, sort_keys=True)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """The app's settings: :data:`APP_SETTINGS_ENV` when set, else the usual environment variables."""
    environ = os.environ if environ is None else environ
    raw = environ.get(APP_SETTINGS_ENV)
    if not raw:
        kwargs = {}
        for var, name in (("FACEGALLERY_HOME", "home"), ("FACEGALLERY_DB_URL", "db_url"),
                          ("FACEGALLERY_WEIGHTS", "weights_dir")):
            if environ.get(var):
                kwargs[name] = Path(environ[var]) if name != "db_url" else environ[var]
        return Settings(**kwargs)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise GalleryError(f"${APP_SETTINGS_ENV} is not valid JSON: {exc}") from exc
    known = {f.name for f in fields(Settings)}
    kwargs = {k: v for k, v in doc.items() if k in known}
    for k in _PATH_FIELDS:
        if kwargs.get(k) is not None:
            kwargs[k] = Path(kwargs[k])
    return Settings(**kwargs)


# -- identify -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageView:
    """One uploaded image as the page shows it: the result, the annotated picture and the per-face table."""

    result: ImageResult
    annotated: Image.Image | None
    rows: list[dict]
    lines: list[str]

    @property
    def message(self) -> str | None:
        """Why there is nothing to show for this image (error or no face); None when faces were found."""
        if self.result.error is not None:
            return f"{self.result.path}: {self.result.error}"
        if not self.result.faces:
            return f"{self.result.path}: {NO_FACE}"
        return None


@dataclass(frozen=True)
class IdentifyView:
    images: list[ImageView]
    report: IdentifyReport | None = None
    models: tuple[str, ...] = ()
    random_weights: tuple[str, ...] = ()


def _too_large(data: bytes) -> str | None:
    if len(data) > MAX_UPLOAD_BYTES:
        return f"file too large ({len(data) / 2**20:.1f} MB > {MAX_UPLOAD_BYTES / 2**20:.0f} MB)"
    return None


def identify_view(
    gallery: Gallery,
    uploads: Sequence[tuple[str, bytes]],
    paths: Sequence[str] = (),
    *,
    models: Sequence[str] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> IdentifyView:
    """Identify uploads (``(file name, bytes)``) and server-side paths; refuse oversize uploads up front."""
    # Each item is either a source to identify or the result of refusing it, in the order given.
    items: list[tuple[str, bytes] | str | ImageResult] = []
    for name, data in uploads:
        reason = _too_large(data)
        items.append(ImageResult(path=name, error=reason) if reason else (name, data))
    items.extend(p.strip() for p in paths if p.strip())
    sources = [it for it in items if not isinstance(it, ImageResult)]
    if not sources:
        return IdentifyView([ImageView(r, None, [], []) for r in items])
    report = identify(gallery, sources, models=models, threshold=dict(thresholds or {}))
    results = iter(report.images)
    views = [
        ImageView(it, None, [], []) if isinstance(it, ImageResult) else _view(it, next(results), report.models)
        for it in items
    ]
    return IdentifyView(views, report, report.models, report.random_weights)


def _view(src, res: ImageResult, models: Sequence[str]) -> ImageView:
    if res.error is not None:
        return ImageView(res, None, [], [])
    name, data = src if isinstance(src, tuple) else (src, src)
    picture = annotate_source(data, name, res, models)  # None: changed since identify; the table still shows
    return ImageView(res, picture, face_rows(res, models), [face_line(f, models) for f in res.faces])


def answer_label(a: ModelAnswer) -> str:
    """``name``, ``name (ambiguous)`` or ``unknown``."""
    if a.identity is None:
        return "unknown"
    return f"{a.identity} (ambiguous)" if a.status == "ambiguous" else a.identity


def face_rows(res: ImageResult, models: Sequence[str]) -> list[dict]:
    """One table row per face: the answer and score of every embedder, the head's answer where one exists."""
    rows = []
    for f in res.faces:
        x1, y1, x2, y2 = (round(v) for v in f.box)
        row = {"face": str(f.index + 1), "box": f"{x1},{y1}-{x2},{y2}"}
        for m in models:
            a = f.models.get(m)
            if a is None:
                continue
            row[m] = answer_label(a)
            row[f"{m} score"] = f"{a.score:.3f}"
            if a.head is not None:
                row[f"{m} head"] = f"{a.head.identity} ({a.head.probability:.2f})"
        rows.append(row)
    return rows


def face_line(face: FaceResult, models: Sequence[str]) -> str:
    """A one-line summary of a face for the page: ``Face 1: name (dlib 0.975 match; ...)``."""
    first = face.models.get(models[0]) if models else None
    who = answer_label(first) if first is not None else "unknown"
    parts = [f"{m} {a.score:.3f} {a.status}" for m in models if (a := face.models.get(m)) is not None]
    return f"Face {face.index + 1}: {who} ({'; '.join(parts)})"


# -- gallery summary ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsRow:
    model: str
    status: str  # "present" | "random weights" | "missing"
    source: str
    in_gallery: bool


@dataclass(frozen=True)
class GallerySummary:
    home: str
    people: int
    photos: int
    embeddings: dict[str, int]
    weights: list[WeightsRow]

    @property
    def empty(self) -> bool:
        return not any(self.embeddings.values())


def summarize(gallery: Gallery) -> GallerySummary:
    """People, photos and embeddings per embedder, and where each embedder's weights come from."""
    people = list_people(gallery)
    totals: dict[str, int] = {}
    for p in people:
        for m, n in p.embeddings.items():
            totals[m] = totals.get(m, 0) + n
    return GallerySummary(
        home=str(gallery.settings.home), people=len(people), photos=sum(p.photos for p in people),
        embeddings=dict(sorted(totals.items())), weights=weights_rows(gallery),
    )


def weights_rows(gallery: Gallery) -> list[WeightsRow]:
    """Weights status per embedder; "random weights" when the app runs with, or the gallery was built with, them."""
    stored = stored_weights(gallery)
    rows = []
    for st in list_models(gallery.settings.weights_dir, gallery):
        random = gallery.settings.weights.get(st.name) == "random" or (stored.get(st.name) or "").startswith("random")
        explicit = gallery.settings.weights.get(st.name)
        if random:
            status, source = "random weights", "seeded random init (development only)"
        elif explicit or st.present:
            status, source = "present", explicit or st.source or ""
        else:
            status, source = "missing", "import with: facegallery models import"
        rows.append(WeightsRow(st.name, status, source, st.in_gallery))
    return rows


def usable_models(summary: GallerySummary) -> list[str]:
    """Embedders the app can run now: weights present or random (offered on the enroll page)."""
    return [w.model for w in summary.weights if w.status != "missing"]
