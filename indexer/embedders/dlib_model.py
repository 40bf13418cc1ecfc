"""dlib's ResNet face recognition model (128-D), with dlib's own 5-point alignment.

The model files come from the ``face_recognition_models`` package. Its ``__init__`` imports ``pkg_resources``
(gone from recent setuptools), so the files are located with ``importlib.util.find_spec`` and the package is
never imported. dlib runs on the CPU here: the ``device`` argument is ignored.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from indexer.align import clamp_box_int

from .base import Embedder, register_embedder
from .weights import WeightsError, WeightsInfo, WeightsNotFoundError, WeightsSpec, register_weights, sha256_file

if TYPE_CHECKING:
    from indexer.detect import DetectedFace

logger = logging.getLogger(__name__)

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"
INSTALL_HINT = "pip install 'facegallery[dlib]'"
# sha256 of the files face_recognition_models 0.3.0 (its only release) ships; checked before every use.
PACKAGE_SHA256 = {
    MODEL_FILE: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    SHAPE_FILE: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}


def models_dir() -> Path | None:
    """``face_recognition_models/models`` without importing the package, or None when not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _package_file() -> Path | None:
    folder = models_dir()
    return folder / MODEL_FILE if folder is not None else None


SPEC = register_weights(WeightsSpec(model="dlib", name="dlib-resnet-v1", filename=MODEL_FILE,
                                    package_file=_package_file))


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise WeightsNotFoundError(f"the dlib embedder needs dlib and face_recognition_models: {INSTALL_HINT}") from exc
    return dlib


def _package_path(filename: str) -> Path:
    folder = models_dir()
    if folder is None or not (folder / filename).is_file():
        raise WeightsNotFoundError(f"dlib model file {filename} not found (face_recognition_models package "
                                   f"missing or incomplete): {INSTALL_HINT}")
    return folder / filename


def _verified(path: Path) -> str:
    """sha256 of a packaged model file, which must be the one face_recognition_models ships."""
    actual, expected = sha256_file(path), PACKAGE_SHA256[path.name]
    if actual != expected:
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
                           f"reinstall face_recognition_models")
    return actual


@dataclass(frozen=True)
class _DlibModels:
    shape_predictor: Any
    recognizer: Any


class DlibEmbedder(Embedder):
    """dlib ``face_recognition_model_v1`` on 150x150 chips from ``dlib.get_face_chip``, 128-D output."""

    name = "dlib"
    dim = 128
    input_size = 150
    padding = 0.25  # dlib's default chip padding, which the model was trained with

    def __init__(self, *, weights: WeightsInfo, shape_predictor: Path, fast: bool = False) -> None:
        super().__init__(weights=weights, device=torch.device("cpu"), fast=fast)
        self.shape_predictor_path = shape_predictor

    @classmethod
    def create(cls, *, device: str | torch.device = "auto", weights: str | os.PathLike | None = None,
               weights_dir: str | os.PathLike | None = None, fast: bool = False) -> "DlibEmbedder":
        _import_dlib()
        if str(device) not in ("auto", "cpu"):
            logger.debug("dlib runs on the CPU here; ignoring device=%s", device)
        if weights_dir is not None:
            logger.debug("dlib weights come from face_recognition_models; ignoring weights_dir=%s", weights_dir)
        if weights == "random":
            raise WeightsError("the dlib embedder has no random initialisation; use its packaged weights")
        if weights is None:
            path, source = _package_path(MODEL_FILE), "face_recognition_models package"
            sha = _verified(path)
        else:
            path = Path(weights).expanduser().resolve()
            source = f"file {path}"
            if not path.is_file():
                raise WeightsNotFoundError(f"dlib weights file {path} not found")
            sha = sha256_file(path)
        info = WeightsInfo(SPEC.name, source, str(path), sha)
        shape = _package_path(SHAPE_FILE)
        _verified(shape)
        return cls(weights=info, shape_predictor=shape, fast=fast)

    def _load_model(self) -> _DlibModels:
        dlib = _import_dlib()
        try:
            return _DlibModels(dlib.shape_predictor(str(self.shape_predictor_path)),
                               dlib.face_recognition_model_v1(str(self.weights.path)))
        except RuntimeError as exc:
            raise WeightsError(f"{self.weights.path}: not a dlib model file ({' '.join(str(exc).split())})") from exc

    def crop(self, img: Image.Image, face: "DetectedFace") -> Image.Image:
        # The 5-point shape predictor runs inside the detection box (the whole image for fallback faces,
        # whose box is the image), then get_face_chip rotates and scales the face the way the model expects.
        dlib = _import_dlib()
        models = self.load()
        rgb = np.ascontiguousarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
        x1, y1, x2, y2 = clamp_box_int(face.box, rgb.shape[1], rgb.shape[0])
        shape = models.shape_predictor(rgb, dlib.rectangle(x1, y1, x2, y2))
        chip = dlib.get_face_chip(rgb, shape, size=self.input_size, padding=self.padding)
        return Image.fromarray(chip)

    def preprocess(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        return self._crops_to_uint8(crops)  # dlib takes uint8 RGB chips as they are

    def forward(self, tensor: torch.Tensor) -> np.ndarray:
        models = self.load()
        chips = [np.ascontiguousarray(t.permute(1, 2, 0).numpy(), dtype=np.uint8) for t in tensor.cpu()]
        # Batch overload for already-aligned 150x150 chips. dlib's descriptors are NOT unit length (it compares
        # raw Euclidean distances against 0.6); embed_crops L2-normalises them like every other embedder.
        vectors = models.recognizer.compute_face_descriptor(chips)
        return np.array([np.asarray(v) for v in vectors], dtype=np.float32).reshape(len(chips), self.dim)


@register_embedder("dlib")
def dlib_embedder(**kwargs) -> DlibEmbedder:
    return DlibEmbedder.create(**kwargs)
