"""FaceNet: facenet-pytorch's InceptionResnetV1 trained on VGGFace2, 512-D.

Crop geometry follows facenet-pytorch's ``extract_face`` (margin 20 px at 160 px output), made square so a
non-square detection is not stretched. Pixels are standardised with ``(x - 127.5) / 128`` like facenet-pytorch's
``fixed_image_standardization``, which is what the VGGFace2 weights were trained with.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from indexer.align import crop_square, facenet_margin_box, inner_square_box

from .base import TorchEmbedder, register_embedder
from .weights import WeightsSpec, register_weights

if TYPE_CHECKING:
    from indexer.detect import DetectedFace

logger = logging.getLogger(__name__)

# The VGGFace2 checkpoint facenet-pytorch 2.5.3 downloads (see its models/inception_resnet_v1.py).
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
CACHE_NAME = os.path.basename(VGGFACE2_URL)


def _build() -> torch.nn.Module:
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=None, classify=False)


def _cache_paths() -> list[Path]:
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    # facenet-pytorch caches in $TORCH_HOME/checkpoints; torch.hub uses $TORCH_HOME/hub/checkpoints.
    dirs = [Path(get_torch_home()) / "checkpoints", Path(torch.hub.get_dir()) / "checkpoints"]
    return [d / CACHE_NAME for d in dict.fromkeys(dirs)]


def _download() -> Path:
    from facenet_pytorch.models.utils.download import download_url_to_file

    dest = _cache_paths()[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    download_url_to_file(VGGFACE2_URL, str(dest), progress=False)
    return dest


SPEC = register_weights(WeightsSpec(
    model="facenet", name="facenet-vggface2", filename="facenet-vggface2.pt", build=_build,
    drop_prefixes=("logits.",),  # the VGGFace2 classifier head (8631 classes) is not used for embeddings
    cache_paths=_cache_paths, download=_download,
))


def fold_residual_scales(model: torch.nn.Module) -> int:
    """Fold the Inception-ResNet blocks' ``out = conv2d(...) * scale + x`` into conv2d's weights (fast mode).

    facenet-pytorch's Block35/Block17/Block8 keep ``scale`` as a float attribute next to their final ``conv2d``;
    after folding, ``scale`` is 1.0 and the block computes the same sum.
    """
    folded = 0
    for block in model.modules():
        scale, conv = getattr(block, "scale", None), getattr(block, "conv2d", None)
        if isinstance(scale, float) and scale != 1.0 and type(conv) is torch.nn.Conv2d:
            with torch.no_grad():
                conv.weight.mul_(scale)
                if conv.bias is not None:
                    conv.bias.mul_(scale)
            block.scale = 1.0
            folded += 1
    return folded


class FaceNetEmbedder(TorchEmbedder):
    """InceptionResnetV1 (VGGFace2), 160x160 input, 512-D output."""

    name = "facenet"
    dim = 512
    input_size = 160
    margin = 20  # pixels of the 160 px output, as in facenet-pytorch's MTCNN(margin=...)
    spec = SPEC
    mean = (127.5, 127.5, 127.5)
    std = (128.0, 128.0, 128.0)

    def _fold_constants(self, model: torch.nn.Module) -> int:
        return fold_residual_scales(model)

    def crop(self, img: Image.Image, face: "DetectedFace") -> Image.Image:
        # A fallback "face" is the whole (usually tightly cropped) image: centre-crop it rather than pad it.
        box = inner_square_box(face.box) if face.fallback else facenet_margin_box(face.box, self.input_size, self.margin)
        return crop_square(img, box, self.input_size)


@register_embedder("facenet")
def facenet(**kwargs) -> FaceNetEmbedder:
    return FaceNetEmbedder.create(**kwargs)
