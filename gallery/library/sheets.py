"""Face thumbnails from library photos and the contact sheet of a cluster: the grid people look at to name it."""
from __future__ import annotations

import logging
import math
from collections.abc import MutableMapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from db import queries as q
from gallery.enroll.scan import key_path
from gallery.store import Gallery
from indexer.atomic import write_atomic
from indexer.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

THUMB = 96
COLUMNS = 8
PHOTO_SIDE = 360  # longest side of the downscaled photo a boxed face is drawn on
BOX_COLOUR = (46, 204, 64)
HEADER = 24
PAD = 4


def face_thumbnail(image: Image.Image, box: Sequence[float], size: int = THUMB, margin: float = 0.25) -> Image.Image:
    """A square ``size`` x ``size`` thumbnail of the face in ``box`` with a ``margin`` of context around it."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    crop = image.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    return crop.resize((size, size), Image.Resampling.BILINEAR)


def library_thumbnails(faces: Sequence, size: int = THUMB) -> list[Image.Image]:
    """Thumbnails of ``(face row, photo row)`` pairs; a photo that can no longer be read gives a grey tile."""
    cache: dict[str, Image.Image | None] = {}
    out = []
    for face, photo in faces:
        if photo.path not in cache:
            try:
                cache = {photo.path: load_image(key_path(photo.path))}  # one photo decoded at a time
            except ImageLoadError as exc:
                log.warning("no thumbnail for face %d: %s", face.id, exc)
                cache = {photo.path: None}
        img = cache[photo.path]
        out.append(face_thumbnail(img, face.box, size) if img is not None
                   else Image.new("RGB", (size, size), (128, 128, 128)))
    return out


def contact_sheet(thumbnails: Sequence[Image.Image], title: str, columns: int = COLUMNS) -> Image.Image:
    """A grid of ``thumbnails`` (all the same size) under a one-line ``title``."""
    if not thumbnails:
        raise ValueError("a contact sheet needs at least one thumbnail")
    w, h = thumbnails[0].size
    cols = min(columns, len(thumbnails))
    rows = math.ceil(len(thumbnails) / cols)
    sheet = Image.new("RGB", (PAD + cols * (w + PAD), HEADER + PAD + rows * (h + PAD)), (255, 255, 255))
    ImageDraw.Draw(sheet).text((PAD, 6), title, fill=(0, 0, 0))
    for i, thumb in enumerate(thumbnails):
        r, c = divmod(i, cols)
        sheet.paste(thumb, (PAD + c * (w + PAD), HEADER + PAD + r * (h + PAD)))
    return sheet


def sheet_title(cluster_id: int, size: int, shown: int) -> str:
    return f"cluster {cluster_id} - {size} faces" + (f" (showing {shown})" if shown < size else "")


def write_contact_sheet(path: Path, cluster_id: int, faces: Sequence, *, max_thumbnails: int = 48) -> Path:
    """Write the contact sheet of one cluster (``(face row, photo row)`` pairs) as a PNG at ``path``."""
    shown = list(faces)[:max_thumbnails]
    sheet = contact_sheet(library_thumbnails(shown), sheet_title(cluster_id, len(faces), len(shown)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


# -- by face id (the web app's Library and person pages) --------------------------------------------------------
def thumbnails_of_faces(gallery: Gallery, face_ids: Sequence[int], size: int = THUMB,
                        cache: MutableMapping | None = None) -> list[Image.Image]:
    """Thumbnails of library faces by id, in the order given; a face no longer in the library, or whose photo can
    no longer be read, gives a grey tile. ``cache`` (optional, any mapping): thumbnails kept by photo path, sha256,
    box and size, so an unchanged face is not decoded again."""
    with gallery.session() as s:
        rows = q.library_faces(s, face_ids)
    out: list[Image.Image] = []
    for face_id in face_ids:
        row = rows.get(int(face_id))
        if row is None:
            out.append(Image.new("RGB", (size, size), (128, 128, 128)))
            continue
        key = ("thumb", *_face_key(*row), size)
        thumb = cache.get(key) if cache is not None else None
        if thumb is None:
            thumb = library_thumbnails([row], size)[0]
            if cache is not None:
                cache[key] = thumb
        out.append(thumb)
    return out


def boxed_photos(gallery: Gallery, face_ids: Sequence[int], max_side: int = PHOTO_SIDE,
                 cache: MutableMapping | None = None) -> list[Image.Image | None]:
    """For each library face id, a copy of its photo downscaled to at most ``max_side`` pixels with the face boxed;
    None where the face is gone or the photo can no longer be read. ``cache``: as :func:`thumbnails_of_faces`."""
    with gallery.session() as s:
        rows = q.library_faces(s, face_ids)
    out: list[Image.Image | None] = []
    for face_id in face_ids:
        row = rows.get(int(face_id))
        if row is None:
            out.append(None)
            continue
        key = ("boxed", *_face_key(*row), max_side)
        picture = cache.get(key) if cache is not None else None
        if picture is None:
            picture = _boxed(*row, max_side)
            if cache is not None and picture is not None:
                cache[key] = picture
        out.append(picture)
    return out


def _face_key(face, photo) -> tuple:
    return photo.path, photo.sha256, *face.box


def _boxed(face, photo, max_side: int) -> Image.Image | None:
    try:
        img = load_image(key_path(photo.path))
    except ImageLoadError as exc:
        log.warning("cannot show library face %d: %s", face.id, exc)
        return None
    scale = min(1.0, max_side / max(img.size))
    small = img.convert("RGB")
    if scale < 1.0:
        small = small.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
    x1, y1, x2, y2 = (v * scale for v in face.box)
    ImageDraw.Draw(small).rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=max(2, round(max(small.size) / 150)))
    return small
