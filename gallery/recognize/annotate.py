"""Drawing identification results onto a copy of the photo (Pillow only)."""
from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gallery.results import ImageResult
from indexer.atomic import write_atomic
from indexer.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

COLOURS = {"match": (46, 204, 64), "ambiguous": (255, 165, 0), "unknown": (230, 40, 40),
           "low_quality": (150, 150, 150)}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _label(face, models) -> tuple[str, str]:
    parts, status = [], "unknown"
    for i, m in enumerate(models):
        a = face.models.get(m)
        if a is None:
            continue
        if i == 0:
            status = a.status
        who = a.identity if a.identity else "unknown"
        parts.append(f"{m}: {who} {a.score:.2f}" + ("?" if a.status == "ambiguous" else ""))
    return " | ".join(parts), status


def annotate(img: Image.Image, result: ImageResult, models) -> Image.Image:
    """A copy of ``img`` (same size) with a box and a label per face, coloured by the first model's status."""
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    font = _font(max(11, round(max(out.size) / 45)))
    for face in result.faces:
        text, status = _label(face, models)
        colour = COLOURS[status]
        x1, y1, x2, y2 = face.box
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        tb = draw.textbbox((0, 0), text, font=font)
        th, tw = tb[3] - tb[1] + 4, tb[2] - tb[0] + 6
        ty = y1 - th if y1 - th >= 0 else min(y2, out.height - th)
        draw.rectangle([x1, ty, x1 + tw, ty + th], fill=colour)
        draw.text((x1 + 3, ty + 1), text, fill=(0, 0, 0), font=font)
    return out


def save_annotated(img: Image.Image, result: ImageResult, models, out_dir: Path, stem: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.annotated.png"
    drawn = annotate(img, result, models)
    write_atomic(path, lambda tmp: drawn.save(tmp, format="PNG"))
    return path


def annotate_source(source, name: str, result: ImageResult, models) -> Image.Image | None:
    """Load ``source`` (a path or bytes) again and draw ``result`` on it; None when it can no longer be read
    (the file changed since it was identified)."""
    try:
        return annotate(load_image(source, name=name), result, models)
    except ImageLoadError as exc:
        log.warning("cannot re-read %s for drawing: %s", name, exc.reason)
        return None
