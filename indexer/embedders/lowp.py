"""The reduced-precision runners behind ``--fast``: int8 ONNX Runtime and bf16 torch autocast.

Neither runs unless :mod:`.precision` finds an LFW admission for it; this module only builds them.

- **int8**: ONNX Runtime static quantisation (``quantize_static``), QDQ format, uint8 activations and int8
  per-channel weights (the layout ONNX Runtime recommends for x86 and the only one with fast kernels here; s8s8 ran
  ~3x slower than fp32), MinMax ranges. The ranges are calibrated once, on real chips of LFW training people who
  are not in ``pairs.txt`` (benchmarks/dlib_precision.py), and shipped in the admission record; at load the graph is
  quantised from them (no data needed) and must hash to the graph that was measured, else fp32 runs.
- **bf16**: the torch module in channels_last under ``torch.autocast(bfloat16)``; float32 out.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from . import onnx_cpu

logger = logging.getLogger(__name__)

INPUT_NAME = "pixels"  # onnx_cpu.export_onnx's input


def _quantize(fp32: bytes, folder: Path, *, batches: Iterable[np.ndarray] | None = None,
              cache: Path) -> bytes:
    """``quantize_static`` of the ONNX bytes ``fp32``: calibrating on ``batches`` (and writing the ranges to
    ``cache``), or from the ranges already in ``cache``. Returns the int8 ONNX bytes."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, items: Iterable[np.ndarray]) -> None:
            self.items = iter(items)

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}

    (folder / "fp32.onnx").write_bytes(fp32)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint on the root logger
    try:
        # and its shape inference prints the Pad nodes' shapes on stdout
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(folder / "fp32.onnx"), str(folder / "int8.onnx"),
                            Reader(batches) if batches is not None else None,
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibration_cache_path=str(cache))
    finally:
        root.setLevel(level)
    return (folder / "int8.onnx").read_bytes()


def calibrate_int8(fp32: bytes, batches: Iterable[np.ndarray]) -> tuple[bytes, dict[str, list[float]]]:
    """(int8 ONNX bytes, MinMax ranges ``{tensor: [lowest, highest]}``) calibrated on ``batches`` of
    (N, 3, 150, 150) float pixels. The ranges are float32 values written as exact decimal floats."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    with tempfile.TemporaryDirectory(prefix="facegallery-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        data = _quantize(fp32, Path(tmp), batches=batches, cache=cache)
        ranges = {name: [float(np.asarray(v, np.float32).reshape(-1)[0]) for v in t.range_value]
                  for name, t in load_tensors_data(cache).items()}
    return data, ranges


def quantize_int8(fp32: bytes, ranges: dict[str, list[float]]) -> bytes:
    """The int8 ONNX bytes of ``fp32`` quantised from stored ``ranges`` (as :func:`calibrate_int8` returned)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    data = TensorsData(CalibrationMethod.MinMax,
                       {name: (np.array([lo], np.float32), np.array([hi], np.float32))  # as the calibrator's
                        for name, (lo, hi) in ranges.items()})
    with tempfile.TemporaryDirectory(prefix="facegallery-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(data, cache)
        return _quantize(fp32, Path(tmp), cache=cache)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_int8(model: torch.nn.Module, example: torch.Tensor, ranges: dict[str, list[float]], graph_sha256: str,
               *, threads: int | None = None) -> tuple[onnx_cpu.OrtModel | None, str]:
    """(the int8 session, "") when the graph quantised from ``ranges`` is the measured one; else (None, why)."""
    threads = threads or torch.get_num_threads()
    try:
        data = quantize_int8(onnx_cpu.export_onnx(model.to("cpu").eval(), example), ranges)
    except Exception as exc:  # noqa: BLE001 - an exporter/quantiser failure means "run fp32"
        return None, f"int8 quantisation failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if sha256(data) != graph_sha256:
        return None, (f"the int8 graph built here ({sha256(data)[:12]}) is not the one measured "
                      f"({graph_sha256[:12]}): another torch or onnxruntime version")
    return onnx_cpu.session(data, threads), ""


class Bf16Model(torch.nn.Module):
    """``module`` in channels_last under bfloat16 autocast on its device; float32 (N, dim) out."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.module(x).float()
