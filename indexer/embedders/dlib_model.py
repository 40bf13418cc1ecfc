"""dlib's ResNet face recognition model (128-D), with dlib's own 5-point alignment.

The model files come from the ``face_recognition_models`` package. Its ``__init__`` imports ``pkg_resources``
(gone from recent setuptools), so the files are located with ``importlib.util.find_spec`` and the package is
never imported.

Three engines compute the same descriptor from the same dlib chips (``engine=``, default ``$FACEGALLERY_DLIB_ENGINE``,
else ``auto``: ``onnx`` on the CPU when ONNX Runtime is installed, else ``torch``):

- ``torch``: the network read from dlib's file by :mod:`.dlib_net` and rebuilt by :mod:`.dlib_resnet`; batched, on
  the CPU or CUDA, and with ``fast=True`` on the CPU run by ONNX Runtime (:mod:`.onnx_cpu`), or in int8 / bf16
  (:mod:`.lowp`) where an LFW admission record allows it for these weights on this CPU (:mod:`.precision`). On
  500 LFW chips its fp32 descriptors equal dlib's to cosine 0.9999999 (tests/test_dlib_torch.py), at 16-23x dlib's
  speed on one core (benchmarks/dlib_engine.py).
- ``onnx``: that same fp32 network exported to ONNX once per weights file and stored (:mod:`indexer.onnx_cache`),
  then run by ONNX Runtime without importing torch (about a second of every process's start-up). With
  ``fast=True`` it takes the torch engine's fast paths above.
- ``dlib``: dlib-bin's ``compute_face_descriptor``, one chip at a time on one CPU core; the reference, and the
  fallback when the reader refuses the file (a warning says so).

Both engines record the same weights identity (the .dat file's sha256): vectors made by either are interchangeable,
so switching engines never calls for re-embedding.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from indexer import onnx_cache
from indexer.align import clamp_box_int
from indexer.devices import CPU, HostCPU, runs_on_cpu

from . import onnx_cpu, precision
from .base import Embedder, fast_engine, optimize_for_inference, register_embedder, resolve_device
from .dlib_net import DlibFormatError, parse_dlib_net
from .registry import DLIB_ENGINES
from .weights import WeightsError, WeightsInfo, WeightsNotFoundError, WeightsSpec, register_weights, sha256_file

if TYPE_CHECKING:  # torch is imported by the torch engine only
    import torch

    from indexer.detect import DetectedFace

logger = logging.getLogger(__name__)

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"
INSTALL_HINT = "pip install 'facegallery[dlib]'"
ENGINES = DLIB_ENGINES
ENGINE_ENV = "FACEGALLERY_DLIB_ENGINE"
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


class DlibEngineError(WeightsError, ValueError):
    """An unknown dlib engine name (a ValueError; also a WeightsError so the CLI reports it in one line)."""


def resolve_engine(engine: str | None = None, device: Any = "cpu") -> str:
    """``engine``, else ``$FACEGALLERY_DLIB_ENGINE``, else ``auto``, which is ``onnx`` when ``device`` is the CPU
    and ONNX Runtime is installed, else ``torch``; names outside :data:`ENGINES` are refused."""
    if engine is None:
        engine = os.environ.get(ENGINE_ENV, "").strip().lower() or "auto"
        where = f" (from {ENGINE_ENV})"
    else:
        where = ""
    if engine not in ENGINES:
        raise DlibEngineError(f"unknown dlib engine {engine!r}{where}; choose one of: {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnx" if runs_on_cpu(device) and onnx_cpu.available() else "torch"
    return engine


def _engine_device(device: Any, engine: str) -> Any:
    """dlib-bin and the stored ONNX graph run on the CPU; the torch engine where asked. The dlib embedder has always
    accepted any device, so a CUDA request without CUDA runs on the CPU with a warning rather than failing."""
    if engine in ("dlib", "onnx"):
        if str(device) not in ("auto", "cpu"):
            logger.debug("the %s engine runs on the CPU; ignoring device=%s", engine, device)
        return CPU
    try:
        return resolve_device(device)
    except ValueError as exc:
        logger.warning("%s; the dlib embedder runs on the CPU", exc)
        return resolve_device("cpu")


@dataclass(frozen=True)
class _DlibModels:
    """What a loaded embedder runs: the shape predictor, and either the network or dlib's recognizer."""

    shape_predictor: Any
    engine: str  # the engine running: "onnx", "torch" or "dlib" (after a fallback, not the one asked for)
    recognizer: Any = None  # dlib.face_recognition_model_v1 (engine "dlib")
    net: Any = None  # DlibResNet or an onnx_cpu.OrtModel (engines "torch" and "onnx")


class DlibEmbedder(Embedder):
    """dlib ``face_recognition_model_v1`` on 150x150 chips from ``dlib.get_face_chip``, 128-D output.

    ``engine`` is the one asked for; ``load().engine`` the one running (``dlib`` after a fallback).
    """

    name = "dlib"
    dim = 128
    input_size = 150
    padding = 0.25  # dlib's default chip padding, which the model was trained with
    # identify averages a face's descriptor with its mirrored chip's: measured on LFW open-set (issue 13,
    # benchmarks/open_set.py), +0.6 to +2.4 points of TPIR at FPIR 1 % over 10-1000 people. Unmeasured elsewhere.
    flip_tta = True

    def __init__(self, *, weights: WeightsInfo, shape_predictor: Path, engine: str = "auto",
                 device: Any = CPU, fast: bool = False) -> None:
        super().__init__(weights=weights, device=device, fast=fast)
        self.shape_predictor_path = shape_predictor
        self.engine = resolve_engine(engine, device)
        self.precision = "fp32"  # "int8" / "bf16" once load() runs an LFW-admitted reduced-precision path

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, engine={self.engine!r})"

    @classmethod
    def create(cls, *, device: Any = "auto", weights: str | os.PathLike | None = None,
               weights_dir: str | os.PathLike | None = None, fast: bool = False,
               engine: str | None = None) -> "DlibEmbedder":
        engine = resolve_engine(engine, device)
        _import_dlib()  # both engines: the chips come from dlib's shape predictor and get_face_chip
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
        return cls(weights=info, shape_predictor=shape, engine=engine, device=_engine_device(device, engine),
                   fast=fast)

    def _load_model(self) -> _DlibModels:
        dlib = _import_dlib()
        shape_predictor = dlib.shape_predictor(str(self.shape_predictor_path))
        try:
            if self.engine == "onnx" and not self.fast:
                try:
                    return _DlibModels(shape_predictor, "onnx", net=self._stored_graph())
                except (DlibFormatError, WeightsError):
                    raise
                except Exception as exc:  # noqa: BLE001 - export or runtime failure: torch computes the same
                    logger.warning("dlib network in ONNX Runtime unavailable (%s: %s); using torch",
                                   type(exc).__name__, " ".join(str(exc).split())[:200])
                    self.engine = "torch"
            if self.engine in ("torch", "onnx"):  # "onnx" with fast=True takes the torch engine's fast paths
                return _DlibModels(shape_predictor, self.engine, net=self._torch_net())
        except DlibFormatError as exc:
            logger.warning("%s; using dlib-bin instead of the %s engine", exc, self.engine)
        self.device = CPU
        try:
            return _DlibModels(shape_predictor, "dlib",
                               recognizer=dlib.face_recognition_model_v1(str(self.weights.path)))
        except RuntimeError as exc:
            raise WeightsError(f"{self.weights.path}: not a dlib model file ({' '.join(str(exc).split())})") from exc

    def _stored_graph(self) -> onnx_cpu.OrtModel:
        """The fp32 network as an ONNX Runtime session of its stored graph, exported (with torch) on first use and
        checked against the torch module it came from before it is stored."""
        def export() -> bytes:
            import torch

            from .dlib_resnet import INPUT_SIZE

            model = self._module()
            pixels = torch.randint(0, 256, (4, 3, INPUT_SIZE, INPUT_SIZE), generator=torch.Generator().manual_seed(0))
            example = pixels.float()
            data = onnx_cpu.export_onnx(model, example)
            with torch.inference_mode():
                want = model(example).numpy()
            got = onnx_cpu.session(data, 1)(example.numpy())
            error = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
            if got.shape != want.shape or not error <= 1e-4:
                raise RuntimeError(f"the exported graph changes the network's outputs (relative error {error:.1e})")
            return data

        graph = onnx_cache.load_or_export("dlib-resnet", self.weights.sha256, export)
        return onnx_cpu.session(graph, onnx_cache.ort_threads())

    def _module(self) -> Any:
        """The torch module from the very bytes whose sha256 was recorded (on the CPU)."""
        from .dlib_resnet import build_dlib_resnet

        data = Path(self.weights.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.weights.sha256:
            raise WeightsError(f"{self.weights.path} changed since its sha256 was checked; create the embedder again")
        return build_dlib_resnet(parse_dlib_net(data, str(self.weights.path)))

    def _torch_net(self) -> Any:
        """The network as a torch module on this embedder's device (or its fast form)."""
        import torch

        from .dlib_resnet import INPUT_SIZE

        if isinstance(self.device, HostCPU):  # engine "onnx" with fast=True, or after the stored graph failed
            self.device = resolve_device("cpu")
        model = self._module().to(self.device)
        if not self.fast:
            return model
        pixels = torch.randint(0, 256, (2, 3, INPUT_SIZE, INPUT_SIZE), generator=torch.Generator().manual_seed(0))
        example = pixels.float()
        reduced = self._reduced_net(model, example)
        if reduced is not None:
            return reduced
        if self.device.type == "cpu" and fast_engine() != "torch":
            runner = onnx_cpu.build(model, example) if onnx_cpu.available() else None
            if runner is not None:
                return runner
            logger.info("dlib --fast: ONNX Runtime not available for this model; using the torch rewrite")
        # The torch rewrite: nothing left to fold (the affines already are), so channels_last, output-checked.
        return optimize_for_inference(model, None, example.to(self.device))

    def _reduced_net(self, model: torch.nn.Module, example: torch.Tensor) -> Any:
        """The int8 or bf16 form of ``model`` that an LFW admission record allows for exactly these weights on this
        device (:mod:`.precision`), or None for fp32; the reason is logged once either way."""
        import torch

        from . import lowp

        cuda = torch.cuda.get_device_capability(self.device) if self.device.type == "cuda" else None
        decision = precision.choose(self.weights.sha256, self.device.type, cuda)
        runner, why = None, decision.reason
        if decision.precision == precision.INT8:
            if fast_engine() == "torch" or not onnx_cpu.available():
                why = f"{why}, but int8 runs in ONNX Runtime (not installed, or FACEGALLERY_FAST_ENGINE=torch); fp32"
            else:
                runner, failed = lowp.build_int8(model, example, decision.admission.calibration,
                                                 decision.admission.graph_sha256)
                why = f"{why}; {failed}; fp32" if runner is None else why
        elif decision.precision == precision.BF16:
            runner = lowp.Bf16Model(model)
        precision.log_once(f"dlib --fast: {why}")
        self.precision = decision.precision if runner is not None else "fp32"
        return runner

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

    def preprocess(self, crops: Sequence[Image.Image]) -> np.ndarray:
        return self._crops_to_uint8(crops)  # dlib takes uint8 RGB chips as they are: (N, 3, 150, 150)

    def forward(self, tensor: Any) -> np.ndarray:
        """(N, 3, 150, 150) RGB pixels (a numpy array or a torch tensor) -> raw descriptors."""
        models = self.load()
        if models.net is None:
            return self._dlib_forward(models.recognizer, _numpy(tensor))
        if isinstance(models.net, onnx_cpu.OrtModel):
            return models.net(_numpy(tensor).astype(np.float32))
        import torch

        x = torch.as_tensor(tensor).to(self.device).float()
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return models.net(x).cpu().numpy()

    def _dlib_forward(self, recognizer: Any, pixels: np.ndarray) -> np.ndarray:
        chips = [np.ascontiguousarray(p.transpose(1, 2, 0), dtype=np.uint8) for p in pixels]
        # Batch overload for already-aligned 150x150 chips. dlib's descriptors are NOT unit length (it compares
        # raw Euclidean distances against 0.6); embed_crops L2-normalises them like every other embedder.
        vectors = recognizer.compute_face_descriptor(chips)
        return np.array([np.asarray(v) for v in vectors], dtype=np.float32).reshape(len(chips), self.dim)


def _numpy(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (a torch tensor is moved to the CPU first)."""
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


@register_embedder("dlib")
def dlib_embedder(**kwargs) -> DlibEmbedder:
    return DlibEmbedder.create(**kwargs)
