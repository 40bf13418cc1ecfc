"""Start-up and detection speed paths (issue 12): what they change must not change an answer.

- identify's one-face assignment skips scipy's Hungarian solver (and its 0.2-0.4 s import): same person as the
  solver would pick; the identify module imports no scipy;
- MTCNN's nets run in channels_last (indexer/detect.py): the same faces as facenet-pytorch's shipped NCHW layout.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from gallery.recognize.identify import _assign
from indexer.detect import Detector, DetectorConfig
from indexer.images import load_image


def _hungarian(scores: list[dict[str, float]], threshold: float) -> dict[int, str]:
    """The general path of _assign, written out: the oracle for the one-face shortcut."""
    people = sorted({n for sc in scores for n, v in sc.items() if v >= threshold})
    if not people:
        return {}
    w = np.array([[sc.get(n, -1.0) if sc.get(n, -1.0) >= threshold else 0.0 for n in people] for sc in scores])
    rows, cols = linear_sum_assignment(w, maximize=True)
    return {int(r): people[c] for r, c in zip(rows, cols) if w[r, c] > 0}


def test_one_face_assignment_equals_the_hungarian_answer():
    rng = np.random.default_rng(0)
    names = [f"p{i}" for i in range(8)]
    for _ in range(300):
        chosen = rng.choice(names, size=int(rng.integers(1, 7)), replace=False)
        scores = [{str(n): float(s) for n, s in zip(chosen, rng.uniform(-0.2, 1.0, len(chosen)))}]
        threshold = float(rng.uniform(-0.1, 0.95))
        assert _assign(scores, threshold) == _hungarian(scores, threshold)
    assert _assign([{"a": 0.95, "b": 0.97}], 0.9) == {0: "b"}
    assert _assign([{"a": 0.5}], 0.9) == {}


def test_several_faces_still_name_nobody_twice():
    scores = [{"a": 0.97, "b": 0.95}, {"a": 0.96}]
    assert _assign(scores, 0.9) == {0: "b", 1: "a"} == _hungarian(scores, 0.9)


def test_identify_module_imports_no_scipy():
    code = "import sys, gallery.recognize.identify; print(sorted(m for m in sys.modules if m.startswith('scipy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.data
def test_channels_last_mtcnn_finds_the_same_faces(five_celebrity, lfw_dir):
    photos = sorted((five_celebrity / "val").rglob("*.jpg"))[:8] + sorted(lfw_dir.rglob("*.jpg"))[:4]
    images = [load_image(p) for p in photos]
    fast = Detector(DetectorConfig(engine="torch"))
    stock = Detector(DetectorConfig(engine="torch"))
    for net in (stock._model().pnet, stock._model().rnet, stock._model().onet):
        net.to(memory_format=torch.contiguous_format)
    assert fast._model().pnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    found = 0
    for img in images:
        a, b = fast.detect(img), stock.detect(img)
        assert len(a) == len(b)
        for f, g in zip(a, b):
            assert np.allclose(f.box, g.box, atol=0.05) and abs(f.prob - g.prob) < 1e-4
            found += 1
    assert found >= len(images)
