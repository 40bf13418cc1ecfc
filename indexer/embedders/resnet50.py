"""ResNet50 trained on ImageNet (torchvision), global-average-pooled 2048-D features.

Not a face model: it is the generic-features baseline. The classifier (``fc``) is replaced by Identity and its
keys are dropped from checkpoints. Crop: the detection box made square, grown by ``margin``, resized to 224 with
ImageNet mean/std.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from indexer.align import crop_square, expand_box, inner_square_box, square_box

from .base import TorchEmbedder, register_embedder
from .weights import WeightsSpec, register_weights

if TYPE_CHECKING:
    from indexer.detect import DetectedFace

logger = logging.getLogger(__name__)

# torchvision's file names for IMAGENET1K_V2 (preferred) and IMAGENET1K_V1.
CACHE_NAMES = ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth")


def _build() -> torch.nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.fc = torch.nn.Identity()
    return model


def _cache_paths() -> list[Path]:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / name for name in CACHE_NAMES]


def _download() -> Path:
    from torchvision.models import ResNet50_Weights

    url = ResNet50_Weights.IMAGENET1K_V2.url
    dest = _cache_paths()[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    # torchvision names files NAME-<sha256 prefix>.pth; check it like load_state_dict_from_url(check_hash=True).
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=_hash_prefix(dest), progress=False)
    return dest


def _hash_prefix(path: Path) -> str:
    """torchvision's file names end in the first hex digits of the file's sha256: resnet50-11ad3fa6.pth."""
    return path.stem.rsplit("-", 1)[1]


SPEC = register_weights(WeightsSpec(
    model="resnet50", name="resnet50-imagenet", filename="resnet50-imagenet.pt", build=_build,
    drop_prefixes=("fc.",),  # the 1000-class ImageNet classifier
    cache_paths=_cache_paths, download=_download, cache_sha256_prefix=_hash_prefix,
    official_sha256=tuple(_hash_prefix(Path(n)) for n in CACHE_NAMES),
))


class ResNet50Embedder(TorchEmbedder):
    """torchvision ResNet50 (ImageNet), 224x224 input, pooled 2048-D output."""

    name = "resnet50"
    dim = 2048
    input_size = 224
    margin = 0.2  # box grown by 20% of its side in total (10% each side): some hair and jaw context
    spec = SPEC
    mean = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    std = (0.229 * 255, 0.224 * 255, 0.225 * 255)

    def crop(self, img: Image.Image, face: "DetectedFace") -> Image.Image:
        box = inner_square_box(face.box) if face.fallback else expand_box(square_box(face.box), self.margin)
        return crop_square(img, box, self.input_size)


@register_embedder("resnet50")
def resnet50(**kwargs) -> ResNet50Embedder:
    return ResNet50Embedder.create(**kwargs)
