"""Running the service under uvicorn: ``facegallery serve``.

Binding to anything but a loopback address is refused until the gallery holds an active API key: a service on the
network without keys would answer nobody (every endpoint but health needs one) and invite the mistake of opening
it up some other way. With ``workers`` > 1 uvicorn starts that many processes, each importing
:func:`server.app.app_from_env` and reading the configuration from :data:`server.config.CONFIG_ENV`; each loads
the models once, and they share the database (and the index files, refreshed by the database's generation stamp).
"""
from __future__ import annotations

import ipaddress
import logging
import os

from gallery.config import Settings
from gallery.errors import GalleryError
from gallery.manage.keys import has_active_keys
from gallery.store import Gallery
from server.config import CONFIG_ENV, ServerOptions, to_env

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def check_bind(settings: Settings, host: str) -> None:
    """Refuse a non-loopback ``host`` while the gallery has no active API key."""
    if is_loopback(host):
        return
    with Gallery(settings) as g:
        if not has_active_keys(g):
            raise GalleryError(f"refusing to listen on {host}: the gallery has no API key yet; create one with "
                               f"`facegallery keys create NAME` (or listen on 127.0.0.1)")


def serve(settings: Settings, options: ServerOptions, *, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, log_level: str = "info") -> None:
    """Run the service until it is stopped (Ctrl+C / SIGTERM)."""
    import uvicorn

    check_bind(settings, host)
    os.environ[CONFIG_ENV] = to_env(settings, options)  # read by every worker (this process when workers == 1)
    uvicorn.run("server.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, timeout_graceful_shutdown=int(options.request_timeout_s) + 1)
