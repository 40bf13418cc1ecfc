"""The embedder registry: which embedders exist, without importing torch; their factories, on first use.

The built-in embedders are listed here by name with the module that implements them, so listing them (the CLI's
``--model`` choices, ``--help``, the defaults in :mod:`gallery.config`) costs nothing. A module registers its
factory with :func:`register_embedder` when it is imported, which :func:`create_embedder` does on demand.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class EmbedderEntry:
    name: str
    module: str  # imported on first use; it registers the factory
    random_init: bool  # can run with seeded random weights (development and tests)


BUILTIN = (
    EmbedderEntry("facenet", "indexer.embedders.facenet", random_init=True),
    EmbedderEntry("resnet50", "indexer.embedders.resnet50", random_init=True),
    EmbedderEntry("dlib", "indexer.embedders.dlib_model", random_init=False),
)
_MODULES = {e.name: e.module for e in BUILTIN}
#: How the dlib embedder runs its network: ``auto`` (default: ``onnx`` on the CPU when ONNX Runtime is installed,
#: else ``torch``), this project's PyTorch port as a stored ONNX graph (``onnx``) or in torch, or dlib-bin (the
#: reference).
DLIB_ENGINES = ("auto", "onnx", "torch", "dlib")
_FACTORIES: dict[str, Callable] = {}


def register_embedder(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering a factory ``f(*, device, weights, weights_dir, fast, **options) -> Embedder``."""
    def decorator(factory: Callable) -> Callable:
        if name in _FACTORIES:
            raise ValueError(f"embedder {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory
    return decorator


def available_embedders() -> list[str]:
    """Every embedder name (the built-ins and any registered since), sorted."""
    return sorted({e.name for e in BUILTIN} | set(_FACTORIES))


def random_init_embedders() -> list[str]:
    """The embedders that can run with seeded random weights (``--weights random``)."""
    return [e.name for e in BUILTIN if e.random_init]


def load_module(name: str) -> None:
    """Import the module of the built-in embedder ``name`` (it registers its factory and weights spec)."""
    if name not in _FACTORIES and name in _MODULES:
        importlib.import_module(_MODULES[name])


def create_embedder(name: str, *, device="auto", weights: str | os.PathLike | None = None,
                    weights_dir: str | os.PathLike | None = None, fast: bool = False, **options):
    """Build the embedder registered as ``name``; weights are resolved now, the model loads on first use.

    ``weights``: a file path, ``"random"`` (seeded init, for tests) or None (weights dir, then library cache).
    ``fast``: the opt-in inference rewrite of :mod:`indexer.embedders.base`. ``options``: embedder-specific
    settings (e.g. the dlib engine).
    """
    load_module(name)
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown embedder {name!r}; known: {', '.join(available_embedders())}") from None
    return factory(device=device, weights=weights, weights_dir=weights_dir, fast=fast, **options)
