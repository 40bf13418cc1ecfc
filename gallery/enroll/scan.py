"""Walking a folder-per-person tree into enrollment jobs, with a reason for everything left out."""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes, unquote_to_bytes

from gallery.results import Skipped, display
from indexer.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

HIDDEN_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


@dataclass(frozen=True)
class PhotoJob:
    """One photo to enroll for one person. ``source`` is a path or the file's bytes (web uploads)."""

    person: str
    key: str  # the stored path (:func:`path_key`): the photo's identity within its person
    source: Path | bytes

    @property
    def name(self) -> str:
        """How reports show the photo: its path, printable (:func:`gallery.results.display`)."""
        return key_name(self.key)


#: Prefix of a stored path whose bytes are not UTF-8: percent-encoded bytes follow (no absolute path starts so).
RAW_PREFIX = "fs:"


def path_key(path: str | os.PathLike) -> str:
    """The stored form of a photo's absolute path, lossless. A UTF-8 path is stored as it is (as every gallery
    always stored it); any other is ``fs:`` + its percent-encoded bytes. The printable :func:`display` form is not
    a key: it maps a raw byte ``\xff`` and the four characters ``\xff`` to the same string."""
    raw = os.fsencode(os.path.abspath(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return RAW_PREFIX + quote_from_bytes(raw, safe="/")


def key_path(key: str) -> Path:
    """The file a stored path names (the inverse of :func:`path_key`)."""
    if key.startswith(RAW_PREFIX):
        return Path(os.fsdecode(unquote_to_bytes(key[len(RAW_PREFIX):])))
    return Path(key)


def key_name(key: str) -> str:
    """A stored path as reports show it."""
    return display(key_path(key)) if key.startswith(RAW_PREFIX) else key


def reference_path(photo_key: str, face_id: int) -> str:
    """The stored path of the enrolled photo made from library face ``face_id`` of library photo ``photo_key``
    (``facegallery name`` / ``move``): the photo's own path with ``#face<id>``, one enrolled photo per face."""
    return f"{photo_key}#face{face_id}"


def source_key(key: str) -> str:
    """The file behind a stored path: a path made by :func:`reference_path` names the library photo it came from
    (unless a file really has that name)."""
    match = re.fullmatch(r"(.*)#face\d+", key, flags=re.DOTALL)
    if match is not None and not key_path(key).exists():
        return match.group(1)
    return key


def legacy_key(key: str) -> str | None:
    """What versions before lossless paths stored for this key (only differs for a non-UTF-8 path)."""
    return display(key_path(key)) if key.startswith(RAW_PREFIX) else None


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in HIDDEN_NAMES


def person_name(raw: str) -> str:
    """The stored form of a person's name: Unicode NFC (a name typed on one system and a folder made on another
    are the same person), without surrounding blanks."""
    return unicodedata.normalize("NFC", raw).strip()


def _person_name(dirname: str) -> str:
    return person_name(display(dirname))


OUTSIDE = "symbolic link to {what} outside the people folder (--follow-symlinks enrolls it)"


#: The people.name column's width (VARCHAR(255), enforced by PostgreSQL, not by SQLite): checked up front so
#: every store gives the same answer.
MAX_NAME_CHARS = 255


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a person's name (blank, too long, control characters), or None when it can."""
    if not name.strip():
        return "person name is blank"
    if len(name) > MAX_NAME_CHARS:
        return f"person name is {len(name)} characters long (at most {MAX_NAME_CHARS})"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return "person name contains control characters (such as NUL or a newline)"
    return None


def scan_people_dir(root: Path, *, follow_symlinks: bool = True, notes: list[str] | None = None
                    ) -> tuple[list[PhotoJob], list[Skipped], list[str]]:
    """Jobs for every image under ``root/<person>/``; returns (jobs, skipped, people found).

    Folder names are normalised (:func:`person_name`); folders that become one person are enrolled as one and
    said so in ``notes``. A symbolic link leading out of ``root`` is skipped (with a warning) unless
    ``follow_symlinks``: enrollment (:func:`gallery.enroll.enroll.enroll_folder`) does not follow them by default;
    a benchmark's dataset folder, often a tree of links into a data set, is followed.
    """
    jobs: list[PhotoJob] = []
    skipped: list[Skipped] = []
    folders: dict[str, list[str]] = {}
    inside = _Inside(root, follow_symlinks)
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        where = display(entry.path)
        if _is_hidden(entry.name):
            skipped.append(Skipped(where, "hidden file"))
            continue
        if not _is_dir(entry):
            skipped.append(Skipped(where, "not inside a person folder"))
            continue
        if not inside(entry):
            skipped.append(Skipped(where, OUTSIDE.format(what="a folder")))
            continue
        name = _person_name(entry.name)
        problem = name_problem(name)
        if problem is not None:
            skipped.append(Skipped(where, problem.replace("person name", "person folder name")))
            continue
        folders.setdefault(name, []).append(display(entry.name))
        person_jobs, person_skipped = _scan_person(Path(entry.path), name, inside)
        if not person_jobs and not person_skipped:
            skipped.append(Skipped(where, "empty person folder"))
        jobs.extend(person_jobs)
        skipped.extend(person_skipped)
    for name, names in folders.items():
        if len(names) > 1 and notes is not None:
            notes.append(f"folders {', '.join(repr(n) for n in names)} are one person: {name!r}")
    return jobs, skipped, list(folders)


class _Inside:
    """Whether a directory entry stays inside the scanned tree (a symbolic link may lead out of it)."""

    def __init__(self, root: Path, follow: bool):
        self.root = os.path.realpath(root)
        self.follow = follow

    def __call__(self, entry: os.DirEntry) -> bool:
        if self.follow or not entry.is_symlink():
            return True
        target = os.path.realpath(entry.path)
        if os.path.commonpath([self.root, target]) == self.root:
            return True
        log.warning("not following %s: it leads out of the people folder (use --follow-symlinks)",
                    display(entry.path))
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _scan_person(folder: Path, name: str, inside) -> tuple[list[PhotoJob], list[Skipped]]:
    jobs: list[PhotoJob] = []
    skipped: list[Skipped] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        return [], [Skipped(display(folder), f"cannot list folder: {exc.strerror or exc}")]
    for entry in entries:
        where = display(entry.path)
        if _is_hidden(entry.name):
            skipped.append(Skipped(where, "hidden file"))
        elif _is_dir(entry):
            skipped.append(Skipped(where, "is a directory (nested folders are not enrolled)"))
        elif Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(where, "not an image file extension"))
        elif not inside(entry):
            skipped.append(Skipped(where, OUTSIDE.format(what="a file")))
        else:
            jobs.append(PhotoJob(person=name, key=path_key(entry.path), source=Path(entry.path)))
    return jobs, skipped
