"""ONNX graphs exported from torch modules, kept on disk so a later process runs them without importing torch.

``import torch`` alone costs about a second of every process (1.05 s of a 1.7 s cold one-photo identify on the
project's 2-core machine). The CPU inference path (MTCNN's three nets, dlib's ResNet) runs in ONNX Runtime from
graphs exported once, on first use, and stored here:

    $FACEGALLERY_CACHE/onnx/<name>-<source sha256[:16]>-v<GRAPH_VERSION>.onnx   (+ .sha256 sidecar)

``$FACEGALLERY_CACHE`` defaults to ``~/.cache/facegallery``. The name carries the sha256 of the weights the graph
was exported from, so other weights never meet a stale graph; the sidecar holds the graph's own sha256, checked on
every load, so a truncated or altered file is exported again instead of being run. Files are written atomically
(:func:`indexer.atomic.write_atomic`): two processes exporting at once both end with a whole file. When the folder
cannot be written the graph is still returned, just not kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from indexer.atomic import write_atomic

logger = logging.getLogger(__name__)

CACHE_ENV = "FACEGALLERY_CACHE"
#: Bumped whenever an exporter below changes the graph it writes for the same weights.
GRAPH_VERSION = 1

#: torch's TorchScript exporter keeps process-wide state (``GLOBALS.in_onnx_export``): two exports at once make one
#: fail. Every exporter in the project holds this lock (:mod:`indexer.embedders.onnx_cpu` too).
EXPORT_LOCK = threading.Lock()
#: One load-or-export at a time, so that threads loading the same graph export it once.
_LOAD_LOCK = threading.Lock()


def ort_threads() -> int:
    """ONNX Runtime intra-op threads for the stored graphs: ``$OMP_NUM_THREADS`` when set (the knob torch follows
    too), else 0 (ONNX Runtime's default: one per physical core)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def cache_dir() -> Path:
    """``$FACEGALLERY_CACHE``, else ``~/.cache/facegallery``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/facegallery").expanduser()


def graph_path(name: str, source_sha256: str) -> Path:
    return cache_dir() / "onnx" / f"{name}-{source_sha256[:16]}-v{GRAPH_VERSION}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached(name: str, source_sha256: str) -> bytes | None:
    """The stored graph when it exists and matches its recorded sha256, else None."""
    path = graph_path(name, source_sha256)
    try:
        data = path.read_bytes()
        expected = _sidecar(path).read_text(encoding="ascii").split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    if hashlib.sha256(data).hexdigest() != expected:
        logger.warning("%s does not match its recorded sha256; exporting it again", path)
        return None
    return data


def load_or_export(name: str, source_sha256: str, export: Callable[[], bytes]) -> bytes:
    """The graph of ``name`` for weights ``source_sha256``: from the cache, else ``export()`` (which may import
    torch) and stored for the next process."""
    with _LOAD_LOCK:
        data = cached(name, source_sha256)
        if data is not None:
            return data
        data = export()
        _store(name, source_sha256, data)
    return data


def _store(name: str, source_sha256: str, data: bytes) -> None:
    path = graph_path(name, source_sha256)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
        digest = hashlib.sha256(data).hexdigest()
        write_atomic(_sidecar(path), lambda tmp: tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii"))
        logger.info("exported %s to %s (%.1f MB)", name, path, len(data) / 1e6)
    except OSError as exc:
        logger.debug("could not keep the %s graph in %s: %s", name, path.parent, exc)
