"""Face detection: MTCNN (facenet-pytorch's weights and cascade), batched.

Two engines run the same cascade on the same weights (``DetectorConfig.engine``, else ``$FACEGALLERY_DETECT_ENGINE``,
else ``auto``): ``onnx``, the numpy cascade with the nets in ONNX Runtime (:mod:`indexer.mtcnn_cpu`; no torch import
once its graphs are cached), and ``torch`` (:mod:`indexer.mtcnn`, on the CPU or CUDA). ``auto`` is ``onnx`` on the
CPU when ONNX Runtime is installed, else ``torch``; the two agree within 2e-4 px (tests/test_mtcnn.py).

Photos are detected once; everything downstream (alignment, augmentation, embedding) works on the boxes and five
landmarks returned here, always in the coordinates of the image the caller passed in. Large photos are shrunk to
``max_side`` for detection (MTCNN's cost grows with the pixel count while faces in a 4000 px photo are far above
its 20 px minimum) and the results are mapped back.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from indexer.devices import resolve_device, runs_on_cpu
from indexer.images import downscale
from indexer.mtcnn_cpu import pyramid_scales

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class DetectedFace:
    """One face: box (x1, y1, x2, y2) and 5 landmarks (eyes, nose, mouth corners) in original image pixels."""

    box: Box
    prob: float
    landmarks: tuple[Point, ...] | None
    fallback: bool = False

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [float(v) for v in self.box],
            "prob": float(self.prob),
            "landmarks": None if self.landmarks is None else [[float(x), float(y)] for x, y in self.landmarks],
            "fallback": self.fallback,
        }


ENGINES = ("auto", "onnx", "torch")
ENGINE_ENV = "FACEGALLERY_DETECT_ENGINE"


def resolve_engine(engine: str | None, device: str) -> str:
    """The detector engine that runs: ``onnx`` or ``torch`` (see the module docstring)."""
    if engine is None:
        engine = os.environ.get(ENGINE_ENV, "").strip().lower() or "auto"
        if engine not in ENGINES:
            log.warning("%s=%s is not one of %s; using auto", ENGINE_ENV, engine, ", ".join(ENGINES))
            engine = "auto"
    if engine == "auto":
        from indexer.mtcnn_cpu import ort_available

        return "onnx" if runs_on_cpu(device) and ort_available() else "torch"
    return engine


@dataclass(frozen=True)
class DetectorConfig:
    """MTCNN settings; ``min_prob`` drops weak faces, ``max_side`` bounds the size of the image MTCNN sees."""

    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    min_prob: float = 0.90
    max_side: int = 1600
    device: str = "cpu"
    batch_size: int = 32  # images per MTCNN call in detect_batch; bounds memory, not results
    engine: str | None = None  # "auto", "onnx" or "torch"; None: $FACEGALLERY_DETECT_ENGINE, else "auto"

    def __post_init__(self) -> None:
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"unknown detector engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.min_face_size < 1 or self.max_side < 1 or self.batch_size < 1:
            raise ValueError("min_face_size, max_side and batch_size must be positive")
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {self.factor}")
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {self.thresholds}")


class Detector:
    """MTCNN face detector; the network is built on first use (thread-safe) and reused."""

    def __init__(self, config: DetectorConfig = DetectorConfig()) -> None:
        self.config = config
        self.engine = resolve_engine(config.engine, config.device)
        self._mtcnn = None
        self._lock = threading.Lock()

    def _model(self):
        if self._mtcnn is None:
            with self._lock:
                if self._mtcnn is None:
                    self._mtcnn = self._build()
        return self._mtcnn

    def _build(self):
        if self.engine == "onnx":
            from indexer.mtcnn_cpu import load_nets

            try:
                return load_nets()
            except Exception as exc:  # noqa: BLE001 - no graph (export or runtime failure): the torch engine
                log.warning("MTCNN in ONNX Runtime unavailable (%s: %s); using torch", type(exc).__name__,
                            " ".join(str(exc).split())[:200])
                self.engine = "torch"
        import torch

        from indexer.mtcnn import Nets

        cfg = self.config
        device = resolve_device(cfg.device)
        log.info("building MTCNN on %s (min_face_size=%d, thresholds=%s)", device, cfg.min_face_size, cfg.thresholds)
        nets = Nets().to(device)
        # channels_last weights make every feature map channels-last: on the CPU, torch's max-pool over MTCNN's
        # small NCHW maps is 7-30x slower than over channels-last ones. Same boxes (to 1e-4 px), detection 1.7x
        # faster (benchmarks/detection.py).
        for net in (nets.pnet, nets.rnet, nets.onet):
            net.to(memory_format=torch.channels_last)
        return nets

    def detect(self, img: Image.Image) -> list[DetectedFace]:
        """Faces in ``img``, largest first; ``[]`` when there are none."""
        return self.detect_batch([img])[0]

    def detect_batch(self, imgs: Sequence[Image.Image]) -> list[list[DetectedFace]]:
        """``detect`` for many images; images of equal (detection) size go through MTCNN together."""
        prepared = [downscale(_rgb(img), self.config.max_side)[0] for img in imgs]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, small in enumerate(prepared):
            # else no face fits: MTCNN's pyramid is empty (the cascades' own test, float arithmetic included)
            if pyramid_scales(small.height, small.width, self.config.min_face_size, self.config.factor):
                groups[small.size].append(index)
        results: list[list[DetectedFace]] = [[] for _ in imgs]
        step = self.config.batch_size
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                boxes, probs, points = self._run([prepared[i] for i in chunk])
                for j, i in enumerate(chunk):
                    results[i] = self._faces(boxes[j], probs[j], points[j], prepared[i].size, imgs[i].size)
        return results

    def _run(self, imgs: list[Image.Image]) -> tuple[list, list, list]:
        """One MTCNN call on equal-size RGB images -> per-image (boxes, probs, points), ``None`` for no face."""
        nets = self._model()
        cfg = self.config
        pixels = np.stack([np.asarray(img, dtype=np.uint8) for img in imgs])
        if self.engine == "onnx":
            from indexer.mtcnn_cpu import detect_faces as detect_cpu

            found = detect_cpu(nets, pixels, cfg.min_face_size, cfg.thresholds, cfg.factor)
        else:
            import torch

            from indexer.mtcnn import detect_faces

            batch = torch.as_tensor(pixels, device=next(nets.parameters()).device)
            with torch.inference_mode():
                found = detect_faces(nets, batch, cfg.min_face_size, cfg.thresholds, cfg.factor)
        boxes, probs, points = [], [], []
        for b, p in found:
            boxes.append(b[:, :4] if len(b) else None)
            probs.append(b[:, 4] if len(b) else None)
            points.append(p if len(b) else None)
        return boxes, probs, points

    def _faces(self, boxes, probs, points, seen: tuple[int, int], size: tuple[int, int]) -> list[DetectedFace]:
        """MTCNN output on an image of size ``seen`` -> faces in the original image of size ``size``."""
        if boxes is None or len(boxes) == 0:
            return []
        width, height = size
        # Per-axis ratios: downscale() rounds the shorter side, so its true ratio differs slightly from `scale`.
        ratio = np.array([width / seen[0], height / seen[1]])
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.tile(ratio, 2)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2) * ratio
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        points[..., 0] = points[..., 0].clip(0, width)
        points[..., 1] = points[..., 1].clip(0, height)
        faces = [
            DetectedFace(
                box=tuple(float(v) for v in box),
                prob=float(prob),
                landmarks=tuple((float(x), float(y)) for x, y in pts),
            )
            for box, prob, pts in zip(boxes, probs, points)
            if prob >= self.config.min_prob and box[2] > box[0] and box[3] > box[1]
        ]
        return sorted(faces, key=lambda f: (-f.area, -f.prob))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (0 when they do not overlap or are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def whole_image_face(img: Image.Image, margin_frac: float = 0.0) -> DetectedFace:
    """The explicit no-detection fallback for tight crops: the whole image (inset by ``margin_frac`` per side)."""
    if not 0.0 <= margin_frac < 0.5:
        raise ValueError(f"margin_frac must be in [0, 0.5), got {margin_frac}")
    width, height = img.size
    dx, dy = width * margin_frac, height * margin_frac
    return DetectedFace(box=(dx, dy, width - dx, height - dy), prob=0.0, landmarks=None, fallback=True)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")
