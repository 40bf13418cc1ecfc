"""Classifier heads: a small MLP per embedder, trained on the gallery's stored vectors with the backbone frozen.

A head answers "which enrolled person is this?" with a probability, beside the nearest-neighbour answer. It is
trained on every stored vector of the embedder (the original crops and their augmented copies) with Adam,
ReduceLROnPlateau and early stopping on a validation split made **by source photo**: all copies of one photo land
on the same side, otherwise the validation loss would measure how well the head recognises a flipped copy of a
photo it was trained on (the seed project's leak).

One file per embedder, ``<heads_dir>/<model>.pt``, written atomically with ``torch.save`` of plain types only
(state_dict, architecture, person ids and names, the embedder's weights sha256 and gallery generation, training
history) and read back with ``weights_only=True``. Names shown to users come from the database through the stored
person ids; the stored names are only used to find the heads that must go when a person is forgotten. A head is
*fresh* while the embedder's generation, weights and every trained person (id and name) are unchanged; identify
ignores a stale head and ``train-heads`` makes a new one.
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from db import queries as q
from gallery.errors import EmptyGalleryError, GalleryError
from gallery.heads.model import (  # noqa: F401  (split_by_photo: re-exported with the training API)
    HeadShape,
    TrainConfig,
    build_head,
    fit_head,
    head_shape,
    predict_proba,
    split_by_photo,
)
from gallery.results import HeadAnswer
from gallery.store import Gallery
from gallery.vectors import stored_vectors as usable_vectors
from indexer.atomic import write_atomic

if TYPE_CHECKING:  # torch is imported where a head is saved, read or run (identify without heads skips it)
    from torch import nn

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class StoredVectors:
    """Every stored vector of one embedder with its owner, read in one transaction."""

    vectors: np.ndarray
    person_ids: np.ndarray
    photo_ids: np.ndarray
    aug: np.ndarray
    names: dict[int, str]
    generation: int
    weights_sha256: str | None

    @property
    def random_weights(self) -> bool:
        # random initialisation is recorded as sha256 "random-seed<N>" (indexer.embedders.weights): no model load
        return (self.weights_sha256 or "").startswith("random")


def stored_vectors(gallery: Gallery, model: str) -> StoredVectors:
    with gallery.session() as s:
        generation, sha = q.generation(s, model), q.stored_weights(s, model)
        ids, vectors, _ = usable_vectors(s, model)  # a damaged row never trains a head (check names it)
        if not len(ids):
            raise EmptyGalleryError(f"the gallery holds no {model} vectors: enroll people first")
        own = q.owners(s, ids.tolist())
    rows = [own[int(i)] for i in ids]
    return StoredVectors(
        vectors=vectors,
        person_ids=np.array([r[0] for r in rows], np.int64), photo_ids=np.array([r[2] for r in rows], np.int64),
        aug=np.array([r[3] for r in rows], np.int64), names={r[0]: r[1] for r in rows},
        generation=generation, weights_sha256=sha,
    )


@dataclass(frozen=True)
class HeadReport:
    model: str
    path: str
    people: int
    vectors: int
    train_vectors: int
    val_vectors: int
    epochs_run: int
    best_epoch: int
    val_accuracy: float | None
    seconds: float
    random_weights: bool = False
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["history"] = {k: [v if math.isfinite(v) else None for v in vs] for k, vs in self.history.items()}
        d["val_accuracy"] = None if self.val_accuracy is None else round(self.val_accuracy, 4)
        d["seconds"] = round(self.seconds, 3)
        return d


def train_heads(gallery: Gallery, models: Sequence[str] | None = None,
                config: TrainConfig = TrainConfig()) -> list[HeadReport]:
    """Train and save one head per embedder (default: every embedder in the gallery)."""
    chosen = list(models) if models else gallery.models_in_store()
    if not chosen:
        raise EmptyGalleryError("the gallery is empty: enroll people first (facegallery enroll PEOPLE_DIR)")
    with gallery.write_lock():
        return [_train_one(gallery, m, config) for m in chosen]


def _train_one(gallery: Gallery, model: str, config: TrainConfig) -> HeadReport:
    start = time.perf_counter()
    data = stored_vectors(gallery, model)
    person_ids = sorted(data.names)
    if len(person_ids) < 2:
        raise GalleryError(f"a {model} head needs at least 2 enrolled people (the gallery has {len(person_ids)})")
    labels = np.searchsorted(np.array(person_ids), data.person_ids).astype(np.int64)
    dim = data.vectors.shape[1]
    shape = head_shape(model, dim)
    fit = fit_head(data.vectors, labels, data.photo_ids, shape, config)
    random = data.random_weights
    payload = {
        "format": FORMAT, "state_dict": fit.module.state_dict(), "embedder": model, "dim": dim,
        "shape": asdict(shape), "person_ids": person_ids, "person_names": [data.names[p] for p in person_ids],
        "people_sha256": _people_hash(person_ids, [data.names[p] for p in person_ids]),
        "weights_sha256": data.weights_sha256, "generation": data.generation, "random_weights": random,
        "history": fit.history, "best_epoch": fit.best_epoch, "config": asdict(config),
    }
    path = head_path(gallery, model)
    _save_atomic(payload, path)
    log.info("trained the %s head: %d people, %d vectors, best epoch %d", model, len(person_ids), len(labels),
             fit.best_epoch)
    return HeadReport(model, str(path), len(person_ids), len(labels), fit.train_rows, fit.val_rows,
                      len(fit.history["train_loss"]), fit.best_epoch, fit.val_accuracy, time.perf_counter() - start,
                      random, fit.history)


def head_path(gallery: Gallery, model: str) -> Path:
    return gallery.settings.heads_dir / f"{model}.pt"


def _people_hash(ids: Sequence[int], names: Sequence[str]) -> str:
    text = "\n".join(f"{i}\t{n}" for i, n in zip(ids, names))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _save_atomic(payload: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


# -- loading and answering ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadStatus:
    model: str
    path: str
    exists: bool
    fresh: bool
    reason: str
    people: int = 0
    random_weights: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


_CACHE: dict[str, tuple[tuple[int, int], dict, nn.Sequential | None]] = {}
_CACHE_LOCK = threading.Lock()


def _read(path: Path) -> tuple[dict, nn.Sequential] | None:
    """The head file's payload and module (cached while the file is unchanged); None when unreadable."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        hit = _CACHE.get(str(path))
        if hit is not None and hit[0] == key:
            return (hit[1], hit[2]) if hit[2] is not None else None
        import torch

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            shape = HeadShape(**payload["shape"])
            module = build_head(payload["dim"], len(payload["person_ids"]), shape)
            module.load_state_dict(payload["state_dict"])
            module.eval()
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is ignored, never trusted
            log.warning("ignoring unreadable head file %s: %s", path, exc)
            _CACHE[str(path)] = (key, {}, None)
            return None
        _CACHE[str(path)] = (key, payload, module)
        return payload, module


def head_status(gallery: Gallery, model: str) -> HeadStatus:
    path = head_path(gallery, model)
    if not path.exists():
        return HeadStatus(model, str(path), False, False, "no head trained (run facegallery train-heads)")
    read = _read(path)
    if read is None:
        return HeadStatus(model, str(path), True, False, "head file is unreadable (retrain with train-heads)")
    payload, _ = read
    reason = _stale_reason(gallery, model, payload)
    return HeadStatus(model, str(path), True, reason is None, reason or "fresh", len(payload["person_ids"]),
                      bool(payload.get("random_weights")))


def _stale_reason(gallery: Gallery, model: str, payload: dict) -> str | None:
    ids = [int(i) for i in payload["person_ids"]]
    with gallery.session() as s:
        generation, sha = q.generation(s, model), q.stored_weights(s, model)
        current = q.person_names(s, ids)
    if payload.get("embedder") != model:
        return f"the file was trained for {payload.get('embedder')!r}"
    if [current.get(i) for i in ids] != list(payload["person_names"]) or \
            _people_hash(ids, [current.get(i, "") for i in ids]) != payload["people_sha256"]:
        return "people changed since training (retrain with train-heads)"
    if sha != payload["weights_sha256"]:
        return "the embedder's weights changed since training"
    if generation != payload["generation"]:
        return f"the gallery changed since training (generation {payload['generation']} -> {generation})"
    return None


def head_answers(gallery: Gallery, model: str, vecs: np.ndarray) -> list[HeadAnswer] | None:
    """The fresh head's prediction for each row of ``vecs``; None when no fresh head exists for ``model``."""
    path = head_path(gallery, model)
    if not path.exists():
        return None
    read = _read(path)
    if read is None:
        return None
    payload, module = read
    reason = _stale_reason(gallery, model, payload)
    if reason is not None:
        log.info("not using the %s head: %s", model, reason)
        return None
    if vecs.ndim != 2 or vecs.shape[1] != payload["dim"]:
        log.warning("the %s head expects %d-D vectors, got %s", model, payload["dim"], vecs.shape)
        return None
    probs = predict_proba(module, vecs)
    best = probs.argmax(axis=1)
    with gallery.session() as s:
        names = q.person_names(s, payload["person_ids"])
    return [HeadAnswer(names[payload["person_ids"][int(b)]], float(probs[i, b])) for i, b in enumerate(best)]


def delete_heads_with(gallery: Gallery, name: str | None, person_ids: Sequence[int] = ()) -> list[str]:
    """Delete every head file trained with ``name`` or one of ``person_ids`` (called by forget after the
    person's rows are gone; a forget finished later knows only the ids)."""
    deleted = []
    folder = gallery.settings.heads_dir
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        read = _read(path)
        if read is None:
            log.warning("cannot tell whether %s holds %r: unreadable; delete it by hand", path, name)
            continue
        payload, _ = read
        if name in payload["person_names"] or set(payload["person_ids"]) & set(person_ids):
            path.unlink(missing_ok=True)
            with _CACHE_LOCK:
                _CACHE.pop(str(path), None)
            deleted.append(f"{payload['embedder']} head ({len(payload['person_ids'])} people, {path.name})")
    return deleted
