"""The one place a device name becomes a torch device ("auto": CUDA when there is one, else the CPU)."""
from __future__ import annotations


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA raises ValueError.

    torch is imported here, not at module level, so naming a device costs nothing until a model is built.
    """
    import torch

    if isinstance(device, HostCPU):
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return resolved


class HostCPU:
    """The CPU, for models run by ONNX Runtime or dlib-bin: what code reads of a torch device (``type``,
    ``index``, ``str()``), without importing torch."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    def __repr__(self) -> str:
        return "device(type='cpu')"


CPU = HostCPU()


def cuda_possible() -> bool:
    """Whether ``"auto"`` could mean CUDA, answered without importing torch: an NVIDIA driver is loaded (its /proc
    entry or device node; WSL2 exposes GPUs as /dev/dxg). A driver without a CUDA build of torch still answers
    True: the torch engines then run on the CPU, slower to start but correct."""
    import os

    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg"))


def runs_on_cpu(device) -> bool:
    """True when ``device`` ("auto", "cpu", a torch device...) means the CPU here, without importing torch."""
    name = str(device)
    return name == "cpu" or (name == "auto" and not cuda_possible())
