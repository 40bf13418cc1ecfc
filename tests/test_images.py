"""Tests for indexer.images: every image in these tests is generated with Pillow in tmp_path."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from indexer.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    MIN_SIDE,
    ImageLoadError,
    downscale,
    file_sha256,
    load_image,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def _quadrants(width: int = 64, height: int = 32) -> np.ndarray:
    """Non-square RGB array: top-left red, top-right green, bottom-left blue, bottom-right white."""
    arr = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    arr[:h2, :w2], arr[:h2, w2:], arr[h2:, :w2], arr[h2:, w2:] = RED, GREEN, BLUE, WHITE
    return arr


def _close(pixel, colour, tol=40) -> bool:
    return all(abs(int(p) - int(c)) <= tol for p, c in zip(pixel, colour))


def _header(path, attribute: str):
    with Image.open(path) as im:
        return getattr(im, attribute)


def _reason(source, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kwargs)
    return info.value.reason


# ---------------------------------------------------------------------------------------------- modes -> RGB

def test_rgb_jpeg_roundtrip(tmp_path):
    path = _save(Image.fromarray(_quadrants()), tmp_path / "q.jpg", quality=95)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (64, 32)
    assert _close(img.getpixel((2, 2)), RED) and _close(img.getpixel((61, 29)), WHITE)


def test_rgba_composited_on_white(tmp_path):
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    img.paste((255, 0, 0, 128), (0, 0, 16, 32))
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out.mode == "RGB"
    assert out.getpixel((24, 5)) == WHITE  # fully transparent -> background, not the hidden red
    r, g, b = out.getpixel((5, 5))
    assert r == 255 and 120 <= g <= 135 and g == b  # half red over white


def test_la_composited_on_white(tmp_path):
    img = Image.new("LA", (32, 32), (0, 0))
    img.paste((0, 255), (0, 0, 16, 32))
    out = load_image(_save(img, tmp_path / "la.png"))
    assert out.getpixel((5, 5)) == (0, 0, 0) and out.getpixel((25, 5)) == WHITE


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (32, 32), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, 16, 32))
    path = _save(img, tmp_path / "p.gif", transparency=0)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == BLUE and out.getpixel((25, 5)) == WHITE


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (32, 32), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    out = load_image(_save(img, tmp_path / "p.png"))
    assert out.getpixel((3, 3)) == BLUE


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    assert _header(path, "mode") == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB" and _close(out.getpixel((16, 16)), RED, tol=10)


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], np.uint16).repeat(16, axis=1).repeat(16, axis=0)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = load_image(_save(img, tmp_path / "g16.png"))
    assert out.mode == "RGB" and out.size == (64, 16)
    got = [out.getpixel((x, 5)) for x in (8, 24, 40, 56)]
    assert [p[0] for p in got] == [0, 64, 128, 255]
    assert all(p[0] == p[1] == p[2] for p in got)


def test_32bit_int_and_float_tiff(tmp_path):
    ints = np.array([[0, 32768, 65535]], np.int32).repeat(16, axis=1).repeat(16, axis=0)
    out = load_image(_save(Image.fromarray(ints), tmp_path / "i.tif"))
    assert [out.getpixel((x, 3))[0] for x in (8, 24, 40)] == [0, 128, 255]
    floats = np.array([[0.0, 0.5, 1.0]], np.float32).repeat(16, axis=1).repeat(16, axis=0)
    path = _save(Image.fromarray(floats), tmp_path / "f.tif")
    assert _header(path, "mode") == "F"
    out = load_image(path)
    assert [out.getpixel((x, 3))[0] for x in (8, 24, 40)] == [0, 128, 255]


def test_one_bit_and_grey(tmp_path):
    bits = Image.new("1", (32, 32), 0)
    bits.paste(1, (0, 0, 16, 32))
    out = load_image(_save(bits, tmp_path / "b.png"))
    assert out.mode == "RGB" and out.getpixel((3, 3)) == WHITE and out.getpixel((30, 3)) == (0, 0, 0)
    grey = load_image(_save(Image.new("L", (32, 32), 77), tmp_path / "g.pgm"))
    assert grey.mode == "RGB" and grey.getpixel((5, 5)) == (77, 77, 77)


# ------------------------------------------------------------------------------------------ EXIF orientation

_EXPECTED = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # stored image must turn 90 degrees clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(_EXPECTED))
def test_exif_orientation_applied(tmp_path, orientation):
    stored = _quadrants(64, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(stored), tmp_path / f"o{orientation}.jpg", exif=exif, quality=95)
    out = load_image(path)
    expected = _EXPECTED[orientation](stored)
    assert out.size == (expected.shape[1], expected.shape[0])
    assert out.size == ((32, 64) if orientation >= 5 else (64, 32))
    width, height = out.size
    for x, y in [(2, 2), (width - 3, 2), (2, height - 3), (width - 3, height - 3)]:
        assert _close(out.getpixel((x, y)), expected[y, x]), (orientation, x, y)


# ------------------------------------------------------------------------------------------ multi-frame files

def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert _header(path, "n_frames") == 3
    out = load_image(path)
    assert out.mode == "RGB" and _close(out.getpixel((10, 10)), RED, tol=5)


def test_multipage_tiff_first_page(tmp_path):
    pages = [Image.new("RGB", (40, 20), GREEN), Image.new("RGB", (30, 30), BLUE)]
    path = tmp_path / "pages.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert _header(path, "n_frames") == 2
    out = load_image(path)
    assert out.size == (40, 20) and out.getpixel((5, 5)) == GREEN


def test_webp_lossless(tmp_path):
    out = load_image(_save(Image.fromarray(_quadrants()), tmp_path / "q.webp", lossless=True))
    assert np.array_equal(np.asarray(out), _quadrants())


# ------------------------------------------------------------------------------------------------ sources

def test_bytes_file_object_and_stream_sources(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_quadrants()).save(buf, "PNG")
    data = buf.getvalue()
    expected = _quadrants()
    assert np.array_equal(np.asarray(load_image(data)), expected)
    assert np.array_equal(np.asarray(load_image(bytearray(data))), expected)
    assert np.array_equal(np.asarray(load_image(io.BytesIO(data))), expected)
    (tmp_path / "q.png").write_bytes(data)
    with open(tmp_path / "q.png", "rb") as fh:
        assert np.array_equal(np.asarray(load_image(fh)), expected)
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "q.png"))), expected)

    class ReadOnlyStream:  # e.g. a socket or pipe wrapper: no seek()
        def __init__(self, payload):
            self._inner = io.BytesIO(payload)

        def read(self, n=-1):
            return self._inner.read(n)

    assert np.array_equal(np.asarray(load_image(ReadOnlyStream(data))), expected)


def test_error_names_for_non_path_sources():
    with pytest.raises(ImageLoadError) as info:
        load_image(b"not an image at all", name="upload.jpg")
    assert str(info.value) == "upload.jpg: not an image"
    with pytest.raises(ImageLoadError) as info:
        load_image(b"garbage bytes")
    assert info.value.path == "<bytes>"
    assert _reason(io.BytesIO(b""), name="x.png") == "empty file"
    with pytest.raises(TypeError):
        load_image(12345)


# ------------------------------------------------------------------------------------------------ failures

def test_error_message_format_and_pickle(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert err.path == str(path) and err.reason == "no such file"
    assert str(err) == f"{path}: no such file"
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.path, clone.reason, str(clone)) == (err.path, err.reason, str(err))


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_files_fail(tmp_path, fmt, suffix):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buf, fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    assert _reason(path) == "truncated file"


def test_empty_random_text_and_directory(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert _reason(tmp_path / "zero.jpg") == "empty file"
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(2).bytes(4096))
    assert _reason(tmp_path / "noise.png") == "not an image"
    (tmp_path / "notes.jpg").write_text("these are my holiday notes\n")
    assert _reason(tmp_path / "notes.jpg") == "not an image"
    (tmp_path / "folder.jpg").mkdir()
    assert _reason(tmp_path / "folder.jpg") == "is a directory"
    assert _reason(tmp_path / "nowhere" / "x.jpg") == "no such file"


def test_permission_denied(tmp_path):
    path = _save(Image.new("RGB", (32, 32)), tmp_path / "locked.png")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read mode-000 files (root)")
        assert _reason(path) == "permission denied"
    finally:
        os.chmod(path, 0o600)


def test_eps_disguised_as_jpeg_is_not_handed_to_ghostscript(tmp_path):
    path = tmp_path / "evil.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n")
    assert _reason(path) == "not an image"


def test_too_small(tmp_path):
    assert _reason(_save(Image.new("RGB", (8, 8)), tmp_path / "t.png")) == "image too small (8x8)"
    assert _reason(_save(Image.new("RGB", (300, 10)), tmp_path / "w.png")) == "image too small (300x10)"
    assert load_image(tmp_path / "t.png", min_side=8).size == (8, 8)
    assert MIN_SIDE == 16


def _bomb_png(width: int, height: int) -> bytes:
    """A valid mode-'1' PNG of width x height, all black; the zeros compress to a few tens of KB."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(_bomb_png(20000, 20000))
    return path


@pytest.fixture
def decode_spy(monkeypatch):
    """Records every ImageFile.load() call, i.e. every attempt to decode pixels."""
    calls = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_bomb_refused_from_header(bomb_path, decode_spy):
    assert bomb_path.stat().st_size < 200_000
    start = time.perf_counter()
    reason = _reason(bomb_path)
    assert time.perf_counter() - start < 1.0
    assert reason == f"decompression bomb: 400000000 pixels > limit {MAX_PIXELS}"
    assert decode_spy == []


def test_own_pixel_limit_checked_before_decode(bomb_path, decode_spy, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard off: ours must still hold
    with Image.open(bomb_path) as im:
        assert im.size == (20000, 20000)  # the header really says so
    assert _reason(bomb_path) == f"decompression bomb: 400000000 pixels > limit {MAX_PIXELS}"
    assert decode_spy == []


def test_custom_pixel_limit(tmp_path, decode_spy):
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "m.png")
    assert _reason(path, max_pixels=1000) == "decompression bomb: 4096 pixels > limit 1000"
    assert decode_spy == []
    assert load_image(path, max_pixels=4096).size == (64, 64)
    assert decode_spy and set(decode_spy) == {(64, 64)}  # the spy does see real decodes


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF tags it skips
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP"])
def test_corrupted_bytes_raise_only_image_load_error(fmt):
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).convert(
        "P" if fmt == "GIF" else "RGB").save(buf, fmt)
    data = buf.getvalue()
    failures = 0
    for _ in range(60):
        mutated = bytearray(data)
        for pos in rng.integers(0, min(len(data), 400), size=4):
            mutated[pos] = int(rng.integers(0, 256))
        cut = int(rng.integers(len(data) // 4, len(data) + 1))
        try:
            img = load_image(bytes(mutated[:cut]))
        except ImageLoadError as exc:
            failures += 1
            assert exc.reason and len(exc.reason) <= 120
        else:
            assert img.mode == "RGB"
    assert failures > 0


# ------------------------------------------------------------------------------------------------- helpers

def test_image_extensions_are_lowercase_suffixes():
    common = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"}
    assert common <= IMAGE_EXTENSIONS
    assert isinstance(IMAGE_EXTENSIONS, frozenset)
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)
    assert ".eps" not in IMAGE_EXTENSIONS and ".pdf" not in IMAGE_EXTENSIONS


def test_downscale():
    img = Image.new("RGB", (3000, 1500))
    small, scale = downscale(img, 1000)
    assert small.size == (1000, 500) and scale == pytest.approx(1 / 3)
    assert small.size[0] / scale == pytest.approx(3000)
    same, one = downscale(img, 3000)
    assert same is img and one == 1.0
    tall, scale = downscale(Image.new("RGB", (100, 400)), 200)
    assert tall.size == (50, 200) and scale == 0.5
    with pytest.raises(ValueError):
        downscale(img, 0)


def test_file_sha256(tmp_path):
    payload = np.random.default_rng(4).bytes(300_000)
    (tmp_path / "blob").write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert file_sha256(tmp_path / "blob") == expected
    assert file_sha256(tmp_path / "blob", chunk=1000) == expected
