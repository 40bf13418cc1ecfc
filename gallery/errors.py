"""Exceptions the library raises on purpose. The CLI turns each into ``Error: <message>`` and exit code 1.

The indexer's user-facing errors (an unreadable image, missing or unusable weights) are re-exported here, so the
layers above the library (cli, app) catch them without importing the indexer.
"""
from __future__ import annotations

from indexer.errors import WeightsError, WeightsNotFoundError
from indexer.images import ImageLoadError


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


#: Errors whose message is the whole story for a user: shown as one line, never as a traceback.
USER_ERRORS = (GalleryError, WeightsError, ImageLoadError)

__all__ = ["EmptyGalleryError", "GalleryBusyError", "GalleryError", "ImageLoadError", "InvalidInputError",
           "NoFaceError", "PersonNotFoundError", "SourcesMissingError", "USER_ERRORS", "WeightsError",
           "WeightsMismatchError", "WeightsNotFoundError"]
