"""Walking a folder-per-person tree into enrollment jobs, with a reason for everything left out."""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from gallery.results import Skipped, display
from indexer.images import IMAGE_EXTENSIONS

HIDDEN_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


@dataclass(frozen=True)
class PhotoJob:
    """One photo to enroll for one person. ``source`` is a path or the file's bytes (web uploads)."""

    person: str
    key: str  # the stored path: the photo's identity within its person
    source: Path | bytes


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in HIDDEN_NAMES


def _person_name(dirname: str) -> str:
    return display(dirname).strip()


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


def scan_people_dir(root: Path) -> tuple[list[PhotoJob], list[Skipped], list[str]]:
    """Jobs for every image under ``root/<person>/``; returns (jobs, skipped, people folders found)."""
    jobs: list[PhotoJob] = []
    skipped: list[Skipped] = []
    people: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        where = display(entry.path)
        if _is_hidden(entry.name):
            skipped.append(Skipped(where, "hidden file"))
            continue
        if not _is_dir(entry):
            skipped.append(Skipped(where, "not inside a person folder"))
            continue
        name = _person_name(entry.name)
        problem = name_problem(name)
        if problem is not None:
            skipped.append(Skipped(where, problem.replace("person name", "person folder name")))
            continue
        people.append(name)
        person_jobs, person_skipped = _scan_person(Path(entry.path), name)
        if not person_jobs and not person_skipped:
            skipped.append(Skipped(where, "empty person folder"))
        jobs.extend(person_jobs)
        skipped.extend(person_skipped)
    return jobs, skipped, people


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _scan_person(folder: Path, name: str) -> tuple[list[PhotoJob], list[Skipped]]:
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
        else:
            jobs.append(PhotoJob(person=name, key=os.path.abspath(where), source=Path(entry.path)))
    return jobs, skipped
