"""Settings built once at the edge (CLI, app, tests) and passed down as one frozen dataclass."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_MODELS = ("facenet", "resnet50", "dlib")
DEFAULT_AUGMENT = 4
DEFAULT_BATCH_SIZE = 32


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

    def __post_init__(self):
        object.__setattr__(self, "home", Path(self.home).expanduser())
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
    def index_dir(self) -> Path:
        return self.home / "indexes"

    @property
    def heads_dir(self) -> Path:
        return self.home / "heads"

    @property
    def lock_path(self) -> Path:
        return self.home / "gallery.lock"
