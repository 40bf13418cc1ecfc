"""Face embedders behind a small registry: ``create_embedder("facenet" | "resnet50" | "dlib", ...)``.

Listing the embedders (:func:`available_embedders`) imports no torch: :mod:`.registry` names them and imports an
embedder's module (which registers its factory) the first time one is created. Everything else here is loaded
on first access.
"""
from __future__ import annotations

import importlib

from .registry import available_embedders, create_embedder, random_init_embedders, register_embedder

_LAZY = {
    "Embedder": ".base", "l2_normalize": ".base", "resolve_device": ".base",
    "WeightsError": ".weights", "WeightsInfo": ".weights", "WeightsNotFoundError": ".weights",
    "WeightsStatus": ".weights", "import_weights": ".weights", "resolve_weights_dir": ".weights",
    "weights_status": ".weights",
}

__all__ = ["available_embedders", "create_embedder", "random_init_embedders", "register_embedder", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
