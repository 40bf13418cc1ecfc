"""indexer.mtcnn (MTCNN without torchvision) against facenet-pytorch's MTCNN: same faces on real photos."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.mtcnn import Nets, batched_nms, detect_faces, nms

pytestmark = pytest.mark.numeric


def test_nms_equals_torchvision_on_random_boxes():
    from torchvision.ops import batched_nms as tv_batched_nms
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(1, 400))
        xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
        wh = rng.uniform(4, 60, (n, 2)).astype(np.float32)
        boxes = torch.as_tensor(np.concatenate([xy, xy + wh], axis=1))
        scores = torch.as_tensor(rng.uniform(0, 1, n).astype(np.float32))
        for thr in (0.3, 0.5, 0.7):
            assert nms(boxes, scores, thr).tolist() == tv_nms(boxes, scores, thr).tolist()
        groups = torch.as_tensor(rng.integers(0, 3, n))
        ours = batched_nms(boxes, scores, groups, 0.5)
        theirs = tv_batched_nms(boxes, scores, groups, 0.5)
        assert sorted(ours.tolist()) == sorted(theirs.tolist())
        assert torch.equal(scores[ours], scores[theirs])  # both in descending score order


def _photos(data_dir):
    lfw = sorted((data_dir / "lfw" / "lfw-deepfunneled").glob("B*/*.jpg"))[:24]
    full = sorted((data_dir / "five_celebrity" / "val").glob("*/*"))[:10]
    return lfw + full + [data_dir / "facenet_pytorch_test_images" / "multiface.jpg"]


def test_same_faces_as_facenet_pytorch(data_dir):
    from facenet_pytorch import MTCNN

    photos = _photos(data_dir)
    if len(photos) < 20 or not photos[-1].exists():
        pytest.skip("needs LFW, five_celebrity and facenet-pytorch's test images")
    ref = MTCNN(keep_all=True, post_process=False, select_largest=False)
    nets = Nets()
    faces = 0
    for path in photos:
        img = Image.open(path).convert("RGB")
        img.thumbnail((1000, 1000))
        with torch.inference_mode():
            boxes, probs, points = ref.detect([img], landmarks=True)
            (mine, mine_pts), = detect_faces(nets, torch.as_tensor(np.asarray(img).copy())[None], 20,
                                             (0.6, 0.7, 0.7), 0.709)
        if boxes[0] is None:
            assert len(mine) == 0, path
            continue
        ref_rows = np.concatenate([np.asarray(boxes[0], np.float64), np.asarray(probs[0], np.float64)[:, None]],
                                  axis=1)
        a, b = np.lexsort(ref_rows[:, :4].T[::-1]), np.lexsort(mine[:, :4].T[::-1])
        assert len(mine) == len(ref_rows), path
        np.testing.assert_allclose(mine[b], ref_rows[a], atol=1e-3, err_msg=str(path))
        np.testing.assert_allclose(mine_pts[b], np.asarray(points[0], np.float64)[a], atol=1e-3, err_msg=str(path))
        faces += len(mine)
    assert faces >= len(photos)  # every photo here holds at least one face


def test_the_detector_imports_no_torchvision():
    """Nor do identify, enroll and scan (torchvision is ~1.2 s of start-up; only augmented copies need it)."""
    import subprocess
    import sys

    code = ("import sys; from PIL import Image; from indexer.detect import Detector, DetectorConfig; "
            "import gallery.recognize.identify, gallery.enroll.enroll, gallery.library.scan; "
            "Detector(DetectorConfig(engine='torch')).detect(Image.new('RGB', (64, 64))); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'facenet_pytorch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_detection_and_dlib_embedding_import_no_torch_once_their_graphs_are_stored(data_dir, tmp_path):
    """The CPU default (engines "onnx"): after the first process has exported and stored the graphs, the next one
    detects, aligns and embeds a real photo (and imports the CLI, identify, enroll and scan) without torch,
    about a second of its start-up; and gets the same vectors as the first."""
    import json
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    pytest.importorskip("dlib")
    photo = data_dir / "lfw" / "lfw-deepfunneled" / "Colin_Powell" / "Colin_Powell_0001.jpg"
    if not photo.exists():
        pytest.skip("needs LFW")
    code = ("import json, sys; from PIL import Image; from indexer.detect import Detector; "
            "from indexer.embedders import create_embedder; "
            "import cli.main, gallery.recognize.identify, gallery.enroll.enroll, gallery.library.scan; "
            f"img = Image.open({str(photo)!r}).convert('RGB'); det = Detector(); faces = det.detect(img); "
            "emb = create_embedder('dlib'); vec = emb.embed_crops([emb.crop(img, f) for f in faces]); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'engines': [det.engine, emb.load().engine], "
            "'boxes': [f.box for f in faces], 'vectors': vec.tolist()}))")
    env = {k: v for k, v in os.environ.items() if k not in ("FACEGALLERY_DETECT_ENGINE", "FACEGALLERY_DLIB_ENGINE")}
    env["FACEGALLERY_CACHE"] = str(tmp_path)
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env=env).stdout) for _ in range(2)]
    assert runs[0]["torch"]  # the first process exported the graphs with torch
    assert runs[1]["torch"] is False and runs[1]["engines"] == ["onnx", "onnx"]
    assert len(runs[1]["boxes"]) >= 1 and runs[1]["boxes"] == runs[0]["boxes"]
    np.testing.assert_allclose(runs[1]["vectors"], runs[0]["vectors"], atol=1e-6)
    # the commands themselves: enroll --augment 0, identify and scan, in one process, still without torch
    cli = ("import sys; from cli.main import cli; g = sys.argv[1]; "
           "run = lambda *a: cli.main(['--gallery', g, '-q', *a], prog_name='facegallery', standalone_mode=False); "
           "run('enroll', sys.argv[2], '--model', 'dlib', '--augment', '0'); "
           "run('identify', sys.argv[3], '--model', 'dlib'); run('scan', sys.argv[4], '--model', 'dlib'); "
           "print('torch' in sys.modules)")
    folder = tmp_path / "people"
    (folder / "Colin_Powell").mkdir(parents=True)
    (folder / "Colin_Powell" / photo.name).write_bytes(photo.read_bytes())
    query = photo.with_name("Colin_Powell_0002.jpg")
    done = subprocess.run([sys.executable, "-c", cli, str(tmp_path / "g"), str(folder), str(query), str(folder)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False" and "Colin_Powell" in done.stdout


def test_area_resize_equals_torch_interpolate():
    from torch.nn.functional import interpolate

    from indexer.mtcnn_cpu import area_resize

    rng = np.random.default_rng(5)
    # crops and LFW-sized photos (the gathered band), a large photo (the sparse product), up- and down-sampling
    for shape, size in [((4, 3, 37, 41), (24, 24)), ((1, 3, 250, 250), (151, 151)), ((1, 3, 1200, 900), (721, 541)),
                        ((2, 3, 300, 20), (7, 48)), ((1, 3, 48, 48), (48, 48))]:
        x = (rng.random(shape) * 255).astype(np.float32)
        want = interpolate(torch.from_numpy(x), size=size, mode="area").numpy()
        got = area_resize(x, *size)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=str(shape))


def test_onnx_engine_finds_the_same_faces_as_the_torch_engine(data_dir, tmp_path, monkeypatch):
    """The numpy cascade with the nets in ONNX Runtime (the CPU default) against indexer.mtcnn's torch cascade."""
    pytest.importorskip("onnxruntime")
    from indexer import mtcnn_cpu
    from indexer.onnx_cache import CACHE_ENV

    photos = _photos(data_dir)
    if len(photos) < 20 or not photos[-1].exists():
        pytest.skip("needs LFW, five_celebrity and facenet-pytorch's test images")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    ort_nets, torch_nets = mtcnn_cpu.load_nets(threads=1), Nets()
    faces = 0
    for path in photos:
        img = Image.open(path).convert("RGB")
        img.thumbnail((1000, 1000))
        pixels = np.asarray(img).copy()[None]
        with torch.inference_mode():
            (want, want_pts), = detect_faces(torch_nets, torch.as_tensor(pixels), 20, (0.6, 0.7, 0.7), 0.709)
        (got, got_pts), = mtcnn_cpu.detect_faces(ort_nets, pixels, 20, (0.6, 0.7, 0.7), 0.709)
        assert len(got) == len(want), path
        a, b = np.lexsort(want[:, :4].T[::-1]), np.lexsort(got[:, :4].T[::-1])
        np.testing.assert_allclose(got[b], want[a], atol=1e-3, err_msg=str(path))
        np.testing.assert_allclose(got_pts[b], want_pts[a], atol=1e-3, err_msg=str(path))
        faces += len(got)
    assert faces >= len(photos)


def test_mtcnn_graphs_are_cached_and_a_damaged_one_is_exported_again(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from indexer import mtcnn_cpu, onnx_cache

    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path))
    img = np.zeros((1, 120, 120, 3), np.uint8)
    mtcnn_cpu.detect_faces(mtcnn_cpu.load_nets(threads=1), img, 20, (0.6, 0.7, 0.7), 0.709)
    graphs = sorted((tmp_path / "onnx").glob("mtcnn-*.onnx"))
    assert [g.name.split("-")[1] for g in graphs] == ["onet", "pnet", "rnet"]
    sha = mtcnn_cpu.weights_sha256()
    assert all(onnx_cache.cached(f"mtcnn-{n}", sha) is not None for n in mtcnn_cpu.NET_NAMES)
    pnet = onnx_cache.graph_path("mtcnn-pnet", sha)
    good = pnet.read_bytes()
    pnet.write_bytes(good[: len(good) // 2])  # truncated: refused by its sha256, exported again on the next load
    assert onnx_cache.cached("mtcnn-pnet", sha) is None
    mtcnn_cpu.load_nets(threads=1)
    assert pnet.read_bytes() == good and onnx_cache.cached("mtcnn-pnet", sha) == good


def test_detector_falls_back_to_the_torch_engine_when_onnx_runtime_fails(data_dir, monkeypatch, caplog):
    import logging

    from indexer import mtcnn_cpu
    from indexer.detect import Detector, DetectorConfig

    photo = data_dir / "lfw" / "lfw-deepfunneled" / "Colin_Powell" / "Colin_Powell_0001.jpg"
    if not photo.exists():
        pytest.skip("needs LFW")

    def broken(threads=None):
        raise RuntimeError("no graph")

    monkeypatch.setattr(mtcnn_cpu, "load_nets", broken)
    img = Image.open(photo).convert("RGB")
    detector = Detector(DetectorConfig(engine="onnx"))
    with caplog.at_level(logging.WARNING, logger="indexer.detect"):
        faces = detector.detect(img)
    assert detector.engine == "torch" and "MTCNN in ONNX Runtime unavailable (RuntimeError: no graph)" in caplog.text
    want = Detector(DetectorConfig(engine="torch")).detect(img)
    assert [f.box for f in faces] == [f.box for f in want] and len(faces) >= 1


def test_threads_loading_the_detector_and_dlib_at_once_export_each_graph_once(tmp_path, monkeypatch):
    """The TorchScript exporter cannot run twice at once: first loads in several threads (the app, the server)
    must all get the onnx engines, not a fallback."""
    import threading

    pytest.importorskip("onnxruntime")
    pytest.importorskip("dlib")
    from indexer import onnx_cache
    from indexer.detect import Detector, DetectorConfig
    from indexer.embedders import create_embedder

    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path))
    engines: dict[str, str] = {}

    def detector(key: str) -> None:
        d = Detector(DetectorConfig(engine="onnx"))
        d.detect(Image.new("RGB", (64, 64)))
        engines[key] = d.engine

    def embedder() -> None:
        engines["dlib"] = create_embedder("dlib", device="cpu", engine="onnx").load().engine

    threads = [threading.Thread(target=detector, args=("a",)), threading.Thread(target=detector, args=("b",)),
               threading.Thread(target=embedder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engines == {"a": "onnx", "b": "onnx", "dlib": "onnx"}
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 4


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_an_image_with_no_pyramid_level_has_no_face(engine):
    """min_face_size 47 on a 47 px side: 47 * (12 / 47) is just under 12 in floats, so MTCNN has no scale; the
    detector and both cascades answer "no face" instead of failing on an empty concatenation."""
    from indexer import mtcnn_cpu
    from indexer.detect import Detector, DetectorConfig

    assert mtcnn_cpu.pyramid_scales(47, 100, 47, 0.709) == []
    assert Detector(DetectorConfig(min_face_size=47, engine=engine)).detect(Image.new("RGB", (100, 47))) == []
    pixels = np.zeros((2, 47, 100, 3), np.uint8)
    if engine == "onnx":
        pytest.importorskip("onnxruntime")
        found = mtcnn_cpu.detect_faces(mtcnn_cpu.load_nets(threads=1), pixels, 47, (0.6, 0.7, 0.7), 0.709)
    else:
        found = detect_faces(Nets(), torch.as_tensor(pixels), 47, (0.6, 0.7, 0.7), 0.709)
    assert [(b.shape, p.shape) for b, p in found] == [((0, 5), (0, 5, 2))] * 2
