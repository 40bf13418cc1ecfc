"""Issue 14, item 7: the web app asks for its access token before anything else, and reads no server path unless
allowed. Through Streamlit's AppTest on a small gallery (fake-free: the gate comes before any model is needed), and
the ``facegallery app`` command's refusals. The real browser test (tests/test_app_browser.py) types a wrong and
the right token into Chromium."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from gallery.config import Settings
from gallery.manage.access import TOKEN_KEY, AppAccess, app_access, is_loopback, new_token, token_ok
from gallery.store import Gallery

APP = Path(__file__).resolve().parents[1] / "app" / "page.py"


@pytest.fixture
def page(monkeypatch, tmp_path):
    pytest.importorskip("streamlit")
    for var in ("FACEGALLERY_APP_SETTINGS", "FACEGALLERY_REPORTS", "FACEGALLERY_DB_URL", "FACEGALLERY_APP_ACCESS"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "g"
    with Gallery(Settings(home=home, progress=False)) as g:
        token = new_token(g)
    monkeypatch.setenv("FACEGALLERY_HOME", str(home))

    def start(access: AppAccess | None = None):
        from streamlit.testing.v1 import AppTest

        if access is not None:
            monkeypatch.setenv("FACEGALLERY_APP_ACCESS", access.to_env())
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.run()
        assert not at.exception, at.exception
        return at

    return start, token


def test_every_page_asks_for_the_token_and_a_wrong_one_is_refused(page):
    start, token = page
    at = start()  # started without the variable (streamlit run): token required
    assert [t.label for t in at.text_input] == ["Access token"] and not at.sidebar.radio
    at.text_input(key="access_token").set_value("not-the-token").run()
    assert [e.value for e in at.error] == ["Wrong access token."] and not at.sidebar.radio
    at.text_input(key="access_token").set_value(token).run()
    assert not at.error and [r.label for r in at.sidebar.radio] == ["Page"]
    assert "The gallery is empty: enroll people on the Enroll page first." in [i.value for i in at.info]
    assert "identify_path" not in [t.key for t in at.text_input]  # no server paths by default


def test_server_paths_only_when_allowed(page):
    start, _ = page
    at = start(AppAccess(auth=False, paths=True))
    assert not [t for t in at.text_input if t.label == "Access token"]
    at = start(AppAccess(auth=False, paths=False))
    assert [r.label for r in at.sidebar.radio] == ["Page"]


def test_the_token_is_stored_hashed_and_replaced_by_a_new_one(tmp_path):
    settings = Settings(home=tmp_path / "g", progress=False)
    first = app_access(settings, host="127.0.0.1")
    assert first.auth and not first.paths and first.token and len(first.token) >= 32
    assert app_access(settings, host="127.0.0.1").token is None  # shown once
    with Gallery(settings) as g:
        assert token_ok(g, first.token) and not token_ok(g, first.token[:-1] + "x") and not token_ok(g, "")
        with g.session() as s:
            from db import queries as q

            assert q.get_setting(s, TOKEN_KEY) != first.token  # only its sha256 is stored
    assert first.token.encode() not in (tmp_path / "g" / "gallery.sqlite").read_bytes()
    second = app_access(settings, host="127.0.0.1", renew=True)
    with Gallery(settings) as g:
        assert token_ok(g, second.token) and not token_ok(g, first.token)


def test_app_refuses_a_network_bind_without_auth_and_warns_with_it(tmp_path, monkeypatch):
    import app.launch

    served = []
    monkeypatch.setattr(app.launch, "serve", lambda settings, **kw: served.append(kw))
    base = ["--gallery", str(tmp_path / "g"), "app"]
    res = CliRunner().invoke(cli, [*base, "--host", "0.0.0.0", "--no-auth"])
    assert res.exit_code == 1 and res.stderr == (
        "Error: refusing to serve 0.0.0.0 without an access token: --no-auth is only for a loopback --host such as "
        "127.0.0.1\n") and not served
    res = CliRunner().invoke(cli, [*base, "--host", "0.0.0.0"])
    assert res.exit_code == 0, res.output
    assert "warning: listening on 0.0.0.0: anyone who can reach this port and has the token" in res.stderr
    assert "Access token (shown once; stored hashed in the gallery): " in res.stderr
    assert json.loads(served[-1]["access"]) == {"auth": True, "paths": False}
    res = CliRunner().invoke(cli, [*base, "--no-auth", "--allow-paths"])
    assert res.exit_code == 0 and json.loads(served[-1]["access"]) == {"auth": False, "paths": True}
    res = CliRunner().invoke(cli, base)
    assert "Access token: the one shown when it was made" in res.stderr


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                             ("localhost", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                             ("::", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback
