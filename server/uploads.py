"""Reading uploaded images from a multipart body, within the per-request limits.

The body is parsed here, after the API key was checked (the endpoints declare no body parameters, so FastAPI
does not parse it before the dependencies run), and the whole body is already capped by
:class:`server.middleware.Limits`. Each file is read up to its own limit; its pixel count is read from the image
header (no decoding) so that a small file that decodes into a huge bitmap is refused before the library decodes
it. Whatever the header check cannot read is left to the library's loader, which gives the same reason as the CLI.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.config import MB, ServerOptions
from server.problems import Problem

MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


def multipart_body(*fields: str, required: Sequence[str] = ()) -> dict:
    """The OpenAPI ``requestBody`` of an endpoint that reads these file fields itself (shown in /docs)."""
    props = {f: {"type": "array", "items": {"type": "string", "format": "binary"}} for f in fields}
    schema = {"type": "object", "properties": props, "required": list(required or fields)}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


async def read_images(request: Request, options: ServerOptions,
                      fields: Sequence[str]) -> dict[str, list[tuple[str, bytes]]]:
    """Field -> ``(file name, bytes)`` of each uploaded file, in order; every field must hold one at least."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Problem(415, f"send the images as multipart/form-data (curl -F {fields[0]}=@photo.jpg)",
                      "unsupported_media_type")
    try:
        form = await request.form(max_files=options.max_images, max_fields=MAX_FIELDS,
                                  max_part_size=MAX_FIELD_BYTES)
    except StarletteHTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise Problem(413, f"too many images: at most {options.max_images} per request", "too_many_images") from exc
        raise Problem(400, f"malformed multipart body: {exc.detail}", "bad_multipart") from exc
    try:
        out: dict[str, list[tuple[str, bytes]]] = {f: [] for f in fields}
        for key, value in form.multi_items():
            if key in out and isinstance(value, UploadFile):
                out[key].append(await _read_one(value, options))
    finally:
        await form.close()
    missing = [f for f, files in out.items() if not files]
    if missing:
        raise Problem(422, f"{missing[0]}: no image uploaded (curl -F {missing[0]}=@photo.jpg)", "missing_image")
    return out


async def _read_one(upload: UploadFile, options: ServerOptions) -> tuple[str, bytes]:
    name = upload.filename or "upload"
    data = await upload.read(options.max_image_bytes + 1)
    if len(data) > options.max_image_bytes:
        raise Problem(413, f"{name}: larger than the limit of {_mb(options.max_image_bytes)} per image", "too_large")
    pixels = _pixels(data)
    if pixels is not None and pixels[0] * pixels[1] > options.max_pixels:
        w, h = pixels
        raise Problem(413, f"{name}: {w}x{h} pixels is over the limit of {options.max_pixels / 1e6:g} megapixels "
                           f"per image", "too_many_pixels")
    return name, data


def _pixels(data: bytes) -> tuple[int, int] | None:
    """Width and height from the image header, or None when the header cannot be read (the loader says why)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # corrupt, unknown format, bomb: the library's loader reports it in its own words
        return None


def _mb(n: int) -> str:
    return f"{n / MB:g} MB" if n >= MB else f"{n / 1024:.0f} KB"
