"""Getting faces into the gallery: folder scanning (:mod:`~gallery.enroll.scan`), the prepare stage
(:mod:`~gallery.enroll.prepare`), enrollment (:mod:`~gallery.enroll.enroll`) and re-embedding
(:mod:`~gallery.enroll.reembed`).

The public names below are imported on first use: ``gallery.enroll.scan`` (stored paths) is used by readers such as
``find`` that must not pay for torch."""
from __future__ import annotations

import importlib

_PUBLIC = {"EnrolledPhoto": "enroll", "EnrollReport": "enroll", "enroll_folder": "enroll", "enroll_images": "enroll",
           "enroll_jobs": "enroll", "PhotoJob": "scan", "scan_people_dir": "scan"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"gallery.enroll.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'gallery.enroll' has no attribute {name!r}")
