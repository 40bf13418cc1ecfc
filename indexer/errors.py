"""Exceptions of the indexer a user can act on, in a module light enough for any layer to import (no torch)."""
from __future__ import annotations


class WeightsError(Exception):
    """A weights file exists but cannot be used (format, architecture or checksum)."""


class WeightsNotFoundError(WeightsError):
    """No usable weights file was found and none could be downloaded."""
