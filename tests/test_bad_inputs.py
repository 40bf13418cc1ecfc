"""Bad input never breaks ``enroll`` or ``identify`` (issue 7).

A corpus of more than 25 kinds of awkward files is generated in ``tmp_path`` from real LFW photos: broken files
(zero bytes, truncated JPEG/PNG, random bytes, text and HTML with image names, decompression bomb, 10000x10000,
8x8, no face), every image mode and container Pillow meets in the wild (RGBA, palette, CMYK, 16-bit, 1-bit,
animated GIF, multi-page TIFF, WEBP, BMP, EXIF orientations 2-8, a 5000 px photo, a 20-face group photo) and
file-system oddities (a directory named ``x.jpg``, broken symlink, symlink loop, FIFO, /dev/zero, chmod 000,
non-UTF-8 and unicode names, quotes/semicolons/``..`` in file and person names, hidden files, empty person
folder). Both commands run through the real CLI: no traceback, every bad item reported with its reason, every
good item processed, documented exit codes, and the gallery changed by the good items only.

Most runs use the fast fakes (tests/fakes.py) behind the real CLI; one run uses the real MTCNN + dlib.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from cli.main import cli
from db.models import Embedding, Face, Person, Photo
from gallery.config import Settings
from gallery.enroll.scan import key_name, key_path
from gallery.manage.maintenance import check
from gallery.results import display
from gallery.store import Gallery
from tests.helpers import fake_opener, iou, unreachable_for_others

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
GOOD = None  # Item.reason for an item that must be enrolled
NO_FACE = "no face detected"


@dataclass(frozen=True)
class Item:
    """One corpus entry. ``reason``: what enroll reports (None: enrolled); ``identify``: the error identify reports
    for it as an argument ("" or None: answered without error); ``maybe_no_face``: a real detector may miss it."""

    rel: bytes
    kind: str
    reason: str | None
    identify: str | None = None
    maybe_no_face: bool = False

    def path(self, root: Path) -> Path:
        return Path(os.fsdecode(os.path.join(os.fsencode(root), self.rel)))

    def shown(self, root: Path) -> str:
        return display(os.path.abspath(self.path(root)))


# -- corpus ---------------------------------------------------------------------------------------------------
LFW_PERSON = "Colin_Powell"


def _lfw(lfw: Path, person: str, n: int = 1) -> Image.Image:
    return Image.open(lfw / "lfw-deepfunneled" / person / f"{person}_{n:04d}.jpg").convert("RGB")


def _group_photo(lfw: Path, faces: int = 20, cols: int = 5) -> Image.Image:
    """``faces`` different LFW people, centre crops on a grid (composed here, never committed)."""
    people = sorted(p.name for p in (lfw / "lfw-deepfunneled").iterdir())[::97][:faces]
    side, gap = 100, 12
    rows = -(-faces // cols)
    canvas = Image.new("RGB", (cols * (side + gap) + gap, rows * (side + gap) + gap), (128, 128, 128))
    for k, person in enumerate(people):
        crop = _lfw(lfw, person).crop((60, 60, 190, 190)).resize((side, side))
        canvas.paste(crop, (gap + (k % cols) * (side + gap), gap + (k // cols) * (side + gap)))
    return canvas


def _png(width: int, height: int, rows: int, bit_depth: int = 8) -> bytes:
    """A greyscale PNG of ``width`` x ``height`` whose first ``rows`` rows of zeros are actually encoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    line = b"\x00" * (1 + (width * bit_depth + 7) // 8)
    body = b"".join(comp.compress(line) for _ in range(rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


_EXIF_STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}  # stored pixels = this transform of the upright picture


def _good_variants(face: Image.Image) -> dict[str, bytes]:
    """One face in every mode / container; each must come out upright RGB and be enrolled."""
    rgba = face.convert("RGBA")
    alpha = Image.new("L", face.size, 0)
    alpha.paste(255, (20, 20, face.width - 20, face.height - 20))
    rgba.putalpha(alpha)
    gray16 = Image.fromarray((np.asarray(face.convert("L"), np.uint16) * 257))
    frames = [face, Image.new("RGB", face.size, (0, 0, 0)), face.rotate(90)]
    huge = Image.new("RGB", (6000, 1500), (90, 110, 130))  # 9 Mpx panorama: detected at 1600x400, boxes mapped back
    huge.paste(face.resize((900, 900)), (2500, 300))
    out = {
        "rgb.jpg": _encoded(face, "JPEG", quality=95),
        "alpha.png": _encoded(rgba, "PNG"),
        "palette.png": _encoded(face.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
        "cmyk.jpg": _encoded(face.convert("CMYK"), "JPEG", quality=95),
        "gray16.png": _encoded(gray16, "PNG"),
        "onebit.png": _encoded(face.convert("1"), "PNG"),
        "animated.gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "pages.tiff": _encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "face.webp": _encoded(face, "WEBP", quality=90),
        "face.bmp": _encoded(face, "BMP"),
        "huge_6000px.jpg": _encoded(huge, "JPEG", quality=85),
        "Zoë 日本語 ñ.jpg": _encoded(face, "JPEG", quality=94),
        "it's \"quoted\"; DROP TABLE photos;--.jpg": _encoded(face, "JPEG", quality=93),
        "a..b.jpg": _encoded(face, "JPEG", quality=92),
    }
    for o, how in _EXIF_STORE.items():
        exif = Image.Exif()
        exif[0x0112] = o
        out[f"exif_{o}.jpg"] = _encoded(face.transpose(how), "JPEG", quality=95, exif=exif)
    return out


def build_corpus(root: Path, lfw: Path) -> list[Item]:
    """Write the corpus under ``root`` (a folder of person folders) and return what each entry must produce."""
    face = _lfw(lfw, LFW_PERSON)
    jpeg = _encoded(face, "JPEG", quality=95)
    png = _encoded(face, "PNG")
    rng = np.random.default_rng(7)
    items: list[Item] = []

    def put(rel: bytes, data: bytes | None, kind: str, reason: str | None, identify: str | None = None, **kw):
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if data is not None:
            with open(path, "wb") as fh:
                fh.write(data)
        items.append(Item(rel, kind, reason, identify if identify is not None else reason, **kw))
        return path

    for name, data in _good_variants(face).items():
        put(f"Alice/{name}".encode(), data, name, GOOD, maybe_no_face=name in ("onebit.png",))
    put(b"Alice/\xff\xfe latin-1 \xe9.jpg", jpeg, "non-UTF-8 file name", GOOD)
    put("Bob \"the; quoted\" O'Neil/1.jpg".encode(), jpeg, "quotes and semicolon in person name", GOOD)
    put("Zoë 日本/1.png".encode(), png, "unicode person name", GOOD)
    put(b"Andr\xe9 (latin-1)/1.jpg", jpeg, "non-UTF-8 person name", GOOD)
    put(b"x..y/1.jpg", jpeg, "dots in person name", GOOD)
    put(b"Group/group_20_faces.jpg", _encoded(_group_photo(lfw), "JPEG", quality=92), "photo with 20 faces", GOOD)

    bad = b"Broken/"
    put(bad + b"zero.jpg", b"", "zero-byte", "empty file")
    put(bad + b"truncated.jpg", jpeg[: len(jpeg) // 2], "truncated JPEG", "truncated file")
    put(bad + b"truncated.png", png[: len(png) // 2], "truncated PNG", "truncated file")
    put(bad + b"random.jpg", rng.bytes(4096), "random bytes .jpg", "not an image")
    put(bad + b"random.png", rng.bytes(4096), "random bytes .png", "not an image")
    put(bad + b"text.jpg", b"just some text, not a picture\n" * 20, "text named .jpg", "not an image")
    put(bad + b"page.png", b"<!doctype html><html><body><img src=x.png></body></html>\n", "HTML as .png",
        "not an image")
    put(bad + b"bomb.png", _png(60_000, 60_000, rows=64, bit_depth=1), "decompression bomb",
        "decompression bomb: 3600000000 pixels > limit 89478485")
    put(bad + b"plain_10000.png", _png(10_000, 10_000, rows=10_000), "10000x10000 plain image",
        "decompression bomb: 100000000 pixels > limit 89478485")
    put(bad + b"tiny_8x8.png", _encoded(face.resize((8, 8)), "PNG"), "8x8 image", "image too small (8x8)")
    put(bad + b"no_face.png", _encoded(Image.new("RGB", (320, 240), (140, 150, 160)), "PNG"), "no face", NO_FACE, "")
    os.makedirs(put(bad + b"folder.jpg", None, "directory named x.jpg",
                    "is a directory (nested folders are not enrolled)", "is a directory"))
    os.symlink(os.fsencode(root) + b"/does/not/exist.jpg", put(bad + b"broken_link.jpg", None, "broken symlink",
                                                               "no such file"))
    os.symlink(b"loop_b.jpg", put(bad + b"loop_a.jpg", None, "symlink loop", "Too many levels of symbolic links"))
    os.symlink(b"loop_a.jpg", put(bad + b"loop_b.jpg", None, "symlink loop", "Too many levels of symbolic links"))
    os.mkfifo(put(bad + b"fifo.jpg", None, "FIFO named .jpg", "not a regular file"))
    # a link out of the people folder is not followed by enroll (issue 14); identify given it reads /dev/zero
    os.symlink(b"/dev/zero", put(bad + b"dev_zero.jpg", None, "symlink to /dev/zero",
                                 "symbolic link to a file outside the people folder (--follow-symlinks enrolls it)",
                                 "not a regular file"))
    locked = put(bad + b"unreadable.jpg", jpeg, "unreadable file (chmod 000)",
                 GOOD if IS_ROOT else "permission denied")  # root reads anything: then it is a good photo
    os.chmod(locked, 0)
    put(bad + b".DS_Store", rng.bytes(512), "hidden .DS_Store", "hidden file", "not an image")
    put(bad + b"Thumbs.db", rng.bytes(512), "Thumbs.db", "hidden file", "not an image")
    put(bad + b"._rgb.jpg", rng.bytes(512), "AppleDouble ._ file", "hidden file", "not an image")
    put(bad + b"notes.txt", b"notes\n", "non-image extension", "not an image file extension", "not an image")
    put(b"stray.jpg", jpeg, "photo outside any person folder", "not inside a person folder", "")
    os.makedirs(put(b"Empty Person", None, "empty person folder", "empty person folder", "is a directory"))
    hidden = put(b".hidden_person", None, "hidden person folder", "hidden file", "is a directory")
    os.makedirs(hidden)
    with open(os.path.join(hidden, b"1.jpg"), "wb") as fh:
        fh.write(jpeg)
    return items


def good(items: list[Item]) -> list[Item]:
    return [i for i in items if i.reason is GOOD]


# -- helpers ------------------------------------------------------------------------------------------------------
@pytest.fixture
def corpus(tmp_path, lfw_dir) -> tuple[Path, list[Item]]:
    root = tmp_path / "corpus"
    items = build_corpus(root, lfw_dir)
    yield root, items
    os.chmod(os.path.join(root, "Broken", "unreadable.jpg"), 0o644)  # let pytest clean up


@pytest.fixture
def fake_cli(monkeypatch):
    """The real CLI, with the fast fake detector/embedders behind it."""
    import cli.commands_core as commands

    store: dict = {}
    monkeypatch.setattr(commands, "open_gallery", fake_opener(store))
    return store


def run(home: Path, *args, ok_codes=(0,)):
    res = CliRunner().invoke(cli, ["--gallery", str(home), "-q", *map(str, args)])
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert res.exit_code in ok_codes, res.output
    return res


def snapshot(home: Path) -> dict:
    """Every stored fact: person -> {photo path: (sha256, [(embedding id, aug, vector bytes)])}."""
    with Gallery(Settings(home=home, progress=False)) as g, g.session() as s:
        rows = s.execute(select(Person.name, Photo.path, Photo.sha256, Embedding.id, Embedding.aug_index,
                                Embedding.vector)
                         .join(Photo, Photo.person_id == Person.id)
                         .join(Face, Face.photo_id == Photo.id)
                         .join(Embedding, Embedding.face_id == Face.id)).all()
    out: dict = {}
    for name, path, sha, emb_id, aug, vec in rows:
        out.setdefault(name, {}).setdefault(path, (sha, []))[1].append((emb_id, aug, bytes(vec)))
    return out


def _existing_person(tmp_path: Path, lfw: Path) -> Path:
    root = tmp_path / "existing"
    (root / "Existing Person").mkdir(parents=True)
    for n in (1, 2):
        _lfw(lfw, "Tony_Blair", n).save(root / "Existing Person" / f"{n}.jpg")
    return root


# -- enroll -------------------------------------------------------------------------------------------------------
def test_enroll_bad_corpus_with_fakes(tmp_path, lfw_dir, corpus, fake_cli):
    root, items = corpus
    assert len({i.kind for i in items}) >= 25
    home = tmp_path / "g"
    run(home, "enroll", _existing_person(tmp_path, lfw_dir), "--model", "dlib", "--augment", "1")
    before = snapshot(home)

    doc = json.loads(run(home, "enroll", root, "--model", "dlib", "--augment", "1", "--json").stdout)
    skipped = {s["path"]: s["reason"] for s in doc["skipped"]}
    for it in items:
        where = it.shown(root)
        if it.reason is GOOD:
            assert where not in skipped, f"{it.kind}: skipped ({skipped.get(where)})"
        else:
            assert skipped.get(where) == it.reason, f"{it.kind}: {where} -> {skipped.get(where)!r}"
    assert sorted(p["path"] for p in doc["enrolled"]) == sorted(i.shown(root) for i in good(items))
    assert len(skipped) == len(items) - len(good(items))
    assert doc["embeddings_added"] == {"dlib": 2 * len(good(items))}

    after = snapshot(home)
    assert after["Existing Person"] == before["Existing Person"]  # untouched, same ids and vectors
    expected_people = {"Existing Person", "Alice", "Bob \"the; quoted\" O'Neil", "Zoë 日本", "Andr\\xe9 (latin-1)",
                       "x..y", "Group"} | ({"Broken"} if IS_ROOT else set())
    assert set(after) == expected_people
    stored = {p for person in after.values() for p in person}
    # stored paths are lossless (a non-UTF-8 one as fs:<percent-encoded bytes>, issue 14); shown as before
    assert {key_name(p) for p in stored - set(before["Existing Person"])} == {i.shown(root) for i in good(items)}
    assert {key_path(p) for p in stored - set(before["Existing Person"])} == {
        Path(os.path.abspath(i.path(root))) for i in good(items)}

    # the text output names every skipped file with its reason; a second run changes nothing
    text = run(home, "enroll", root, "--model", "dlib", "--augment", "1").stdout
    assert f"Enrolled 0 photo(s), {len(good(items))} unchanged, {len(skipped)} skipped." in text
    for where, reason in skipped.items():
        assert f"skipped: {where}: {reason}" in text
    assert snapshot(home) == after
    assert "OK" in run(home, "check").stdout


# -- identify -----------------------------------------------------------------------------------------------------
def test_identify_bad_corpus_with_fakes(tmp_path, lfw_dir, corpus, fake_cli):
    root, items = corpus
    home = tmp_path / "g"
    run(home, "enroll", _existing_person(tmp_path, lfw_dir), "--model", "dlib", "--augment", "0")
    before = snapshot(home)

    # several images at once: one entry per image, errors inline, exit 0
    doc = json.loads(run(home, "identify", *[i.path(root) for i in items], "--model", "dlib", "--json").stdout)
    assert len(doc["images"]) == len(items)
    for it, res in zip(items, doc["images"]):
        assert res["path"] == display(it.path(root))
        if it.identify:
            assert res.get("error") == it.identify and res["faces"] == [], f"{it.kind}: {res}"
        else:
            assert "error" not in res, f"{it.kind}: {res}"
            want = 0 if it.reason == NO_FACE else 1  # the fake detector finds one face in any textured image
            assert len(res["faces"]) == want, f"{it.kind}: {res}"
    # one unreadable image: Error: <path>: <reason>, exit 1, nothing on stdout
    for it in items:
        if not it.identify:
            continue
        res = run(home, "identify", it.path(root), "--model", "dlib", ok_codes=(1,))
        assert res.stderr == f"Error: {display(it.path(root))}: {it.identify}\n", it.kind
        assert res.stdout == ""
    assert snapshot(home) == before  # identify never writes


# -- the real detector and embedder -----------------------------------------------------------------------------
def test_real_mtcnn_and_dlib_over_the_corpus(tmp_path, corpus, one_torch_thread):
    root, items = corpus
    home = tmp_path / "g"
    doc = json.loads(run(home, "enroll", root, "--model", "dlib", "--augment", "0", "--json").stdout)
    skipped = {s["path"]: s["reason"] for s in doc["skipped"]}
    enrolled = {p["path"]: p for p in doc["enrolled"]}
    for it in items:
        where = it.shown(root)
        if it.reason is GOOD and it.maybe_no_face:
            assert where in enrolled or skipped.get(where) == NO_FACE, it.kind
        elif it.reason is GOOD:
            assert where in enrolled, f"{it.kind}: {skipped.get(where)}"
        else:
            assert skipped.get(where) == it.reason, f"{it.kind}: {skipped.get(where)!r}"
    assert enrolled[(root / "Group" / "group_20_faces.jpg").as_posix()]["faces_detected"] == 20

    # every re-encoding / EXIF orientation of the same photo: the same upright face box
    ref = enrolled[(root / "Alice" / "rgb.jpg").as_posix()]["box"]
    for name in ("alpha.png", "palette.png", "cmyk.jpg", "gray16.png", "animated.gif", "pages.tiff", "face.webp",
                 "face.bmp", *(f"exif_{o}.jpg" for o in _EXIF_STORE)):
        assert iou(enrolled[(root / "Alice" / name).as_posix()]["box"], ref) > 0.85, name

    # identify: the group photo, a good photo and bad files in one call; then one bad file alone
    args = [root / "Group" / "group_20_faces.jpg", root / "Alice" / "exif_6.jpg", root / "Broken" / "zero.jpg",
            root / "Broken" / "folder.jpg", root / "Broken" / "no_face.png", root / "Broken" / "fifo.jpg"]
    # max: "Andr\xe9 (latin-1)" is enrolled with the very photo Alice's variants re-encode; a centroid of one photo
    # equal to the probe's source beats Alice's centroid of many re-encodings, the best single vector does not
    res = json.loads(run(home, "identify", *args, "--model", "dlib", "--aggregate", "max",
                         "--json").stdout)["images"]
    assert len(res[0]["faces"]) == 20
    assert [f["models"]["dlib"]["identity"] for f in res[1]["faces"]] == ["Alice"]
    assert [r.get("error") for r in res[2:]] == ["empty file", "is a directory", None, "not a regular file"]
    assert res[4]["faces"] == []
    one = run(home, "identify", root / "Broken" / "truncated.jpg", "--model", "dlib", ok_codes=(1,))
    assert one.stderr == f"Error: {root / 'Broken' / 'truncated.jpg'}: truncated file\n"
    with Gallery(Settings(home=home, progress=False)) as g:
        assert check(g).ok


# -- chmod 000 for real: root reads anything, so drop to an unprivileged user -------------------------------------
AS_NOBODY = r"""
import contextlib, io, json, os, sys
import cli.main, gallery.enroll.enroll, gallery.recognize.identify, sqlalchemy.dialects.sqlite, PIL.Image
from gallery.config import Settings
from gallery.store import Gallery
from indexer.embedders import create_embedder
PIL.Image.init()
# Import everything the commands need while the interpreter's files are still readable, and store the ONNX graphs
# of MTCNN and dlib where nobody can read them (the run's own cache folder is private to root).
os.environ["FACEGALLERY_CACHE"] = sys.argv[1] + "-cache"
from indexer.detect import Detector
Detector().detect(PIL.Image.new("RGB", (64, 64)))
create_embedder("dlib").load()
Gallery(Settings(home=sys.argv[1] + "-warm", progress=False)).close()
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
results = []
for args in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main.cli.main(["--gallery", sys.argv[1], "-q", *args], prog_name="facegallery")
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def _needed_after_dropping_to_nobody() -> list[Path]:
    """What AS_NOBODY still reads once it runs as nobody: project modules the commands import lazily (the
    checkout) and libraries and model files from the virtual environment."""
    import sysconfig

    from indexer.embedders import dlib_model

    repo = Path(__file__).resolve().parents[1]
    paths = [repo / "cli" / "main.py", repo / "gallery" / "store.py", Path(sysconfig.get_paths()["purelib"])]
    models = dlib_model.models_dir()
    return paths + ([models / dlib_model.MODEL_FILE] if models is not None else [])


@pytest.mark.skipif(not IS_ROOT, reason="as a normal user the corpus tests above already meet the chmod 000 file")
def test_unreadable_file_for_an_unprivileged_user(tmp_path):
    import shutil
    import subprocess
    import sys
    import tempfile

    blocked = unreachable_for_others(_needed_after_dropping_to_nobody())
    if blocked:  # e.g. a clone under a 0700 folder: nobody could not import what the commands load lazily
        pytest.skip(f"this test drops to the user nobody, who cannot reach the checkout or its venv: {blocked}")
    work = Path(tempfile.mkdtemp(prefix="facegallery-nobody-"))  # pytest's tmp_path is private to root
    try:
        os.chmod(work, 0o777)
        (work / "people" / "P").mkdir(parents=True)
        locked = work / "people" / "P" / "locked.jpg"
        locked.write_bytes(b"\xff\xd8 whatever")
        os.chmod(locked, 0)
        (work / "empty.jpg").write_bytes(b"")
        for d in (work / "people", work / "people" / "P"):
            os.chmod(d, 0o777)
        commands = [["enroll", str(work / "people"), "--model", "dlib", "--json"],
                    ["identify", str(locked), "--model", "dlib"],
                    ["identify", str(locked), str(work / "empty.jpg"), str(work), "--model", "dlib", "--json"]]
        res = subprocess.run([sys.executable, "-c", AS_NOBODY, str(work / "g"), json.dumps(commands)],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        (enroll, one, several) = json.loads(res.stdout)
        assert enroll[0] == 0 and "Traceback" not in enroll[2], enroll
        assert json.loads(enroll[1])["skipped"] == [{"path": str(locked), "reason": "permission denied"}]
        assert one == [1, "", f"Error: {locked}: permission denied\n"]
        assert several[0] == 0, several
        errors = [i.get("error") for i in json.loads(several[1])["images"]]
        assert errors == ["permission denied", "empty file", "is a directory"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
