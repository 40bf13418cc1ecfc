"""The web app's Library and Person pages (issue 15) over a real gallery: real SQLite, MTCNN and the dlib embedder,
on LFW photos.

The gallery (built once per session, :func:`shared_library_gallery`): Colin Powell enrolled from two photos and
Hugo Chavez from one; a library of 11 other photos with one face each: Serena Williams x4, Junichiro Koizumi x4,
Colin Powell x3 (suggested for the enrolled Colin Powell). Its clusters are made with chinese whispers, which
separates the three people here (the default method's parameters are tuned elsewhere and not relied on). Tests
that write work on a copy. The last test drives the pages in headless Chromium (same skip rules as
tests/test_app_browser.py): name a cluster on the Library page, then see the person's photos on the Person page
(screenshots ``app_library.png`` and ``app_person.png`` under the test's tmp dir).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

from app import library as app_library
from db import queries as q
from gallery.config import Settings
from gallery.errors import InvalidInputError, PersonNotFoundError
from gallery.library.clusters import list_clusters
from gallery.library.sheets import BOX_COLOUR, thumbnails_of_faces
from gallery.store import Gallery
from tests import test_app, test_app_browser
from tests.helpers import lfw_folder
from tests.test_app import texts
from tests.test_app_browser import PAGE_TIMEOUT_S, REPO, _enter_token, _free_port, _need_browser, _token, _wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.data]

LIBRARY = {"Serena_Williams": (1, 2, 3, 5), "Junichiro_Koizumi": (2, 3, 4, 5), "Colin_Powell": (3, 4, 5)}
ENROLLED = {"Colin Powell": ("Colin_Powell", (1, 2)), "Hugo Chavez": ("Hugo_Chavez", (1,))}
METHOD = None  # the default clustering method and its tuned parameters

app_env = test_app.app_env  # fixtures shared with the other app tests
browser = test_app_browser.browser


def shared_library_gallery(tmp_path_factory, lfw_dir: Path) -> Path:
    """Build (once per test session) the gallery described in the module docstring; returns its home (the library
    photos are in ``<home>/../library_photos``)."""
    from gallery.enroll.enroll import enroll_folder
    from gallery.library.clusters import update_clusters
    from gallery.library.scan import scan_library

    base = tmp_path_factory.getbasetemp()
    home, done = base / "app_library_gallery", base / "app_library_gallery.done"
    with FileLock(str(base / "app_library_gallery.lock")):
        if not done.exists():
            library = lfw_folder(lfw_dir, base / "library_photos", LIBRARY)
            people = base / "library_people"
            for name, (lfw_name, numbers) in ENROLLED.items():
                lfw_folder(lfw_dir, people / "lfw", {lfw_name: numbers})
                (people / "lfw" / lfw_name).rename(people / name)
            (people / "lfw").rmdir()
            with Gallery(Settings(home=home, progress=False)) as g:
                assert len(enroll_folder(g, people, models=["dlib"], augment=0).enrolled) == 3
                scan = scan_library(g, library, models=["dlib"])
                assert [p.faces for p in scan.scanned] == [1] * 11, scan.scanned
                update_clusters(g, method=METHOD)
            done.touch()
    return home


@pytest.fixture(scope="module")
def library_home(tmp_path_factory, lfw_dir, one_torch_thread_module) -> Path:
    return shared_library_gallery(tmp_path_factory, lfw_dir)


@pytest.fixture
def library_copy(library_home, tmp_path) -> Path:
    return Path(shutil.copytree(library_home, tmp_path / "gallery"))


def _open(home: Path) -> Gallery:
    return Gallery(Settings(home=home, progress=False))


def clusters_by_person(g: Gallery) -> dict[str, int]:
    """LFW person -> the id of the cluster that holds exactly their library photos (each must have one)."""
    out = {}
    for c in list_clusters(g).clusters:
        with g.session() as s:
            names = {Path(photo.path).name.rsplit("_", 1)[0] for _, photo in q.library_faces(s, c.face_ids).values()}
        assert len(names) == 1, f"cluster {c.id} mixes {names}"
        out[names.pop()] = c.id
    assert set(out) == set(LIBRARY), out
    return out


# -- app/library.py ---------------------------------------------------------------------------------------------
def test_library_view_shows_clusters_largest_first_with_face_thumbnails(library_home):
    with _open(library_home) as g:
        view = app_library.library_view(g)
        ids = clusters_by_person(g)
        assert [c.size for c in view.clusters] == [4, 4, 3]
        assert view.cluster_ids == [c.id for c in view.clusters] and view.pages == 1
        assert view.unassigned == 11 and view.unclustered == 0
        assert view.summary == "11 unassigned face(s): 11 in 3 cluster(s) (largest first), 0 on their own."
        for c in view.clusters:
            assert len(c.thumbnails) == c.size
            assert all(t.size == (app_library.THUMB_PX,) * 2 for t in c.thumbnails)
            # a real crop of a photo, not the grey tile of an unreadable one
            assert all(np.asarray(t, np.float32).std() > 20 for t in c.thumbnails)
        powell = next(c for c in view.clusters if c.id == ids["Colin_Powell"])
        assert powell.suggested == "Colin Powell"
        assert powell.suggestion == "suggested: Colin Powell (3 of 3 faces match)"
        assert all(c.suggested is None for c in view.clusters if c is not powell)
        assert view.clusters[0].title == f"Cluster {view.clusters[0].id}: 4 faces"
        # paging and the thumbnail cap: page 7 of 1-cluster pages is clamped to the last one
        paged = app_library.library_view(g, page=7, per_page=1, thumbs=2)
        assert (paged.page, paged.pages) == (2, 3) and [c.id for c in paged.clusters] == [view.cluster_ids[2]]
        assert paged.clusters[0].title == f"Cluster {paged.clusters[0].id}: 3 faces, showing 2"
        # thumbnails by face id: a face that is not there is a grey tile; the cache gives back the same image
        cache = app_library.ImageCache(max_items=2)
        with g.session() as s:
            some = sorted(q.library_faces_where(s, clustered=True), key=lambda r: r[0].id)[:3]
        first = thumbnails_of_faces(g, [some[0][0].id, 10**9], 64, cache)
        assert first[0].size == (64, 64) and np.asarray(first[1]).std() == 0
        assert thumbnails_of_faces(g, [some[0][0].id], 64, cache)[0] is first[0]
        thumbnails_of_faces(g, [some[1][0].id, some[2][0].id], 64, cache)
        assert len(cache) == 2  # bounded: the oldest went


def test_person_view_lists_matched_photos_and_none_for_someone_absent(library_home):
    with _open(library_home) as g:
        assert app_library.people_names(g) == ["Colin Powell", "Hugo Chavez"]  # suggested faces first
        view = app_library.person_view(g, "Colin Powell")
        assert view.model == "dlib" and view.total == 3 and not view.random_weights
        assert sorted(Path(p.path).name for p in view.photos) == [f"Colin_Powell_{n:04d}.jpg" for n in (3, 4, 5)]
        assert all(not p.assigned and p.status == "matched" and p.score >= view.threshold for p in view.photos)
        assert [p.score for p in view.photos] == sorted((p.score for p in view.photos), reverse=True)
        assert view.photos[0].caption == f"{Path(view.photos[0].path).name}: matched, score {view.photos[0].score:.3f}"
        assert view.summary.startswith("3 library photo(s) of Colin Powell (dlib, threshold ")
        assert view.summary.endswith(": 0 assigned, 3 matched.")
        nobody = app_library.person_view(g, "Hugo Chavez")
        assert nobody.total == 0 and not nobody.photos
        assert nobody.summary.startswith("No library photo of Hugo Chavez yet (dlib, threshold ")
        with pytest.raises(PersonNotFoundError):
            app_library.person_view(g, "Nobody Here")
        # the face is boxed on a copy downscaled to max_side, in the box's scaled place
        small = app_library.person_view(g, "Colin Powell", limit=1, max_side=125)
        assert small.total == 3 and len(small.photos) == 1
        pic = small.photos[0].picture
        assert max(pic.size) == 125  # LFW photos are 250 x 250
        with g.session() as s:
            face, _ = q.library_faces(s, [small.photos[0].face_id])[small.photos[0].face_id]
        x1, y1, x2, y2 = (round(v / 2) for v in (face.x1, face.y1, face.x2, face.y2))
        edge = [pic.getpixel((x, y1)) for x in range(x1 + 2, x2 - 2)]
        assert sum(px == BOX_COLOUR for px in edge) > 0.9 * len(edge)
    assert app_library.PersonView("Ann", None, None, [], 0).summary.startswith("The library is empty")


def test_name_a_cluster_then_its_person_has_exactly_those_photos(library_copy):
    with _open(library_copy) as g:
        ids = clusters_by_person(g)
        person, line = app_library.name_cluster(g, ids["Serena_Williams"], "  Serena Williams ")
        assert person == "Serena Williams"
        assert line == (f"Named cluster {ids['Serena_Williams']} Serena Williams (new person): 4 face(s) assigned, "
                        "4 enrolled. Their photos are on the Person page.")
        view = app_library.person_view(g, "Serena Williams")
        assert sorted(Path(p.path).name for p in view.photos) == [f"Serena_Williams_{n:04d}.jpg" for n in (1, 2, 3, 5)]
        assert all(p.assigned and p.caption.endswith(f"assigned, score {p.score:.3f}") for p in view.photos)
        assert all(isinstance(p.picture, Image.Image) for p in view.photos)
        assert view.summary.endswith(": 4 assigned, 0 matched.")
        after = app_library.library_view(g)
        assert ids["Serena_Williams"] not in after.cluster_ids and after.unassigned == 7
        assert app_library.people_names(g)[0] == "Serena Williams"  # people with library photos first
        # naming into an existing person: Colin Powell's suggested cluster
        person, line = app_library.name_cluster(g, ids["Colin_Powell"], "Colin Powell")
        assert person == "Colin Powell" and "(new person)" not in line and "3 enrolled" in line
        assert all(p.assigned for p in app_library.person_view(g, "Colin Powell").photos)
        for bad, message in (("", "person name is blank"), ("   ", "person name is blank")):
            with pytest.raises(InvalidInputError, match=message):
                app_library.name_cluster(g, ids["Junichiro_Koizumi"], bad)
        with pytest.raises(InvalidInputError, match=f"no cluster {ids['Serena_Williams']}"):
            app_library.name_cluster(g, ids["Serena_Williams"], "Again")


def test_merge_two_clusters_and_scan_errors(library_copy, tmp_path):
    with _open(library_copy) as g:
        ids = clusters_by_person(g)
        a, b = ids["Serena_Williams"], ids["Junichiro_Koizumi"]
        assert app_library.merge_clusters(g, a, b) == f"Merged cluster {b} into cluster {a}: 8 faces."
        view = app_library.library_view(g)
        assert view.sizes == {a: 8, ids["Colin_Powell"]: 3} and view.cluster_ids[0] == a
        assert view.choice(a) == f"{a} (8 faces)"
        with pytest.raises(InvalidInputError, match="cannot merge a cluster with itself"):
            app_library.merge_clusters(g, a, a)
        with pytest.raises(InvalidInputError, match=f"no cluster {b}"):
            app_library.merge_clusters(g, a, b)
        with pytest.raises(InvalidInputError, match="enter the path of a folder"):
            app_library.scan_folder(g, "  ")
        with pytest.raises(InvalidInputError, match="not a folder"):
            app_library.scan_folder(g, str(tmp_path / "missing"))


# -- the page (Streamlit's AppTest) -----------------------------------------------------------------------------
def ids_in_order(at) -> list[int]:
    """The cluster ids the Library page shows, top to bottom."""
    return [int(m.split()[1].rstrip(":")) for m in texts(at, "markdown") if m.startswith("**Cluster ")]


def test_library_page_scans_names_merges_and_the_person_page_shows_the_photos(app_env, library_copy, lfw_dir,
                                                                               tmp_path):
    with _open(library_copy) as g:
        ids = clusters_by_person(g)
    at = app_env(library_copy)
    at.sidebar.radio(key="page").set_value("Library").run()
    assert not at.exception
    assert "11 unassigned face(s): 11 in 3 cluster(s) (largest first), 0 on their own." in texts(at, "markdown")
    titles = [m for m in texts(at, "markdown") if m.startswith("**Cluster ")]
    assert titles[2] == f"**Cluster {ids['Colin_Powell']}: 3 faces**"
    assert "suggested: Colin Powell (3 of 3 faces match)" in texts(at, "caption")
    assert at.text_input(key=f"cluster_name_{ids['Colin_Powell']}").value == "Colin Powell"  # pre-filled
    assert at.text_input(key=f"cluster_name_{ids['Serena_Williams']}").value == ""

    # errors: one line each, the page keeps working
    at.button(key="library_scan").click().run()
    assert texts(at, "error") == ["enter the path of a folder of photos on this machine"]
    at.text_input(key="library_folder").set_value(str(tmp_path / "nowhere"))
    at.button(key="library_scan").click().run()
    assert texts(at, "error") == [f"{tmp_path / 'nowhere'}: not a folder"]
    at.button(key=f"cluster_go_{ids['Serena_Williams']}").click().run()
    assert texts(at, "error") == ["person name is blank"] and not at.exception

    # merge two clusters
    assert at.selectbox(key="merge_into").options == [f"{i} ({n} faces)" for i, n in
                                                      zip(ids_in_order(at), (4, 4, 3))]
    at.selectbox(key="merge_into").set_value(ids["Colin_Powell"])
    at.selectbox(key="merge_other").set_value(ids["Junichiro_Koizumi"])
    at.button(key="merge_go").click().run()
    assert texts(at, "success") == [f"Merged cluster {ids['Junichiro_Koizumi']} into cluster {ids['Colin_Powell']}: "
                                    "7 faces."]
    assert ids_in_order(at) == [ids["Colin_Powell"], ids["Serena_Williams"]]
    assert len(at.main.get("image")) == 2 and [len(i.proto.imgs) for i in at.main.get("image")] == [7, 4]

    # scan a new folder: two more photos of Serena Williams and a file that is not a photo
    more = lfw_folder(lfw_dir, tmp_path / "more", {"Serena_Williams": (6, 7)})
    (more / "notes.jpg").write_text("not a photo")
    at.text_input(key="library_folder").set_value(str(more))
    at.button(key="library_scan").click().run()
    assert not at.exception and not at.error
    success = texts(at, "success")
    assert len(success) == 1 and success[0].startswith(f"Scanned 2 photo(s) in {more}: 2 face(s) found; 0 unchanged, "
                                                       "0 removed. ")
    assert texts(at, "warning") == ["1 file(s) skipped: notes.jpg: not an image"]
    assert any(m.startswith("13 unassigned face(s): ") for m in texts(at, "markdown"))

    # name a cluster (the default method re-clustered after the scan: name whichever cluster is first)
    with _open(library_copy) as g:
        first = app_library.library_view(g).clusters[0]
    at.text_input(key=f"cluster_name_{first.id}").set_value("Jane Roe")
    at.button(key=f"cluster_go_{first.id}").click().run()
    assert not at.exception and not at.error
    assert texts(at, "success")[0].startswith(f"Named cluster {first.id} Jane Roe (new person): {first.size} face(s)")
    assert f"cluster_name_{first.id}" not in [w.key for w in at.text_input]

    # the Person page opens on the person just named, their photos boxed and marked assigned
    at.sidebar.radio(key="page").set_value("Person").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="person_name").value == "Jane Roe"
    with _open(library_copy) as g:
        expected = app_library.person_view(g, "Jane Roe")
    assert expected.total >= 1
    captions = [c for img in at.main.get("image") for c in img.captions]
    assert sorted(captions) == sorted(p.caption for p in expected.photos)
    assert all(c.split(": ", 1)[1].startswith("assigned") for c in captions)
    at.selectbox(key="person_name").set_value("Hugo Chavez").run()
    assert texts(at, "info")[0].startswith("No library photo of Hugo Chavez yet")
    at.sidebar.radio(key="page").set_value("People").run()
    rows = {r["name"]: r for r in at.main.table[0].value.to_dict("records")}
    assert rows["Jane Roe"]["library"] == first.size and rows["Hugo Chavez"]["library"] == 0


def test_library_page_without_allow_paths_has_no_scan_field(app_env, library_home, monkeypatch):
    at = app_env(library_home)
    monkeypatch.setenv("FACEGALLERY_APP_ACCESS", '{"auth": false, "paths": false}')
    at.sidebar.radio(key="page").set_value("Library").run()
    assert not at.exception
    assert "library_folder" not in [w.key for w in at.text_input]
    assert any("facegallery scan DIR" in c for c in texts(at, "caption"))


# -- a real browser ---------------------------------------------------------------------------------------------
@contextmanager
def serving(home: Path, log: Path):
    """`facegallery --gallery HOME app --port P --new-token` in a child process; yields the URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGALLERY_")}
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "--quiet", "--gallery", str(home), "app",
             "--port", str(port), "--new-token"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_healthy(proc, port, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def need_browser() -> None:
    _need_browser()


@pytest.mark.browser
def test_in_chromium_name_a_cluster_then_see_the_persons_photos(need_browser, library_copy, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with _open(library_copy) as g:
        cid = clusters_by_person(g)["Serena_Williams"]
    expected = sorted(f"Serena_Williams_{n:04d}.jpg" for n in LIBRARY["Serena_Williams"])
    log = tmp_path / "server.log"
    with serving(library_copy, log) as url:
        browser.get(url)
        wait = WebDriverWait(browser, PAGE_TIMEOUT_S)
        _enter_token(browser, wait, _token(log))

        def body(d) -> str:
            return d.find_element(By.TAG_NAME, "body").text

        def page(name: str) -> None:
            radio = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=stSidebar] label")
                                          if e.text.strip() == name])
            radio[0].click()

        page("Library")
        wait.until(lambda d: "11 unassigned face(s)" in body(d) and d.find_elements(
            By.CSS_SELECTOR, f".st-key-cluster_name_{cid} input"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) == 11)  # each face
        time.sleep(1)  # let the thumbnails paint before the screenshot
        assert browser.save_screenshot(str(tmp_path / "app_library.png"))
        field = browser.find_element(By.CSS_SELECTOR, f".st-key-cluster_name_{cid} input")
        field.send_keys("Serena Williams", Keys.ENTER)
        time.sleep(1)  # the value reaches the server before the click
        browser.find_element(By.CSS_SELECTOR, f".st-key-cluster_go_{cid} button").click()
        wait.until(lambda d: f"Named cluster {cid} Serena Williams (new person): 4 face(s)" in body(d))
        assert "7 unassigned face(s)" in body(browser)

        page("Person")
        wait.until(lambda d: "4 library photo(s) of Serena Williams" in body(d))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) == 4)
        text = body(browser)
        shown = sorted(line.split(":")[0] for line in text.splitlines() if ": assigned, score 0." in line)
        assert shown == expected, text
        time.sleep(1)  # let the images paint before the screenshot
        shot = tmp_path / "app_person.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
