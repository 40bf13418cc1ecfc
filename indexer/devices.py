"""The one place a device name becomes a torch device ("auto": CUDA when there is one, else the CPU)."""
from __future__ import annotations


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA raises ValueError.

    torch is imported here, not at module level, so naming a device costs nothing until a model is built.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return resolved
