"""Safety (issue 7): no unsafe deserialisation, weights verified by sha256 before use, names and paths are only
ever data, and the web app listens on 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from gallery.config import Settings
from gallery.enroll.enroll import enroll_folder, enroll_images
from gallery.errors import InvalidInputError
from gallery.heads.model import TrainConfig
from gallery.heads.train import train_heads
from gallery.manage.maintenance import check, reindex
from gallery.manage.people import list_people
from gallery.recognize.identify import identify
from gallery.store import Gallery
from tests.fakes import FakeDetector, fake_factory, person_image
from tests.helpers import jpeg_bytes

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("gallery", "indexer", "db", "cli", "benchmarks", "scripts")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


# -- no unsafe deserialisation ------------------------------------------------------------------------------------
def _true_kwarg(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Every pickle-based load in ``source``: pickle-family imports, torch.load without weights_only=True,
    numpy loads with allow_pickle=True, pandas read_pickle, yaml.load without an explicit Loader."""
    found = []
    tree = ast.parse(source, filename)
    torch_names = {"torch"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            torch_names |= {a.asname or a.name for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            fn = node.func
            owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else None
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
            is_torch_load = (name == "load" and owner == "torch") or (owner is None and name in torch_names - {"torch"})
            if is_torch_load and not _true_kwarg(node, "weights_only"):
                found.append(f"{where}: torch.load without weights_only=True")
            if _true_kwarg(node, "allow_pickle"):
                found.append(f"{where}: allow_pickle=True")
            if name == "read_pickle":
                found.append(f"{where}: read_pickle")
            if owner == "yaml" and name == "load" and not any(k.arg == "Loader" for k in node.keywords):
                found.append(f"{where}: yaml.load without Loader")
    return found


def test_scanner_finds_what_it_looks_for():
    bad = ("import pickle\nfrom joblib import load as jl\nimport torch\nfrom torch import load as tl\n"
           "torch.load('x')\ntorch.load('x', weights_only=False)\ntl('y')\nimport numpy as np\n"
           "np.load('z', allow_pickle=True)\nimport yaml\nyaml.load(s)\n")
    assert len(unsafe_calls(bad, "bad.py")) == 7
    good = "import torch\ntorch.load('x', map_location='cpu', weights_only=True)\nimport json\njson.load(f)\n"
    assert unsafe_calls(good, "good.py") == []


def test_no_pickle_and_no_unsafe_torch_load_in_the_code():
    files = [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))] + sorted(REPO.glob("*.py"))
    assert len(files) > 30
    found = [f for p in files for f in unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert found == []
    loads = sum(p.read_text(encoding="utf-8").count("torch.load(") for p in files)
    assert loads >= 2  # the weights loader and the heads loader, both checked above


# -- weights verified before use ------------------------------------------------------------------------------------
@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGALLERY_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("FACEGALLERY_OFFLINE", "1")
    return tmp_path


MARKER: list[Path] = []


def _payload_ran():
    MARKER[0].write_text("the payload ran")


class _Evil:
    def __reduce__(self):
        return (_payload_ran, ())


def _one_photo_folder(lfw: Path, root: Path, n: int = 1) -> Path:
    (root / "Colin_Powell").mkdir(parents=True, exist_ok=True)
    name = f"Colin_Powell_{n:04d}.jpg"
    shutil.copyfile(lfw / "lfw-deepfunneled" / "Colin_Powell" / name, root / "Colin_Powell" / name)
    return root


def _rows(home: Path) -> int:
    with Gallery(Settings(home=home, progress=False)) as g, g.session() as s:
        from db import queries as q

        return sum(q.count_embeddings(s, m) for m in ("facenet", "dlib"))


def test_facenet_weights_checked_by_sha256_through_the_cli(offline, lfw_dir):
    from indexer.embedders import create_embedder

    tmp = offline
    runner = CliRunner()
    state = create_embedder("facenet", weights="random").load().state_dict()
    torch.save(state, tmp / "facenet-random.pt")
    res = runner.invoke(cli, ["models", "import", "--model", "facenet", str(tmp / "facenet-random.pt")])
    assert res.exit_code == 0, res.output
    installed = tmp / "weights" / "facenet-vggface2.pt"
    good_sha = (tmp / "weights" / "facenet-vggface2.pt.sha256").read_text().split()[0]

    home = tmp / "g"
    folder = _one_photo_folder(lfw_dir, tmp / "people")
    base = ["--gallery", str(home), "-q"]
    res = runner.invoke(cli, [*base, "enroll", str(folder), "--model", "facenet", "--augment", "0"])
    assert res.exit_code == 0, res.output
    assert _rows(home) == 1

    # one flipped byte: refused before any use, by enroll and identify alike, with one line
    data = bytearray(installed.read_bytes())
    data[len(data) // 2] ^= 0x01
    installed.write_bytes(bytes(data))
    bad_sha = hashlib.sha256(bytes(data)).hexdigest()
    _one_photo_folder(lfw_dir, folder, 2)
    expected = f"Error: sha256 mismatch for {installed}: expected {good_sha}, got {bad_sha}; re-import it\n"
    for args in (["enroll", str(folder), "--model", "facenet"], ["identify", str(folder / "Colin_Powell" /
                                                                           "Colin_Powell_0002.jpg")]):
        res = runner.invoke(cli, [*base, *args])
        assert res.exit_code == 1 and res.stderr == expected, (args, res.output)
    assert _rows(home) == 1

    # a file that would run code when unpickled, with a matching sidecar: refused, and the code never runs
    MARKER[:] = [tmp / "payload-ran"]
    evil = io.BytesIO()
    torch.save({"state_dict": state, "extra": _Evil()}, evil)
    installed.write_bytes(evil.getvalue())
    sha = hashlib.sha256(evil.getvalue()).hexdigest()
    (tmp / "weights" / "facenet-vggface2.pt.sha256").write_text(f"{sha}  facenet-vggface2.pt\n")
    for gallery in (home, tmp / "new"):  # the recorded sha256 refuses it; a new gallery refuses to unpickle it
        res = runner.invoke(cli, ["--gallery", str(gallery), "-q", "enroll", str(folder), "--model", "facenet"])
        assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.output
    assert res.stderr.startswith(f"Error: {installed} is not a weights-only PyTorch checkpoint: "), res.stderr
    assert _rows(tmp / "new") == 0
    (tmp / "evil.pt").write_bytes(evil.getvalue())
    res = runner.invoke(cli, ["models", "import", "--model", "facenet", str(tmp / "evil.pt")])
    assert res.exit_code == 1 and "is not a weights-only PyTorch checkpoint" in res.stderr, res.output
    assert not MARKER[0].exists() and _rows(home) == 1


def test_dlib_weights_checked_against_pinned_and_recorded_sha256(tmp_path, lfw_dir, monkeypatch):
    from indexer.embedders import dlib_model

    runner = CliRunner()
    home, folder = tmp_path / "g", _one_photo_folder(lfw_dir, tmp_path / "people")
    base = ["--gallery", str(home), "-q"]
    res = runner.invoke(cli, [*base, "enroll", str(folder), "--model", "dlib", "--augment", "0"])
    assert res.exit_code == 0, res.output
    real = dlib_model.models_dir()
    data = bytearray((real / dlib_model.MODEL_FILE).read_bytes())
    data[-1000] ^= 0x01
    bad_sha = hashlib.sha256(bytes(data)).hexdigest()
    tampered = tmp_path / "models" / dlib_model.MODEL_FILE
    tampered.parent.mkdir()
    tampered.write_bytes(bytes(data))
    (tampered.parent / dlib_model.SHAPE_FILE).symlink_to(real / dlib_model.SHAPE_FILE)
    _one_photo_folder(lfw_dir, folder, 2)
    query = folder / "Colin_Powell" / "Colin_Powell_0002.jpg"
    pinned = dlib_model.PACKAGE_SHA256[dlib_model.MODEL_FILE]

    # 1. the packaged file is checked against the sha256 of the face_recognition_models release
    with monkeypatch.context() as m:
        m.setattr(dlib_model, "models_dir", lambda: tampered.parent)
        for args in (["enroll", str(folder), "--model", "dlib"], ["identify", str(query)]):
            res = runner.invoke(cli, [*base, *args])
            assert res.exit_code == 1 and res.stderr == (
                f"Error: sha256 mismatch for {tampered}: expected {pinned}, got {bad_sha}; "
                f"reinstall face_recognition_models\n"), res.output
    # 2. an explicit weights file is checked against the sha256 the gallery recorded with its vectors
    for args in (["enroll", str(folder), "--model", "dlib"], ["identify", str(query)]):
        res = runner.invoke(cli, [*base, "--weights", f"dlib={tampered}", *args])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.stderr.startswith(f"Error: the gallery's dlib vectors were made with weights {pinned[:12]}, but "
                                     f"the weights loaded now are {bad_sha[:12]} (file {tampered});"), res.stderr
    assert _rows(home) == 1


# -- names and paths are data ----------------------------------------------------------------------------------------
HOSTILE = ["../../escaped", "a/b\\c", "x'; DROP TABLE people;--",
           'Robert"); DROP TABLE photos;--', "山田 太郎", "..", ".", "%s %(name)s {0} $HOME `id`"]
CONTROL = "tabbed\tand\nnew line"  # refused up front: it would break every one-line message that names it


def _tree(root: Path, skip: tuple[Path, ...]) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not any(p == s or s in p.parents for s in skip)}


def test_hostile_names_never_reach_sql_or_the_filesystem(tmp_path):
    home, annotated = tmp_path / "deep" / "er" / "g", tmp_path / "deep" / "er" / "annotated"
    before = _tree(tmp_path, ())
    absolute = str(tmp_path / "absolute-escape")  # absolute paths as a name and an upload's file name: any file
    hostile = [HOSTILE[0], absolute, *HOSTILE[1:]]  # made there would show in the tree check at the end
    uploads = [("../../../../upload-escape.jpg", None), (str(tmp_path / "cron.d" / "x.jpg"), None),
               ("a;b'c\".jpg", None)]
    with Gallery(Settings(home=home, progress=False), detector=FakeDetector(), embedder_factory=fake_factory()) as g:
        for n, name in enumerate(hostile):
            photos = [(file, jpeg_bytes(person_image(100 * n + i))) for i, (file, _) in enumerate(uploads)]
            rep = enroll_images(g, name, photos, models=["dlib"], augment=1)
            assert len(rep.enrolled) == 3 and not rep.skipped
        with pytest.raises(InvalidInputError, match="control characters"):
            enroll_images(g, CONTROL, photos, models=["dlib"], augment=1)
        folder = tmp_path / "folder"
        for n, name in enumerate(["O'Brien; DELETE FROM embeddings", "Zoë \"quoted\"", "x..y"]):
            (folder / name).mkdir(parents=True)
            person_image(5000 + 100 * n).save(folder / name / "1.jpg")
        assert len(enroll_folder(g, folder, models=["dlib"], augment=0).enrolled) == 3
        names = [p.name for p in list_people(g)]
        assert sorted(names) == sorted([n.strip() for n in hostile] + ["O'Brien; DELETE FROM embeddings",
                                                                       "Zoë \"quoted\"", "x..y"])
        train_heads(g, ["dlib"], TrainConfig(epochs=10, patience=3))
        reindex(g)
        query = ("../../../../query-escape.jpg", jpeg_bytes(person_image(101)))
        res = identify(g, [query], models=["dlib"], annotate_dir=annotated)
        assert res.images[0].faces[0].models["dlib"].identity == absolute
        assert Path(res.images[0].annotated).parent == annotated
        assert check(g).ok
    for name in ("../../escaped", "x'; DROP TABLE people;--", ".."):
        out = CliRunner().invoke(cli, ["--gallery", str(home), "forget", name, "--yes", "--json"])
        assert out.exit_code == 0 and json.loads(out.stdout)["name"] == name, out.output
    with Gallery(Settings(home=home, progress=False)) as g:
        assert len(list_people(g)) == len(hostile) + 3 - 3 and check(g).ok
    created = _tree(tmp_path, (home, annotated, folder)) - before
    assert created == {"deep", "deep/er"}, created  # nothing was written outside the gallery and the chosen folders
    inside = {p.name for p in home.rglob("*")}
    assert not any(n.startswith(("escaped", "upload-escape", "query-escape")) for n in inside)
    assert not Path(absolute).exists() and not (tmp_path / "cron.d").exists()


# -- the web app -------------------------------------------------------------------------------------------------------
def test_web_app_listens_on_localhost_by_default(tmp_path, monkeypatch):
    command = cli.commands.get("app")
    if command is None:
        pytest.skip("no `facegallery app` command in this build")
    host = next(p for p in command.params if p.name == "host")
    assert host.default == "127.0.0.1"
    pytest.importorskip("streamlit")
    from streamlit.web import cli as streamlit_cli

    seen = {}
    monkeypatch.setattr(streamlit_cli, "main", lambda args, prog_name: seen.setdefault("args", args))
    res = CliRunner().invoke(cli, ["--gallery", str(tmp_path / "g"), "app"])
    assert res.exit_code == 0, res.output
    args = seen["args"]
    assert args[args.index("--server.address") + 1] == "127.0.0.1"
    assert "http://127.0.0.1:" in res.stderr
