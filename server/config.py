"""What a server process needs besides the gallery's :class:`~gallery.config.Settings`: limits, timeouts and
micro-batching, and how both travel to uvicorn's worker processes (one environment variable, JSON)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from gallery.config import Settings
from gallery.recognize.batching import BatchOptions

#: The environment variable a worker process reads its configuration from (set by ``facegallery serve``).
CONFIG_ENV = "FACEGALLERY_SERVER_CONFIG"
MB = 2**20


@dataclass(frozen=True)
class ServerOptions:
    """Limits per request and how the models are shared by concurrent requests."""

    max_image_bytes: int = 10 * MB  # one uploaded file
    max_images: int = 8  # files per request
    max_pixels: int = 40_000_000  # per image (a 7300 x 5500 photo); the library's own ceiling is ~89.5 MP
    request_timeout_s: float = 60.0  # whole request, upload included; then 504
    batching: bool = True  # join concurrent detector / embedder calls (gallery.recognize.batching)
    batch: BatchOptions = field(default_factory=BatchOptions)
    max_in_flight: int = 64  # requests using the models at once in one worker; one more gets 503
    retry_after_s: int = 1  # Retry-After of a 503
    warm_up: bool = True  # load the detector and the gallery's embedders before accepting requests

    @property
    def max_request_bytes(self) -> int:
        """A whole request body: every image at its limit plus room for the multipart framing."""
        return self.max_images * self.max_image_bytes + MB

    def with_(self, **changes) -> ServerOptions:
        return replace(self, **changes)


def to_env(settings: Settings, options: ServerOptions) -> str:
    """Settings and options as the JSON document a worker reads from :data:`CONFIG_ENV`."""
    doc = {"settings": {f.name: _plain(getattr(settings, f.name)) for f in fields(settings)},
           "options": asdict(options)}
    return json.dumps(doc, sort_keys=True)


def from_env(environ=None) -> tuple[Settings, ServerOptions]:
    """The worker's settings and options (defaults when :data:`CONFIG_ENV` is not set)."""
    raw = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if not raw:
        return Settings(), ServerOptions()
    doc = json.loads(raw)
    known = {f.name for f in fields(Settings)}
    kw = {k: v for k, v in doc.get("settings", {}).items() if k in known}
    for k in ("home", "weights_dir"):
        if kw.get(k) is not None:
            kw[k] = Path(kw[k])
    opts = dict(doc.get("options", {}))
    opts["batch"] = BatchOptions(**opts.get("batch", {}))
    return Settings(**kw), ServerOptions(**opts)


def _plain(value):
    return str(value) if isinstance(value, Path) else value
