"""The HTTP service (server/, `facegallery serve`, `facegallery keys`), issue 16.

Fine-grained cases go through FastAPI's TestClient with the fast fake models (tests/fakes.py): keys (none, wrong,
revoked, read-only), the problem+json shape, every endpoint's happy path and bad input, the limits, the timeout
and a byte-level check that forget over HTTP erases the vectors. Then real uvicorn processes on 127.0.0.1 (a free
port each, stopped at the end; every request loop bounded): two servers on one gallery see each other's writes at
once, a full queue answers 503 with Retry-After, and `facegallery serve` with the real MTCNN and dlib embedder
enrolls and identifies five_celebrity photos with the same JSON as `facegallery identify --json`.
"""
from __future__ import annotations

import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks.common import free_port, served

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from cli.main import cli  # noqa: E402
from db import queries as q  # noqa: E402
from gallery.config import Settings  # noqa: E402
from gallery.errors import GalleryError  # noqa: E402
from gallery.manage.keys import create_key, revoke_key  # noqa: E402
from gallery.recognize.batching import BatchOptions  # noqa: E402
from gallery.recognize.identify import identify  # noqa: E402
from gallery.store import Gallery  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import CONFIG_ENV, ServerOptions, to_env  # noqa: E402
from server.launch import check_bind  # noqa: E402
from tests.fakes import FakeDetector, fake_factory, person_image  # noqa: E402
from tests.server_app import slow_factory  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "instance"}


def jpg(seed: int, size=(120, 140)) -> bytes:
    buf = io.BytesIO()
    person_image(seed, size).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png(color=(120, 120, 120), size=(80, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def assert_problem(res, status: int, code: str, detail: str | None = None) -> dict:
    assert res.status_code == status, res.text
    assert res.headers["content-type"] == "application/problem+json"
    body = res.json()
    assert set(body) == PROBLEM_KEYS and body["status"] == status and body["code"] == code
    assert body["type"] == "about:blank" and body["title"] and "\n" not in body["detail"]
    if detail is not None:
        assert body["detail"] == detail
    return body


class Api:
    """A TestClient over a gallery with fake models, and a write key and a read-only key."""

    def __init__(self, home: Path, options: ServerOptions | None = None, factory=None):
        self.settings = Settings(home=home, progress=False)
        with Gallery(self.settings) as g:
            self.write = create_key(g, "writer").token
            self.read = create_key(g, "reader", read_only=True).token
        app = create_app(self.settings, options or ServerOptions(), detector=FakeDetector(),
                         embedder_factory=factory or fake_factory())
        self.client = TestClient(app, raise_server_exceptions=False)

    def auth(self, token: str | None = None) -> dict:
        return {"Authorization": f"Bearer {token or self.write}"}

    def enroll(self, name: str, seeds, token=None, **params):
        files = [("photos", (f"{s}.jpg", jpg(s))) for s in seeds]
        return self.client.post(f"/v1/people/{name}/photos", files=files, headers=self.auth(token),
                                params={"model": "dlib", "augment": 1, **params})

    def identify(self, files, token=None, **params):
        return self.client.post("/v1/identify", files=[("images", f) for f in files], headers=self.auth(token),
                                params=params)


@pytest.fixture
def api(tmp_path):
    a = Api(tmp_path / "g")
    with a.client:
        yield a


# -- keys --------------------------------------------------------------------------------------------------------
ENDPOINTS = [("get", "/v1/people"), ("get", "/v1/models"), ("post", "/v1/identify"), ("post", "/v1/verify"),
             ("post", "/v1/people/someone/photos"), ("delete", "/v1/people/someone")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_but_health_needs_a_valid_unrevoked_key(api, method, path):
    assert api.client.get("/v1/health").json()["status"] == "ok"  # no key needed
    call = getattr(api.client, method)
    body = assert_problem(call(path), 401, "missing_key")
    assert "Authorization: Bearer" in body["detail"] and "facegallery keys create" in body["detail"]
    assert call(path).headers["www-authenticate"] == "Bearer"
    assert_problem(call(path, headers=api.auth("fgk_" + "x" * 43)), 401, "invalid_key", "invalid or revoked API key")
    assert_problem(call(path, headers={"X-API-Key": "not-even-a-key"}), 401, "invalid_key")
    with Gallery(api.settings) as g:
        token = create_key(g, "short-lived").token
        assert call(path, headers=api.auth(token)).status_code not in (401, 403)
        revoke_key(g, "short-lived")
    assert_problem(call(path, headers=api.auth(token)), 401, "invalid_key")  # revoked: refused at once


def test_a_read_only_key_reads_but_cannot_write(api):
    assert api.enroll("ann", [100, 101]).status_code == 200
    assert api.client.get("/v1/people", headers={"X-API-Key": api.read}).status_code == 200
    assert api.identify([("q.jpg", jpg(102))], token=api.read).status_code == 200
    detail = ("the API key 'reader' is read-only; this request changes the gallery and needs a key with write "
              "scope")
    assert_problem(api.enroll("bob", [200], token=api.read), 403, "read_only_key", detail)
    assert_problem(api.client.delete("/v1/people/ann", headers=api.auth(api.read)), 403, "read_only_key", detail)
    assert [p["name"] for p in api.client.get("/v1/people", headers=api.auth()).json()["people"]] == ["ann"]


def test_keys_cli_shows_the_token_once_and_stores_only_its_hash(tmp_path):
    home = tmp_path / "g"
    run = CliRunner()
    res = run.invoke(cli, ["--gallery", str(home), "keys", "create", "app-1", "--json"])
    assert res.exit_code == 0, res.output
    created = json.loads(res.stdout)
    token = created["token"]
    assert token.startswith("fgk_") and len(token) >= 40 and created["scope"] == "write"
    res = run.invoke(cli, ["--gallery", str(home), "keys", "create", "viewer", "--read-only"])
    assert res.exit_code == 0 and res.stdout.strip().startswith("fgk_")  # the token alone on stdout
    listed = json.loads(run.invoke(cli, ["--gallery", str(home), "keys", "list", "--json"]).stdout)["keys"]
    assert [(k["name"], k["scope"], k["active"]) for k in listed] == [("app-1", "write", True),
                                                                     ("viewer", "read", True)]
    assert token not in json.dumps(listed) and listed[0]["prefix"] == token[:12]
    files = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert token.encode() not in files and token[12:].encode() not in files  # never stored in clear
    res = run.invoke(cli, ["--gallery", str(home), "keys", "create", "app-1"])
    assert res.exit_code == 1 and "Error: an API key named 'app-1' already exists" in res.output
    assert run.invoke(cli, ["--gallery", str(home), "keys", "revoke", "app-1"]).exit_code == 0
    res = run.invoke(cli, ["--gallery", str(home), "keys", "revoke", "app-1"])
    assert res.exit_code == 1 and res.output.strip() == "Error: no active API key named 'app-1'"
    listed = json.loads(run.invoke(cli, ["--gallery", str(home), "keys", "list", "--json"]).stdout)["keys"]
    assert listed[0]["active"] is False and listed[0]["revoked_at"]


def test_listening_beyond_loopback_needs_a_key(tmp_path):
    settings = Settings(home=tmp_path / "g", progress=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(settings, host)  # loopback: always allowed
    with pytest.raises(GalleryError, match="refusing to listen on 0.0.0.0: the gallery has no API key yet"):
        check_bind(settings, "0.0.0.0")
    res = CliRunner().invoke(cli, ["--gallery", str(settings.home), "serve", "--host", "0.0.0.0"])
    assert res.exit_code == 1 and "Error: refusing to listen on 0.0.0.0" in res.output
    with Gallery(settings) as g:
        create_key(g, "k")
        check_bind(settings, "0.0.0.0")
        revoke_key(g, "k")  # a revoked key does not count
    with pytest.raises(GalleryError):
        check_bind(settings, "192.0.2.10")


# -- endpoints ---------------------------------------------------------------------------------------------------
def test_enroll_people_identify_verify_forget_render_the_library_results(api):
    rep = api.enroll("ann", [100, 101])
    assert rep.status_code == 200 and rep.headers["content-type"] == "application/json"
    body = rep.json()
    assert [p["path"] for p in body["enrolled"]] == ["upload:100.jpg", "upload:101.jpg"]
    assert body["embeddings_added"] == {"dlib": 4} and body["people"] == ["ann"]
    assert api.enroll("ann", [100]).json()["unchanged"] == 1  # same name, same bytes: nothing to do
    assert api.enroll("bob", [200, 201]).status_code == 200
    people = api.client.get("/v1/people", headers=api.auth()).json()["people"]
    assert [(p["name"], p["photos"], p["embeddings"]) for p in people] == [("ann", 2, {"dlib": 4}),
                                                                         ("bob", 2, {"dlib": 4})]
    files = [("a.jpg", jpg(102)), ("b.jpg", jpg(202)), ("blank.png", png())]
    got = api.identify(files, top_k=3).json()
    with Gallery(api.settings, detector=FakeDetector(), embedder_factory=fake_factory()) as g:
        assert got == identify(g, files, top_k=3).to_dict()  # exactly what `identify --json` prints
    assert [i["faces"][0]["models"]["dlib"]["identity"] for i in got["images"][:2]] == ["ann", "bob"]
    assert got["images"][2]["faces"] == []  # no face: a normal answer, as in the CLI
    several = api.identify([("a.jpg", jpg(102)), ("broken.jpg", b"not an image")]).json()
    assert several["images"][1]["error"] == "not an image"  # among several: an error entry, the rest answered
    ver = api.client.post("/v1/verify", files=[("image_a", ("a.jpg", jpg(102))), ("image_b", ("b.jpg", jpg(103)))],
                          headers=api.auth(), params={"model": "dlib"}).json()
    assert ver["image_a"] == "a.jpg" and [(a["model"], a["same"]) for a in ver["answers"]] == [("dlib", True)]
    gone = api.client.delete("/v1/people/ann", headers=api.auth()).json()
    assert gone == {"name": "ann", "photos": 2, "embeddings_removed": {"dlib": 4}, "heads_invalidated": [],
                    "compacted": True, "library_faces": 0}
    after = api.identify([("a.jpg", jpg(102))]).json()["images"][0]["faces"][0]["models"]["dlib"]
    assert after["identity"] != "ann" and "ann" not in [c["identity"] for c in after["candidates"]]


def test_bad_inputs_answer_problems_with_the_cli_messages(api):
    assert api.enroll("ann", [100]).status_code == 200
    assert_problem(api.identify([("corrupt.jpg", b"\xff\xd8\xff not a jpeg")]), 400, "bad_image")
    assert_problem(api.identify([("empty.jpg", b"")]), 400, "bad_image", "empty.jpg: empty file")
    res = api.client.post("/v1/verify", files=[("image_a", ("a.jpg", jpg(100))), ("image_b", ("b.png", png()))],
                          headers=api.auth())
    assert_problem(res, 422, "no_face", "b.png: no face detected")
    assert_problem(api.client.delete("/v1/people/nobody", headers=api.auth()), 404, "unknown_person",
                   "no person named 'nobody' in the gallery")
    assert_problem(api.identify([("a.jpg", jpg(100))], model="nope"), 400, "invalid_input",
                   "unknown model 'nope'; known: dlib, facenet, resnet50")
    assert_problem(api.identify([("a.jpg", jpg(100))], top_k=0), 422, "invalid_parameter",
                   "query.top_k: Input should be greater than or equal to 1")
    assert_problem(api.client.post("/v1/identify", headers=api.auth(), content=b"{}"), 415,
                   "unsupported_media_type")
    res = api.client.post("/v1/verify", files=[("image_a", ("a.jpg", jpg(100)))], headers=api.auth())
    assert_problem(res, 422, "missing_image", "image_b: no image uploaded (curl -F image_b=@photo.jpg)")
    res = api.client.post("/v1/people/%20/photos", files=[("photos", ("a.jpg", jpg(100)))], headers=api.auth())
    assert_problem(res, 400, "invalid_input", "person name is blank")
    assert_problem(api.client.get("/v1/nowhere", headers=api.auth()), 404, "not_found")


def test_an_empty_gallery_is_a_conflict_not_a_crash(api):
    assert_problem(api.identify([("a.jpg", jpg(100))]), 409, "empty_gallery",
                   "the gallery is empty: enroll people first (facegallery enroll PEOPLE_DIR)")


def test_upload_limits(tmp_path):
    options = ServerOptions(max_image_bytes=30_000, max_images=2, max_pixels=1_000_000)
    a = Api(tmp_path / "g", options)
    with a.client:
        big = jpg(1, size=(400, 400)) + b"\0" * 30_000
        assert_problem(a.identify([("big.jpg", big)]), 413, "too_large", "big.jpg: larger than the limit of 29 KB "
                       "per image")
        assert_problem(a.identify([(f"{i}.jpg", jpg(i)) for i in range(3)]), 413, "too_many_images",
                       "too many images: at most 2 per request")
        wide = png(size=(1001, 1000))  # small file, too many pixels: refused from the header, before decoding
        assert len(wide) < 30_000
        assert_problem(a.identify([("wide.png", wide)]), 413, "too_many_pixels",
                       "wide.png: 1001x1000 pixels is over the limit of 1 megapixels per image")
        res = a.client.post("/v1/identify", headers={**a.auth(), "content-type": "multipart/form-data; boundary=x"},
                            content=b"x" * (options.max_request_bytes + 1))
        assert_problem(res, 413, "request_too_large")
        chunks = (b"x" * 65536 for _ in range(options.max_request_bytes // 65536 + 2))  # no Content-Length
        res = a.client.post("/v1/identify", headers={**a.auth(), "content-type": "multipart/form-data; boundary=x"},
                            content=chunks)
        assert_problem(res, 413, "request_too_large")


def test_a_slow_request_times_out_with_504(tmp_path):
    a = Api(tmp_path / "g", ServerOptions(request_timeout_s=0.5), factory=slow_factory(0.0))
    with a.client:
        assert a.enroll("ann", [100]).status_code == 200
    slow = Api(tmp_path / "g2", ServerOptions(request_timeout_s=0.5, warm_up=False), factory=slow_factory(3.0))
    with slow.client:
        with Gallery(slow.settings, detector=FakeDetector(), embedder_factory=fake_factory()) as g:
            from gallery.enroll.enroll import enroll_images

            enroll_images(g, "ann", [("a.jpg", jpg(100))], models=["dlib"], augment=0)
        assert_problem(slow.identify([("a.jpg", jpg(101))]), 504, "timeout", "the request took longer than 0.5 s")


def test_openapi_documents_every_endpoint_and_the_uploads(api):
    assert api.client.get("/docs").status_code == 200
    spec = api.client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/health", "/v1/identify", "/v1/verify", "/v1/people/{name}/photos",
                                  "/v1/people", "/v1/people/{name}", "/v1/models"}
    body = spec["paths"]["/v1/identify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["images"]["items"]["format"] == "binary"
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])


def test_forget_over_http_erases_the_vectors_at_byte_level(api):
    for name, base in (("zelda", 300), ("other", 400)):
        assert api.enroll(name, [base, base + 1, base + 2]).status_code == 200
    home = api.settings.home
    with Gallery(api.settings) as g, g.session() as s:
        own = q.vectors_of_person(s, "dlib", q.person_by_name(s, "zelda").id)[1]
        other = q.vectors_of_person(s, "dlib", q.person_by_name(s, "other").id)[1]
    needles = [q.vector_to_bytes(v) for v in own]

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())

    assert all(n in files() for n in needles)
    assert api.client.delete("/v1/people/zelda", headers=api.auth()).status_code == 200
    data = files()
    assert not [n for n in needles if n in data] and b"zelda" not in data
    assert all(q.vector_to_bytes(v) in data for v in other)  # the others' vectors are still there


# -- real uvicorn processes on 127.0.0.1 -----------------------------------------------------------------------


def fake_server(home: Path, log: Path, options: ServerOptions = ServerOptions(), delay: float = 0.0):
    port = free_port()
    env = {CONFIG_ENV: to_env(Settings(home=home, progress=False), options), "FACEGALLERY_TEST_EMBED_DELAY": str(delay),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "tests.server_app:fake_app", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    return served(cmd, env, log, port)


def _keys(home: Path) -> str:
    with Gallery(Settings(home=home, progress=False)) as g:
        return create_key(g, "test").token


def test_two_server_processes_see_each_others_writes_at_once(tmp_path):
    home = tmp_path / "g"
    auth = {"Authorization": f"Bearer {_keys(home)}"}
    with fake_server(home, tmp_path / "a.log") as a, fake_server(home, tmp_path / "b.log") as b:
        assert httpx.get(f"{a}/v1/health").json()["worker"] != httpx.get(f"{b}/v1/health").json()["worker"]

        def who(base: str, seed: int) -> str | None:
            res = httpx.post(f"{base}/v1/identify", files=[("images", ("q.jpg", jpg(seed)))], headers=auth,
                             timeout=60)
            assert res.status_code == 200, res.text
            return res.json()["images"][0]["faces"][0]["models"]["dlib"]["identity"]

        for p, (writer, reader) in enumerate([(a, b), (b, a), (a, b)]):
            res = httpx.post(f"{writer}/v1/people/person_{p}/photos", headers=auth, timeout=60,
                             params={"model": "dlib", "augment": 1},
                             files=[("photos", (f"{i}.jpg", jpg(100 * p + i))) for i in range(2)])
            assert res.status_code == 200, res.text
            assert who(reader, 100 * p + 5) == f"person_{p}"  # the other process, right after the response
        assert httpx.delete(f"{b}/v1/people/person_0", headers=auth, timeout=60).status_code == 200
        assert who(a, 5) != "person_0"


def test_a_full_queue_answers_503_with_retry_after_and_nothing_else_fails(tmp_path):
    home = tmp_path / "g"
    auth = {"Authorization": f"Bearer {_keys(home)}"}
    options = ServerOptions(max_in_flight=2, batch=BatchOptions(max_batch=1, max_wait_ms=0, max_queue=1))
    with fake_server(home, tmp_path / "s.log", options, delay=0.4) as base:
        res = httpx.post(f"{base}/v1/people/ann/photos", headers=auth, params={"model": "dlib", "augment": 0},
                         files=[("photos", ("a.jpg", jpg(100)))], timeout=60)
        assert res.status_code == 200, res.text

        def ask(_):
            return httpx.post(f"{base}/v1/identify", files=[("images", ("q.jpg", jpg(101)))], headers=auth,
                              timeout=60)

        with ThreadPoolExecutor(8) as pool:  # 8 at once against room for 2: bounded, loopback only
            answers = list(pool.map(ask, range(8)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert assert_problem(r, 503, "busy")["detail"].startswith("the server is busy: ")


@pytest.mark.slow
def test_facegallery_serve_with_real_models_answers_like_the_cli(tmp_path, five_celebrity, monkeypatch):
    pytest.importorskip("dlib")
    home = tmp_path / "g"
    token = CliRunner().invoke(cli, ["--gallery", str(home), "keys", "create", "e2e"]).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    people = sorted(p.name for p in (five_celebrity / "train").iterdir() if p.is_dir())
    port = free_port()
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "--gallery", str(home), "-q",
           "serve", "--port", str(port), "--workers", "1"]
    with served(cmd, {"OMP_NUM_THREADS": "1"}, tmp_path / "serve.log", port) as base:
        for name in people:
            photos = sorted((five_celebrity / "train" / name).iterdir())[:3]
            res = httpx.post(f"{base}/v1/people/{name}/photos", headers=auth, timeout=300,
                             params={"model": "dlib", "augment": 0},
                             files=[("photos", (p.name, p.read_bytes())) for p in photos])
            assert res.status_code == 200, res.text
            assert len(res.json()["enrolled"]) == 3
        queries = [sorted((five_celebrity / "val" / name).iterdir())[0] for name in people]
        labels = [f"{q.parent.name}/{q.name}" for q in queries]
        res = httpx.post(f"{base}/v1/identify", headers=auth, timeout=300,
                         files=[("images", (label, q.read_bytes())) for label, q in zip(labels, queries)])
        assert res.status_code == 200, res.text
        answered = res.json()
        models = httpx.get(f"{base}/v1/models", headers=auth, timeout=60)
        assert models.status_code == 200 and "dlib" in [m["name"] for m in models.json()["models"]]
        corrupt = tmp_path / "corrupt.jpg"
        corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
        bad = httpx.post(f"{base}/v1/identify", headers=auth, timeout=60,
                         files=[("images", ("corrupt.jpg", corrupt.read_bytes()))])
    monkeypatch.chdir(five_celebrity / "val")
    cli_out = CliRunner().invoke(cli, ["--gallery", str(home), "-q", "identify", *labels, "--json"])
    assert cli_out.exit_code == 0, cli_out.output
    assert answered == json.loads(cli_out.stdout)  # the same JSON, field for field
    found = [img["faces"][0]["models"]["dlib"]["identity"] if img["faces"] else None for img in answered["images"]]
    assert sum(f == name for f, name in zip(found, people)) >= 4, found
    monkeypatch.chdir(tmp_path)
    cli_bad = CliRunner().invoke(cli, ["--gallery", str(home), "-q", "identify", "corrupt.jpg"])
    assert cli_bad.exit_code == 1
    assert_problem(bad, 400, "bad_image", cli_bad.output.strip().removeprefix("Error: "))
