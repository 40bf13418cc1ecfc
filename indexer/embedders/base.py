"""Embedder interface, registry and the shared torch plumbing.

An :class:`Embedder` owns its whole preprocessing: ``crop`` (aligned square crop at ``input_size``),
``preprocess`` (crops -> tensor) and ``forward`` (raw model output). ``embed_crops`` chains the last two in
batches and L2-normalises, so every caller (enrol, identify, heads, benchmark) gets identical vectors.

``fast=True`` (opt-in, the CLI's ``--fast``) trades start-up time for throughput, checked against the plain
model's outputs when the model is built:

- on the CPU, the model is exported to ONNX and run by ONNX Runtime (:mod:`.onnx_cpu`, 1.4-1.7x, float32, outputs
  equal to rounding), when ``onnx`` and ``onnxruntime`` are installed and ``FACEGALLERY_FAST_ENGINE`` is not
  ``torch``;
- otherwise (or on a GPU) a torch rewrite: batch norms folded into the convolutions before them, model-specific
  constants (FaceNet's residual scales) folded into conv weights, channels_last memory format. That is float32
  arithmetic reordered, not reduced precision (~1e-6 relative error). On CUDA it adds bfloat16 autocast, which
  does change the numbers (cosine ~0.999+).

This generic fast mode never uses bf16 on the CPU: on CPUs without avx512_bf16/AMX bf16 convolutions ran ~7x
slower than fp32. The dlib embedder's int8 and bf16 paths run only where an LFW admission record allows them for
its weights on the CPU's ISA (:mod:`.precision`, :mod:`.lowp`). benchmarks/embed_stage.py measures speed and
cosine on real crops; see BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from indexer.devices import resolve_device

from . import onnx_cpu
from .onnx_cpu import OrtModel
from .registry import register_embedder  # noqa: F401  (re-exported: embedder modules register through base)
from .weights import WeightsInfo, WeightsSpec, build_module, resolve_weights

if TYPE_CHECKING:  # torch is imported where a torch model is built or run: the ONNX Runtime path needs none
    import torch

    from indexer.detect import DetectedFace

logger = logging.getLogger(__name__)

def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise unit length (all-zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


class Embedder(ABC):
    """Face crops -> L2-normalised float32 vectors of size ``dim``."""

    name: ClassVar[str]
    dim: ClassVar[int]
    input_size: ClassVar[int]

    def __init__(self, *, weights: WeightsInfo, device: torch.device, fast: bool = False) -> None:
        self.weights = weights
        self.device = device
        self.fast = fast  # see the module docstring; each subclass decides what it means for its model
        self._model: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights.name!r}, device={str(self.device)!r})"

    def load(self) -> Any:
        """Load the model once (thread-safe) and return it; called implicitly by crop/forward."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load_model()
                    logger.debug("loaded %s from %s", self.name, self.weights.source)
        return self._model

    @abstractmethod
    def _load_model(self) -> Any:
        """Build the model with ``self.weights``, in eval mode on ``self.device``."""

    @abstractmethod
    def crop(self, img: Image.Image, face: "DetectedFace") -> Image.Image:
        """This embedder's aligned RGB crop of ``face`` at ``input_size`` x ``input_size``."""

    @abstractmethod
    def preprocess(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """Crops from :meth:`crop` -> (N, 3, H, W) model input."""

    @abstractmethod
    def forward(self, tensor: torch.Tensor) -> np.ndarray:
        """Raw model output (N, dim) float32 for a preprocessed batch, not normalised."""

    def embed_crops(self, crops: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 unit-length rows; (0, dim) for no crops."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self.forward(self.preprocess(crops[i:i + batch_size])) for i in range(0, len(crops), batch_size)]
        return l2_normalize(np.concatenate(parts, axis=0))

    def _crops_to_uint8(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """(N, 3, H, W) uint8 RGB (a channels-first view of the stacked crops)."""
        size = (self.input_size, self.input_size)
        arrays = []
        for crop in crops:
            if crop.size != size:
                raise ValueError(f"{self.name} expects {size} crops from its crop(), got {crop.size}")
            arrays.append(np.asarray(crop if crop.mode == "RGB" else crop.convert("RGB"), dtype=np.uint8))
        return np.stack(arrays).transpose(0, 3, 1, 2)


class TorchEmbedder(Embedder):
    """A torch module with per-channel ``(x - mean) / std`` on 0..255 pixels (timm's PretrainedCfg idea)."""

    spec: ClassVar[WeightsSpec]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]

    @classmethod
    def create(cls, *, device: str | torch.device = "auto", weights: str | os.PathLike | None = None,
               weights_dir: str | os.PathLike | None = None, fast: bool = False) -> "TorchEmbedder":
        info = resolve_weights(cls.spec.model, weights, weights_dir)
        return cls(weights=info, device=resolve_device(device), fast=fast)

    def _load_model(self) -> torch.nn.Module | OrtModel:
        import torch

        model = build_module(self.spec, self.weights).to(self.device).eval()
        if not self.fast:
            return model
        example = torch.randn(2, 3, self.input_size, self.input_size, generator=torch.Generator().manual_seed(0))
        engine = fast_engine()
        if self.device.type == "cpu" and engine != "torch":
            if onnx_cpu.available():
                runner = onnx_cpu.build(model, example)
                if runner is not None:
                    return runner
            else:
                logger.warning("--fast on a CPU runs ~1.5x faster with ONNX Runtime: pip install 'facegallery[fast]'. "
                               "Using the torch rewrite (~1.1x).")
        return optimize_for_inference(model, self._fold_constants, example.to(self.device))

    def _fold_constants(self, model: torch.nn.Module) -> int:
        """Model-specific constant folding for the fast mode (after batch norms); returns how many were folded."""
        return 0

    def preprocess(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        import torch

        x = torch.from_numpy(self._crops_to_uint8(crops)).float()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, tensor: torch.Tensor) -> np.ndarray:
        import torch

        model = self.load()
        if isinstance(model, OrtModel):
            return model(tensor).numpy()
        x = tensor.to(self.device)
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            out = model(x)
        return out.float().cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.fast and self.device.type == "cuda":
            import torch

            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def fast_engine() -> str:
    """``FACEGALLERY_FAST_ENGINE``: ``auto`` (default: ONNX Runtime on the CPU when installed) or ``torch`` (the
    torch rewrite everywhere, e.g. to compare, or if ONNX Runtime misbehaves on some CPU)."""
    value = os.environ.get("FACEGALLERY_FAST_ENGINE", "auto").strip().lower() or "auto"
    if value not in ("auto", "torch", "onnxruntime"):
        logger.warning("FACEGALLERY_FAST_ENGINE=%s is not one of auto, onnxruntime, torch; using auto", value)
        return "auto"
    return value


def fold_batch_norms(model: torch.nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d among its container's children into that conv.

    In place (eval mode only). "Follows" is registration order, which matches the data flow of the blocks used
    here (facenet-pytorch's BasicConv2d, torchvision's ResNet); :func:`optimize_for_inference` checks the
    rewritten model's outputs, so a container where that does not hold is caught, not trusted.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (type(conv) is torch.nn.Conv2d and type(bn) is torch.nn.BatchNorm2d
                    and conv.out_channels == bn.num_features and bn.track_running_stats):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, torch.nn.Identity())
                folded += 1
    return folded


def optimize_for_inference(model: torch.nn.Module, fold: Callable[[torch.nn.Module], int] | None = None,
                           example: torch.Tensor | None = None, rtol: float = 1e-2) -> torch.nn.Module:
    """The ``fast=True`` model: an eval-mode copy with batch norms (and whatever ``fold`` folds) merged into the
    convolutions, in channels_last. ``model`` itself is left untouched.

    Plain module surgery, no tracing: torch.fx's symbolic tracer patches ``nn.Module.__call__`` process-wide while
    it runs, which breaks any other thread running a model at that moment (the enrollment pipeline's detector).
    When ``example`` is given, the copy must reproduce the model's outputs on it to ``rtol`` relative error, or
    the plain model is returned with a warning. The check is for structural mistakes (a wrong fold is off by tens
    of percent); reordered fp32 is ~1e-6 on CPU, TF32 convolutions on a GPU ~1e-3, hence the loose default.
    """
    import torch

    fast = copy.deepcopy(model).eval()
    folded = fold_batch_norms(fast)
    extra = fold(fast) if fold is not None else 0
    fast = fast.to(memory_format=torch.channels_last)
    logger.debug("fast mode: folded %d batch norm(s) and %d other constant(s)", folded, extra)
    if example is not None:
        with torch.inference_mode():
            want = model(example).float()
            got = fast(example.contiguous(memory_format=torch.channels_last)).float()
        error = float(((got - want).norm(dim=1) / want.norm(dim=1).clamp_min(1e-12)).max())
        if not error <= rtol:
            logger.warning("fast mode changed the model's outputs (relative error %.1e); using the plain model", error)
            return model
    return fast
