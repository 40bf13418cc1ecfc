"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as a torch module.

The architecture is the one defined in dlib's ``dnn_face_recognition_ex.cpp``: a 7x7/2 convolution and a 3x3/2
max pool, 14 residual blocks of two 3x3 convolutions (four of them downsampling: stride-2 first convolution, 2x2
average pool on the shortcut), a global average pool and a 256 -> 128 fully connected layer without bias. Every
``affine`` layer (dlib's inference form of batch norm) is folded into the convolution before it.

Three details of dlib that a textbook ResNet does not share, each of which breaks equality when missed:

- a convolution or pool pads 0 when its stride is not 1, else k/2, so the planes go 150 -> 72 -> 35 -> 17 -> 8 ->
  4 -> 2 (floor division everywhere);
- ``add_prev`` adds tensors of different shapes by zero-padding the smaller at the bottom/right and in channels:
  it happens on every channel-doubling shortcut, and in two downsampling blocks the planes differ too (8 -> 3x3
  convolution output vs 4x4 pool output, then 1x1 vs 2x2);
- the input is RGB, ``(pixel - average colour) / 256``, with the average colour read from the file.

The module takes float (N, 3, 150, 150) RGB pixels in 0..255 and returns dlib's raw 128-D descriptor (not unit
length), so it can be exported to ONNX with its normalisation inside.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dlib_net import AddPrev, Affine, Conv, DlibFormatError, DlibNet, Fc, Layer, Pool, Relu

# (channels, residual blocks, whether the first one downsamples): alevel4 .. alevel0 of the dlib definition.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
INPUT_SIZE = 150


def _padding(kernel: int, stride: int) -> int:
    """dlib's default padding for its con/pool templates."""
    return kernel // 2 if stride == 1 else 0


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: elementwise sum where the smaller tensor is zero-padded (channels, bottom, right)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2], 0, c - x.shape[1]))

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """``ares`` / ``ares_down``: relu(add_prev(conv-relu-conv(x), x or avgpool2x2(x)))."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, _padding(3, stride))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, _padding(3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(branch, shortcut))


class DlibResNet(nn.Module):
    """150x150 RGB chip (0..255 floats) -> dlib's raw 128-D face descriptor."""

    def __init__(self, avg_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.register_buffer("avg_rgb", torch.tensor(avg_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, 32, 7, 2, _padding(7, 2))
        blocks, cin = [], 32
        for channels, count, first_down in STAGES:
            for i in range(count):
                blocks.append(ResidualBlock(cin, channels, down=first_down and i == 0))
                cin = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.avg_rgb) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, _padding(3, 2))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def _describe(layer: Layer | None) -> str:
    """A layer's type and geometry in one line (array fields by their shape only)."""
    if layer is None:
        return "missing"
    fields = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)}
    shown = {k: v.shape if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    return f"{type(layer).__name__} {shown}"


class _Layers:
    """The file's layers in order, taken one by one with a check of the kind (and geometry) the definition wants."""

    def __init__(self, net: DlibNet) -> None:
        self.items: Iterator[Layer] = iter(net.layers)
        self.index = -1

    def take(self, layer_type: type, **expected) -> Layer:
        self.index += 1
        layer = next(self.items, None)
        if not isinstance(layer, layer_type) or any(getattr(layer, k) != v for k, v in expected.items()):
            raise DlibFormatError(f"layer {self.index} of the dlib file is {_describe(layer)}, but the network "
                                  f"definition wants {layer_type.__name__} {expected}")
        return layer

    def conv_affine(self, conv: nn.Conv2d) -> None:
        """A con + affine pair folded into ``conv``: W' = W * gamma, b' = b * gamma + beta (in float64)."""
        stride, pad = conv.stride, conv.padding
        src = self.take(Conv, stride=stride, padding=pad)
        aff = self.take(Affine)
        if src.weight.shape != tuple(conv.weight.shape) or aff.gamma.shape != (conv.out_channels,):
            raise DlibFormatError(f"layer {self.index}: conv shape {src.weight.shape}, the network definition "
                                  f"wants {tuple(conv.weight.shape)}")
        gamma = aff.gamma.astype(np.float64)
        weight = src.weight.astype(np.float64) * gamma[:, None, None, None]
        bias = src.bias.astype(np.float64) * gamma + aff.beta
        conv.weight.data.copy_(torch.from_numpy(weight.astype(np.float32)))
        conv.bias.data.copy_(torch.from_numpy(bias.astype(np.float32)))


def build_dlib_resnet(net: DlibNet) -> DlibResNet:
    """The torch module with the file's weights, after checking the file's layer sequence against the definition."""
    if tuple(net.input_size) != (INPUT_SIZE, INPUT_SIZE):
        raise DlibFormatError(f"dlib network input {net.input_size}, expected {INPUT_SIZE}x{INPUT_SIZE}")
    model = DlibResNet(net.avg_rgb)
    layers = _Layers(net)
    layers.conv_affine(model.stem)
    layers.take(Relu)
    layers.take(Pool, kind="max", size=(3, 3), stride=(2, 2), padding=(0, 0))
    for block in model.blocks:
        layers.conv_affine(block.conv1)
        layers.take(Relu)
        layers.conv_affine(block.conv2)
        if block.down:
            layers.take(Pool, kind="avg", size=(2, 2), stride=(2, 2), padding=(0, 0))
        layers.take(AddPrev)
        layers.take(Relu)
    layers.take(Pool, kind="avg", size=(0, 0))  # avg_pool_everything
    fc = layers.take(Fc)
    if fc.weight.shape != (model.fc.in_features, model.fc.out_features):
        raise DlibFormatError(f"fc weight {fc.weight.shape}, expected ({model.fc.in_features}, 128)")
    model.fc.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(fc.weight.T)))
    downs = sum(block.down for block in model.blocks)
    if layers.index + 1 != len(net.layers) or net.wrappers != len(model.blocks) + 2 * downs:
        raise DlibFormatError(f"dlib file has {len(net.layers)} layers and {net.wrappers} tag/skip wrappers; "
                              f"the network definition has {layers.index + 1} and {len(model.blocks) + 2 * downs}")
    return model.eval()
