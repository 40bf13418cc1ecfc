"""Starting the web page: hand the settings to the Streamlit process and run ``app/page.py`` in it."""
from __future__ import annotations

import os
from pathlib import Path

from app.reports import REPORTS_ENV
from app.support import APP_SETTINGS_ENV, settings_to_env
from gallery.config import Settings
from gallery.manage.access import ACCESS_ENV

PAGE = Path(__file__).with_name("page.py")


def serve(settings: Settings, *, host: str, port: int, report: Path | None = None, access: str | None = None) -> None:
    """Run the Streamlit server in this process until it is stopped (Ctrl+C). ``access``: the page's
    :class:`gallery.manage.access.AppAccess` as its environment document."""
    from streamlit.web import cli as streamlit_cli

    os.environ[APP_SETTINGS_ENV] = settings_to_env(settings)  # read back by the page (this process)
    if access is not None:
        os.environ[ACCESS_ENV] = access
    if report is not None:
        os.environ[REPORTS_ENV] = str(report.resolve())
    args = ["run", str(PAGE), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer"]
    streamlit_cli.main(args=args, prog_name="streamlit")
