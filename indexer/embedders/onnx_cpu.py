"""CPU fast mode: a torch embedder exported to ONNX and run by ONNX Runtime.

Measured on this project's 2-core AVX2 CPU, batch 16, fp32: ONNX Runtime ran InceptionResnetV1 and ResNet50
1.4-1.7x faster than torch eager across five runs of benchmarks/embed_stage.py on this shared machine (first
exploration, random inputs: 1.8x / 2.2x), with outputs equal to float32 rounding (cosine 1.000000 on real
crops); BENCHMARKS.md has the figures of the latest run. Its graph optimiser fuses Conv+BatchNorm+activation and keeps weights
pre-packed in the blocked layout its AVX2 kernels want; torch eager re-orders activations for every convolution.
The same side-by-side run put the alternatives lower: torch's own inference rewrite (folded batch norms,
channels_last) 1.05x/1.35x, ``torch.jit.optimize_for_inference`` 1.2x/1.6x (deprecated), ``torch.compile``
with freezing 1.6x on FaceNet after a 60 s compile and with outputs off by cosine 0.99; OpenVINO 1.7x/2.1x,
close to ONNX Runtime but a 180 MB install against ONNX Runtime's 78 MB (plus 31 MB of ``onnx`` for export).

The model is exported in memory when the embedder loads (FaceNet ~2 s, no files written), with the TorchScript
exporter (``dynamo=False``): its tracer state is thread-local, unlike torch.fx's symbolic tracer, so exporting
cannot disturb a detector running in another thread; the exporter's own globals are guarded by a lock. Float32 throughout; nothing here changes precision.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'facegallery[fast]'``); :func:`available` says whether they are
importable so callers can fall back to the torch rewrite.
"""
from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from indexer import onnx_cache

if TYPE_CHECKING:  # torch is imported to export a model; running a stored graph needs none
    import torch

logger = logging.getLogger(__name__)

OPSET = 17


#: The TorchScript exporter keeps process-wide state (``GLOBALS.in_onnx_export``, the trace module map): two
#: exports at once (two app sessions loading FaceNet and ResNet50) made one fail. One export at a time, shared with
#: the stored graphs' exporters.
_EXPORT_LOCK = onnx_cache.EXPORT_LOCK


def available() -> bool:
    """True when ONNX export and ONNX Runtime can both be imported (a broken install counts as absent)."""
    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxruntime")):
        return False
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - an installed but unloadable wheel: use the torch path
        logger.warning("onnx/onnxruntime are installed but do not import (%s: %s)", type(exc).__name__, exc)
        return False
    return True


class OrtModel:
    """Callable like the torch module it came from: (N, 3, H, W) float32 tensor -> (N, dim) float32 tensor; a numpy
    array in gives a numpy array out (no torch needed)."""

    def __init__(self, session, input_name: str, threads: int) -> None:
        self.session = session
        self.input_name = input_name
        self.threads = threads

    def __repr__(self) -> str:
        return f"OrtModel(threads={self.threads}, providers={self.session.get_providers()})"

    def __call__(self, x):
        if isinstance(x, np.ndarray):
            (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
            return out
        import torch

        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out)


def export_onnx(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (eval mode, CPU) as ONNX bytes with a dynamic batch dimension."""
    import torch

    buffer = io.BytesIO()
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its own deprecation and traces facenet-pytorch's Python-side
        # shape checks; both are warnings about the exporter, not about the model being exported.
        for category in (FutureWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["pixels"], output_names=["embedding"],
                          dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}})
    return buffer.getvalue()


def session(data: bytes, threads: int) -> OrtModel:
    """An ONNX Runtime CPU session of the ONNX bytes ``data`` (fp32 here, int8 in :mod:`.lowp`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Batch sizes vary from call to call (faces per chunk). ONNX Runtime's arena only grows and its memory
    # patterns are cached per input shape, so both made peak RSS creep up with the folder size; off, the
    # forward measured the same speed (benchmarks/enroll_e2e.py checks the RSS).
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only; its initializer notices are not for our users
    ort_session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return OrtModel(ort_session, ort_session.get_inputs()[0].name, threads)


def build(model: torch.nn.Module, example: torch.Tensor, *, threads: int | None = None,
          rtol: float = 1e-3) -> OrtModel | None:
    """An ONNX Runtime session of ``model``, or None (with a warning) if export fails or changes its outputs.

    ``threads``: ONNX Runtime's intra-op threads (default: torch's current count, so ``--threads``-style settings
    apply to both). Spinning is turned off: the detector thread shares the cores during enrollment; with
    spinning on, enrollment and the raw forward measured the same within this machine's noise.
    """
    import torch

    threads = threads or torch.get_num_threads()
    model = model.to("cpu").eval()
    try:
        data = export_onnx(model, example)
        runner = session(data, threads)
        with torch.inference_mode():
            want = model(example).float()
        got = runner(example)
    except Exception as exc:  # noqa: BLE001 - any exporter/runtime failure means "use the torch path"
        logger.warning("ONNX Runtime fast mode unavailable for this model (%s: %s); using torch",
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    if got.shape != want.shape or not error <= rtol:
        logger.warning("ONNX Runtime changed the model's outputs (relative error %.1e); using torch", error)
        return None
    logger.debug("fast mode: ONNX Runtime, %d thread(s), %.1f MB graph, relative error %.1e",
                 threads, len(data) / 1e6, error)
    return runner
