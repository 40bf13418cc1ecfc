"""Exceptions the library raises on purpose. The CLI turns each into ``Error: <message>`` and exit code 1."""
from __future__ import annotations


class GalleryError(Exception):
    """Base class for errors a user can act on."""


class GalleryBusyError(GalleryError):
    """Another facegallery process holds the gallery's write lock for too long."""


class PersonNotFoundError(GalleryError):
    """No person of that name is enrolled."""


class NoFaceError(GalleryError):
    """The image holds no detectable face where one is required (verify)."""


class WeightsMismatchError(GalleryError):
    """The gallery's vectors for an embedder were made with other weights than the ones loaded now."""


class EmptyGalleryError(GalleryError):
    """The gallery holds no vectors for the requested embedder."""


class InvalidInputError(GalleryError):
    """An argument or input file is unusable (bad folder, unreadable image, ...)."""


class SourcesMissingError(GalleryError):
    """Photos a re-embed must re-read are gone, changed or were uploads; nothing was changed."""
