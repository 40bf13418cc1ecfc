"""Classifier heads trained on the stored vectors, shown beside nearest-neighbour answers for comparison.

Nothing here imports torch until a head is trained, read or run, so ``identify`` on a gallery without heads
starts without it.
"""
from gallery.heads.model import TrainConfig
from gallery.heads.train import HeadReport, head_status, train_heads

__all__ = ["HeadReport", "TrainConfig", "head_status", "train_heads"]
