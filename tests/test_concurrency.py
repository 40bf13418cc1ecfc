"""Concurrency: several writers and readers on one gallery at once (issue 7).

Writers (enroll, forget, reindex, train-heads) serialise on the gallery's file lock and say that they wait;
readers (identify, check) take no lock and see committed state only (SQLite WAL). The tests run real processes:
three writers started at the same instant on a brand-new gallery (two different folders, one folder twice) while
identify and check run in a loop, with the fast fakes (many photos, many commits); two real ``facegallery enroll``
commands (MTCNN + dlib) at once with identify during them; and a writer that cannot get the lock within
``--lock-timeout`` / ``FACEGALLERY_LOCK_TIMEOUT`` fails with one clear "gallery is busy" line while identify still
answers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from gallery.config import Settings
from gallery.manage.maintenance import check
from gallery.manage.people import list_people
from gallery.store import Gallery
from tests.fakes import person_image
from tests.helpers import ForkServer, fake_opener, lfw_folder, make_people

REPO = Path(__file__).resolve().parents[1]
FACEGALLERY = Path(sys.executable).with_name("facegallery")

def test_three_writers_and_readers_on_a_new_gallery(tmp_path):
    folder_a = make_people(tmp_path / "a", range(0, 4), 6)
    folder_b = make_people(tmp_path / "b", range(4, 8), 6)
    query = tmp_path / "query.jpg"
    person_image(50).save(query, quality=95)  # an unseen photo of person_0
    home = tmp_path / "g"
    g_args = ["--gallery", home, "-q", "--lock-timeout", "120"]
    server = ForkServer(chunk=4, fakes=True)  # 6 commits per folder
    try:
        outs = [tmp_path / f"writer{i}.txt" for i in range(3)]
        pids = [server.start([*g_args, "enroll", folder, "--model", "dlib", "--model", "facenet", "--augment", "2",
                              "--json"], out) for folder, out in zip((folder_a, folder_b, folder_a), outs)]
        statuses, reads, answers = {}, 0, set()
        while len(statuses) < len(pids) or reads < 3:  # readers keep asking while any writer works
            for pid in pids:
                if pid not in statuses and (st := server.wait(pid, 0)) is not None:
                    statuses[pid] = st
            reads += 1
            for argv in (["identify", query, "--model", "dlib", "--json"], ["check", "--json"]):
                killed, code = server.run([*g_args, *argv], tmp_path / "reader.txt")
                err = (tmp_path / "reader.txt.err").read_text()
                assert code == 0 and "Traceback" not in err, f"{argv[0]} during enroll: {err}"
                doc = json.loads((tmp_path / "reader.txt").read_text())
                if argv[0] == "check":
                    assert doc["ok"], doc
                else:
                    answers.update(f["models"]["dlib"]["identity"] for f in doc["images"][0]["faces"])
    finally:
        server.close()
    assert all(os.waitstatus_to_exitcode(st) == 0 for st in statuses.values())
    assert reads >= 3 and answers <= {None, "person_0"}
    results = [json.loads(out.read_text()) for out in outs]
    summary = [(len(r["enrolled"]), r["unchanged"], r["embeddings_added"]) for r in results]
    # each folder was enrolled exactly once: whichever writer of folder a came second found everything unchanged
    assert sorted(summary[::2], key=lambda r: -r[0]) == [(24, 0, {"dlib": 72, "facenet": 72}),
                                                          (0, 24, {"dlib": 0, "facenet": 0})]
    assert summary[1] == (24, 0, {"dlib": 72, "facenet": 72})
    waited = ["is busy" in Path(f"{out}.err").read_text() for out in outs]
    assert sum(waited) >= 1, "no writer said it was waiting for the lock"
    with Gallery(Settings(home=home, progress=False)) as g:
        people = list_people(g)
        assert [(p.name, p.photos, p.embeddings) for p in people] == [
            (f"person_{i}", 6, {"dlib": 18, "facenet": 18}) for i in range(8)]
        assert check(g).ok


def test_real_enrolls_at_once_and_identify_during(tmp_path, lfw_dir):
    folder_a = lfw_folder(lfw_dir, tmp_path / "a", {"Colin_Powell": range(1, 3)})
    folder_b = lfw_folder(lfw_dir, tmp_path / "b", {"Serena_Williams": range(1, 3)})
    home = tmp_path / "g"
    query = lfw_dir / "lfw-deepfunneled" / "Colin_Powell" / "Colin_Powell_0005.jpg"
    runner = CliRunner()
    enroll = ["enroll", "--model", "dlib", "--augment", "0", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see SINGLE_THREAD in test_crash_consistency.py
    procs = [subprocess.Popen([str(FACEGALLERY), "--gallery", str(home), "-q", enroll[0], str(f), *enroll[1:]],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in (folder_a, folder_b)]
    while not (home / "gallery.sqlite").exists():  # identify as soon as the gallery exists, mid-enroll
        time.sleep(0.1)
    during = any(p.poll() is None for p in procs)
    ident = runner.invoke(cli, ["--gallery", str(home), "-q", "identify", str(query), "--model", "dlib", "--json"])
    assert ident.exit_code == 0 and "Traceback" not in ident.output, ident.output
    faces = json.loads(ident.stdout)["images"][0]["faces"]
    assert len(faces) == 1 and faces[0]["models"]["dlib"]["identity"] in (None, "Colin_Powell")
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "Traceback" not in err, err
        reports.append(json.loads(out))
    assert during, "identify did not start while an enroll was running"
    assert [len(r["enrolled"]) for r in reports] == [2, 2] and not any(r["skipped"] for r in reports)
    res = runner.invoke(cli, ["--gallery", str(home), "people", "--json"])
    assert [(p["name"], p["photos"], p["embeddings"]) for p in json.loads(res.stdout)["people"]] == [
        (n, 2, {"dlib": 2}) for n in ("Colin_Powell", "Serena_Williams")]
    res = runner.invoke(cli, ["--gallery", str(home), "check"])
    assert res.exit_code == 0 and res.stdout.strip().endswith("OK"), res.output
    ident = runner.invoke(cli, ["--gallery", str(home), "-q", "identify", str(query), "--model", "dlib", "--json"])
    assert json.loads(ident.stdout)["images"][0]["faces"][0]["models"]["dlib"]["identity"] == "Colin_Powell"


LOCK_HOLDER = r"""
import sys
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_busy_gallery_is_one_clear_line_and_readers_still_answer(tmp_path, monkeypatch):
    folder = make_people(tmp_path / "people", range(0, 3), 2)
    home = tmp_path / "g"
    runner = CliRunner()
    monkeypatch.setattr("cli.commands_core.open_gallery", fake_opener())
    assert runner.invoke(cli, ["--gallery", str(home), "-q", "enroll", str(folder), "--model", "dlib",
                               "--augment", "0"]).exit_code == 0
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(home / "gallery.lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = f"Error: gallery is busy: another facegallery process is writing to {home} (waited 0.5 s for " \
               f"{home / 'gallery.lock'}; --lock-timeout to wait longer)\n"
        started = time.monotonic()
        res = runner.invoke(cli, ["--gallery", str(home), "-q", "--lock-timeout", "0.5", "enroll", str(folder),
                                  "--model", "dlib"])
        assert res.exit_code == 1 and res.stderr.endswith(busy), res.output
        assert "Traceback" not in res.output and time.monotonic() - started < 30
        monkeypatch.setenv("FACEGALLERY_LOCK_TIMEOUT", "0.5")
        for args in (["forget", "person_1", "--yes"], ["reindex"]):
            res = runner.invoke(cli, ["--gallery", str(home), "-q", *args])
            assert res.exit_code == 1 and res.stderr.endswith(busy), (args, res.output)
        # readers take no lock
        person_image(101).save(tmp_path / "q.jpg")
        res = runner.invoke(cli, ["--gallery", str(home), "-q", "identify", str(tmp_path / "q.jpg"), "--model",
                                  "dlib", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["images"][0]["faces"][0]["models"]["dlib"]["identity"] == "person_1"
        assert runner.invoke(cli, ["--gallery", str(home), "check"]).exit_code == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the lock is free again: the same command now works, and nothing was changed by the refused ones
    res = runner.invoke(cli, ["--gallery", str(home), "-q", "forget", "person_1", "--yes"])
    assert res.exit_code == 0, res.output
    with Gallery(Settings(home=home, progress=False)) as g:
        assert [p.name for p in list_people(g)] == ["person_0", "person_2"]
