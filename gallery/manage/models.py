"""Which embedders a run uses, where their weights come from, and importing weight files."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from db import queries as q
from gallery.errors import GalleryError, WeightsMismatchError
from indexer.embedders import available_embedders, import_weights, weights_status
from indexer.embedders.weights import WeightsError, WeightsNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    name: str
    present: bool
    source: str | None
    path: str | None
    size_bytes: int | None
    sha256: str | None
    looked_in: tuple[str, ...]
    in_gallery: bool = False
    official: bool | None = None  # sha256 among the published ones (None: none published to compare with)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["looked_in"] = list(self.looked_in)
        return d


def _status(name: str, weights_dir: Path | None, in_gallery: bool = False) -> ModelStatus:
    st = weights_status(name, weights_dir)
    return ModelStatus(
        name=name, present=st.present, source=st.source, path=st.path, size_bytes=st.size_bytes, sha256=st.sha256,
        looked_in=tuple(st.looked_in), in_gallery=in_gallery, official=st.official,
    )


def list_models(weights_dir: Path | None = None, gallery=None) -> list[ModelStatus]:
    held = set(gallery.models_in_store()) if gallery is not None else set()
    return [_status(name, weights_dir, name in held) for name in available_embedders()]


def import_model(name: str, file: str | Path, weights_dir: Path | None = None) -> ModelStatus:
    if name not in available_embedders():
        raise GalleryError(f"unknown model {name!r}; known: {', '.join(available_embedders())}")
    try:
        import_weights(name, Path(file), weights_dir)
    except (WeightsError, OSError) as exc:
        raise GalleryError(str(exc)) from exc
    return _status(name, weights_dir)


def stored_weights(gallery) -> dict[str, str | None]:
    """Embedder -> sha256 of the weights that made the gallery's vectors, for every embedder it holds."""
    with gallery.session() as s:
        return {m: q.stored_weights(s, m) for m in q.embedders_in_store(s)}


def check_weights_match(gallery, model: str) -> None:
    """Refuse to mix vectors from two different weight files in one index (``reembed`` converts a gallery)."""
    emb = gallery.embedder(model)
    if not getattr(gallery, "exists", True):  # no gallery (verify): no stored vectors to mismatch
        return
    with gallery.session() as s:
        stored = q.stored_weights(s, model)
    if stored is not None and stored != emb.weights.sha256:
        raise WeightsMismatchError(
            f"the gallery's {model} vectors were made with weights {stored[:12]}, but the weights loaded now are "
            f"{emb.weights.sha256[:12]} ({emb.weights.source}); run `facegallery reembed --model {model}` to "
            f"re-embed the stored photos with them, or load the same weights as before"
        )


def resolve_models(gallery, models: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The embedders to use. Explicit names must load (their error propagates); by default every embedder
    whose weights are available is used and the others are returned with the reason they were skipped."""
    known = available_embedders()
    if models:
        chosen = list(dict.fromkeys(models))
        for m in chosen:
            if m not in known:
                raise GalleryError(f"unknown model {m!r}; known: {', '.join(known)}")
            gallery.embedder(m)
            check_weights_match(gallery, m)
        return chosen, {}
    chosen, skipped = [], {}
    for m in known:
        try:
            gallery.embedder(m)
        except WeightsNotFoundError as exc:
            skipped[m] = str(exc)
            continue
        check_weights_match(gallery, m)
        chosen.append(m)
    if not chosen:
        raise GalleryError("no embedder has weights: " + "; ".join(skipped.values()))
    return chosen, skipped
