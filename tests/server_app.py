"""An application factory for tests that start a real uvicorn with the fast fake models (tests/fakes.py):

    python -m uvicorn --factory tests.server_app:fake_app --host 127.0.0.1 --port PORT

It reads the gallery settings and server options from ``FACEGALLERY_SERVER_CONFIG`` like the real factory, and
``FACEGALLERY_TEST_EMBED_DELAY`` (seconds per embedder call) to make the embedder slow.
"""
from __future__ import annotations

import os
import time

from server.app import create_app
from server.config import from_env
from tests.fakes import FakeDetector, FakeEmbedder


class SlowEmbedder(FakeEmbedder):
    def __init__(self, name: str, delay: float):
        super().__init__(name)
        self.delay = delay

    def embed_crops(self, crops, batch_size: int = 32):
        time.sleep(self.delay)
        return super().embed_crops(crops, batch_size)


def slow_factory(delay: float):
    made: dict = {}

    def factory(name, **_kw):
        if name not in made:
            made[name] = SlowEmbedder(name, delay)
        return made[name]

    return factory


def fake_app():
    settings, options = from_env()
    delay = float(os.environ.get("FACEGALLERY_TEST_EMBED_DELAY", "0"))
    return create_app(settings, options, detector=FakeDetector(), embedder_factory=slow_factory(delay))
