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


class NoGalleryError(GalleryError):
    """Nothing was ever enrolled where a reader looked: no gallery exists there (creating one is explicit)."""


class GalleryDamagedError(GalleryError):
    """The gallery's database is unreadable, or empty while the files beside it show past content."""


class StoreWriteError(GalleryError):
    """The database refused a write (a constraint, a damaged file); the transaction was rolled back."""


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


class QueueFullError(GalleryError):
    """Too many requests are already waiting for the models (the service answers 503); retry shortly."""


#: Errors whose message is the whole story for a user: shown as one line, never as a traceback.
USER_ERRORS = (GalleryError, WeightsError, ImageLoadError)

__all__ = ["EmptyGalleryError", "GalleryBusyError", "GalleryDamagedError", "GalleryError", "ImageLoadError",
           "InvalidInputError", "NoFaceError", "NoGalleryError", "PersonNotFoundError", "QueueFullError",
           "SourcesMissingError", "StoreWriteError", "USER_ERRORS", "WeightsError", "WeightsMismatchError",
           "WeightsNotFoundError"]
