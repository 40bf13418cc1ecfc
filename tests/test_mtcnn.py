"""indexer.mtcnn (MTCNN without torchvision) against facenet-pytorch's MTCNN: same faces on real photos."""
from __future__ import annotations

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
            "Detector(DetectorConfig()).detect(Image.new('RGB', (64, 64))); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'facenet_pytorch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
