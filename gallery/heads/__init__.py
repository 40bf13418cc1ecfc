"""Classifier heads trained on the stored vectors, shown beside nearest-neighbour answers for comparison."""
from gallery.heads.model import TrainConfig
from gallery.heads.train import HeadReport, head_status, train_heads

__all__ = ["HeadReport", "TrainConfig", "head_status", "train_heads"]
