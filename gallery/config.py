"""Settings built once at the edge (CLI, app, tests) and passed down as one frozen dataclass, and the defaults
the edges show in ``--help``. Importing this module imports no torch, faiss or sqlalchemy."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from indexer.embedders.registry import DLIB_ENGINES, available_embedders, random_init_embedders

#: Every embedder, from the registry (listing them imports no model code).
DEFAULT_MODELS = tuple(available_embedders())
#: The embedders that ``--weights random`` switches to seeded random weights (development and tests).
RANDOM_INIT_MODELS = tuple(random_init_embedders())
DEFAULT_AUGMENT = 4
DEFAULT_BATCH_SIZE = 32
#: calibrate's default target false-accept rate.
DEFAULT_TARGET_FAR = 1e-3
#: identify's default open-set false-positive identification rate (share of strangers named), issue 13.
DEFAULT_TARGET_FPIR = 0.01

__all__ = ["DEFAULT_AUGMENT", "DEFAULT_BATCH_SIZE", "DEFAULT_MODELS", "DEFAULT_TARGET_FAR", "DEFAULT_TARGET_FPIR",
           "DLIB_ENGINES", "RANDOM_INIT_MODELS", "Settings", "default_home"]


def default_home() -> Path:
    env = os.environ.get("FACEGALLERY_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".facegallery"


@dataclass(frozen=True)
class Settings:
    """Where the gallery lives and how models run.

    ``weights`` maps an embedder name to an explicit weights file or the word ``"random"`` (development and tests
    only; every report made with it says so). ``db_url`` defaults to ``sqlite:///<home>/gallery.sqlite``.
    """

    home: Path = field(default_factory=default_home)
    db_url: str | None = None
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    weights_dir: Path | None = None
    weights: dict[str, str] = field(default_factory=dict)
    min_face_size: int = 20
    min_face_prob: float = 0.90
    # Enrollment photos are curated (one person per folder): when no face reaches min_face_prob, the most
    # probable face down to this value is enrolled and reported as low-confidence instead of losing the photo.
    enroll_min_prob: float = 0.70
    lock_timeout_s: float = 600.0
    progress: bool = True
    fast: bool = False
    # dlib's network: "torch" (this project's port, batched, equal to dlib's own to 1e-6) or "dlib" (dlib-bin,
    # the reference). None: $FACEGALLERY_DLIB_ENGINE, else torch.
    dlib_engine: str | None = None
    # Where the vector caches live: None/"faiss" = FAISS files in <home>/indexes; "milvus://host:19530" = a Milvus
    # server; a path ending in .db = a Milvus Lite folder (gallery/milvus_cache.py). None: $FACEGALLERY_VECTORS.
    vectors: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.vectors is None and os.environ.get("FACEGALLERY_VECTORS"):
            object.__setattr__(self, "vectors", os.environ["FACEGALLERY_VECTORS"])
        if self.db_url is None:
            env = os.environ.get("FACEGALLERY_DB_URL")
            object.__setattr__(self, "db_url", env or self._default_url(self.home))

    def with_(self, **changes) -> Settings:
        """A copy with ``changes``; moving ``home`` moves a default (derived) SQLite URL with it."""
        if "home" in changes and "db_url" not in changes and self.db_url == self._default_url(self.home):
            changes["db_url"] = self._default_url(Path(changes["home"]).expanduser())
        return replace(self, **changes)

    @staticmethod
    def _default_url(home: Path) -> str:
        return f"sqlite:///{home / 'gallery.sqlite'}"

    @property
    def milvus_uri(self) -> str | None:
        """The Milvus store ``vectors`` names (a server URI or a Milvus Lite path), or None for FAISS files."""
        v = (self.vectors or "").strip()
        if v.startswith(("milvus://", "http://", "https://")):
            return v
        if v.endswith(".db"):
            return str(Path(v).expanduser())
        return None

    @property
    def index_dir(self) -> Path:
        return self.home / "indexes"

    @property
    def heads_dir(self) -> Path:
        return self.home / "heads"

    @property
    def lock_path(self) -> Path:
        return self.home / "gallery.lock"
