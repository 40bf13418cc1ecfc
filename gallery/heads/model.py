"""Classifier-head networks and their training, on plain arrays (no gallery, no database).

Architectures are the seed project's: FaceNet BN -> Dropout .3 -> 512->256 -> ReLU -> Dropout .3 -> 256->C;
ResNet50 Dropout .5 -> 2048->512 -> ReLU -> Dropout .5 -> 512->C; dlib the FaceNet design scaled to 128-D
(128->64). Training: Adam, ReduceLROnPlateau and early stopping on the validation loss, with the validation
split made **by source photo** so augmented copies of one photo never sit on both sides (the seed's leak).
Deterministic for a given seed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that train or run a head: identify without heads,
    from torch import nn  # and every command that never trains one, skip its ~1 s import


@dataclass(frozen=True)
class HeadShape:
    """Hidden width, dropout and whether the input is batch-normalised (the seed project's two designs)."""

    hidden: int
    dropout: float
    batchnorm: bool


# FaceNet: BN -> Dropout .3 -> 512->256 -> ReLU -> Dropout .3 -> 256->C; ResNet50: Dropout .5 -> 2048->512 -> ReLU
# -> Dropout .5 -> 512->C; dlib: the FaceNet design scaled to its 128-D input.
HEAD_SHAPES: dict[str, HeadShape] = {
    "facenet": HeadShape(256, 0.3, True),
    "resnet50": HeadShape(512, 0.5, False),
    "dlib": HeadShape(64, 0.3, True),
}


def head_shape(model: str, dim: int) -> HeadShape:
    return HEAD_SHAPES.get(model) or HeadShape(max(8, dim // 2), 0.3, True)


def build_head(dim: int, n_classes: int, shape: HeadShape) -> nn.Sequential:
    from torch import nn

    layers: list[nn.Module] = [nn.BatchNorm1d(dim)] if shape.batchnorm else []
    layers += [nn.Dropout(shape.dropout), nn.Linear(dim, shape.hidden), nn.ReLU(), nn.Dropout(shape.dropout),
               nn.Linear(shape.hidden, n_classes)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 12  # early stopping: epochs without a better validation loss
    plateau_patience: int = 4
    plateau_factor: float = 0.5
    seed: int = 0


def split_by_photo(labels: np.ndarray, photo_ids: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Validation mask: per person, ``val_fraction`` of their photos (at least one when they have two or more),
    with every row of a chosen photo. People with a single photo stay entirely in training."""
    rng = np.random.default_rng(seed)
    val_photos: set[int] = set()
    for label in np.unique(labels):
        photos = np.unique(photo_ids[labels == label])
        if len(photos) < 2 or val_fraction <= 0:
            continue
        n_val = min(len(photos) - 1, max(1, round(val_fraction * len(photos))))
        val_photos.update(int(p) for p in rng.permutation(photos)[:n_val])
    return np.isin(photo_ids, np.fromiter(val_photos, np.int64, len(val_photos)))


@dataclass(frozen=True)
class FitResult:
    module: nn.Sequential
    history: dict[str, list[float]]
    best_epoch: int
    train_rows: int
    val_rows: int
    val_accuracy: float | None


def fit_head(x: np.ndarray, labels: np.ndarray, photo_ids: np.ndarray, shape: HeadShape,
             config: TrainConfig = TrainConfig()) -> FitResult:
    """Train a head on ``x`` (N, dim) with class indices ``labels``; deterministic for a given seed."""
    import torch

    val = split_by_photo(labels, photo_ids, config.val_fraction, config.seed)
    train_set = (torch.from_numpy(x[~val]), torch.from_numpy(labels[~val]))
    val_set = (torch.from_numpy(x[val]), torch.from_numpy(labels[val]))
    threads = torch.get_num_threads()
    # One thread: an MLP this small gains nothing from more, and on a busy CPU torch's spinning worker threads
    # made training 20x slower (measured: 34 s vs 1.7 s for the same run on this loaded 2-core machine).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            module = build_head(x.shape[1], int(labels.max()) + 1, shape)
            history, best_epoch = _fit(module, train_set, val_set, config)
    finally:
        torch.set_num_threads(threads)
    module.eval()
    acc = history["val_accuracy"][best_epoch] if len(val_set[1]) else None
    return FitResult(module, history, best_epoch, int((~val).sum()), int(val.sum()), acc)


def _fit(module: nn.Module, train_set, val_set, config: TrainConfig) -> tuple[dict[str, list[float]], int]:
    """Adam + ReduceLROnPlateau + early stopping on the validation loss; leaves the best state in ``module``."""
    import torch

    (xt, yt), (xv, yv) = train_set, val_set
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": [], "lr": []}
    opt = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
    gen = torch.Generator().manual_seed(config.seed)
    best, best_epoch, best_state, waited = math.inf, 0, copy.deepcopy(module.state_dict()), 0
    for epoch in range(config.epochs):
        train_loss = _train_epoch(module, opt, xt, yt, gen, config.batch_size)
        val_loss, val_acc = _evaluate(module, xv, yv) if len(yv) else (train_loss, math.nan)
        for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("val_accuracy", val_acc),
                           ("lr", opt.param_groups[0]["lr"])):
            history[key].append(value)
        sched.step(val_loss)
        if val_loss < best - 1e-6:
            best, best_epoch, best_state, waited = val_loss, epoch, copy.deepcopy(module.state_dict()), 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    module.load_state_dict(best_state)
    return history, best_epoch


def _train_epoch(module, opt, x, y, gen, batch_size) -> float:
    import torch
    from torch import nn

    module.train()
    order = torch.randperm(len(x), generator=gen)
    total, seen = 0.0, 0
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on a batch of one
            continue
        opt.zero_grad()
        loss = nn.functional.cross_entropy(module(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def _evaluate(module, x, y) -> tuple[float, float]:
    import torch
    from torch import nn

    module.eval()
    with torch.inference_mode():
        logits = module(x)
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def predict_proba(module: nn.Module, vecs: np.ndarray) -> np.ndarray:
    import torch

    module.eval()
    with torch.inference_mode():
        return torch.softmax(module(torch.from_numpy(np.ascontiguousarray(vecs, np.float32))), dim=1).numpy()
