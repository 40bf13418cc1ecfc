"""Face embedders behind a small registry: ``create_embedder("facenet" | "resnet50" | "dlib", ...)``.

Importing this package registers the three embedders; each module imports its heavy library (facenet-pytorch,
torchvision, dlib) only when a model is built, so ``available_embedders()`` is cheap.
"""
from . import dlib_model, facenet, resnet50  # noqa: F401  (registration side effects)
from .base import Embedder, available_embedders, create_embedder, l2_normalize, register_embedder, resolve_device
from .weights import (
    WeightsError,
    WeightsInfo,
    WeightsNotFoundError,
    WeightsStatus,
    import_weights,
    resolve_weights_dir,
    weights_status,
)

__all__ = [
    "Embedder", "WeightsError", "WeightsInfo", "WeightsNotFoundError", "WeightsStatus", "available_embedders",
    "create_embedder", "import_weights", "l2_normalize", "register_embedder", "resolve_device",
    "resolve_weights_dir", "weights_status",
]
