"""A pure-Python reader of dlib's serialized face-recognition network (``dlib_face_recognition_resnet_model_v1.dat``).

The file is dlib's own binary serialization of a ``loss_metric<fc_no_bias<128, ...>>`` network, not a pickle: the
reader only ever decodes integers, strings, floats and raw float32 arrays, so a hostile file can at worst be
refused. What the reader relies on, each checked while reading (any surprise is a :class:`DlibFormatError` naming
the byte offset, never a traceback from deep inside):

- integers are a control byte (low nibble: byte count, bit 7: negative) followed by that many little-endian bytes;
  strings are an integer length and ASCII; dlib floats are two such integers, mantissa and base-2 exponent;
- parameter tensors are a version (2), four dimensions and then raw little-endian float32 values;
- the network is written outside-in: the loss layer, then one version number per wrapper (2: a layer, 1: a tag or
  skip wrapper, which carries no data, 3: the layer sitting on the input), then the input layer, then every
  layer's details from the input upwards, each followed by three ASCII '0'/'1' flags and three empty tensors;
- the layer version strings are the old ones this file was written with (``con_4``, ``affine_``, ``relu_``,
  ``max_pool_2``, ``avg_pool_2``, ``add_prev_``, ``fc_2``, ``loss_metric_2``); newer ones are refused rather than
  guessed at.

The residual wiring is not in the file (tags and skips are bare wrappers): :mod:`.dlib_resnet` rebuilds it from
the network definition in dlib's ``dnn_face_recognition_ex.cpp`` and checks the layer sequence read here against it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from indexer.errors import WeightsError

# dlib's float_details marks these special values with an out-of-range exponent.
_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
_INPUT_LAYER = "input_rgb_image_sized"
_LOSS_LAYER = "loss_metric_2"


class DlibFormatError(WeightsError):
    """A file that is not the dlib network this reader knows (truncated, garbled, or another layer version)."""


@dataclass(frozen=True)
class Conv:
    """``con_4``: weight (out, in, kh, kw) as torch lays it out, bias (out,), stride and padding (y, x)."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Affine:
    """``affine_`` in conv mode: a per-channel ``gamma * x + beta`` (dlib's inference form of batch norm)."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Relu:
    """``relu_``."""


@dataclass(frozen=True)
class Pool:
    """``max_pool_2`` / ``avg_pool_2``; a size of (0, 0) means "the whole plane" (``avg_pool_everything``)."""

    kind: str  # "max" or "avg"
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    """``add_prev_``: sum with a tagged earlier output (which one is not stored)."""


@dataclass(frozen=True)
class Fc:
    """``fc_2`` without bias: weight stored (in, out), the transpose of torch's Linear."""

    weight: np.ndarray


Layer = Conv | Affine | Relu | Pool | AddPrev | Fc


@dataclass(frozen=True)
class DlibNet:
    """Everything the file holds that inference needs, layers in data-flow order (input first)."""

    input_size: tuple[int, int]
    avg_rgb: tuple[float, float, float]  # subtracted from each 0..255 pixel before dividing by 256
    layers: tuple[Layer, ...]
    wrappers: int  # tag/skip wrappers seen (no data; the wiring comes from the network definition)


class _Stream:
    """dlib's primitive encodings over an in-memory file; every read checks bounds and plausibility."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.pos = data, name, 0

    def fail(self, what: str, at: int | None = None) -> DlibFormatError:
        where = self.pos if at is None else at
        return DlibFormatError(f"{self.name}: not a dlib face recognition network: {what} at byte {where}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file ends early (wanted {n} bytes, {len(self.data) - self.pos} left)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        start = self.pos
        control = self.take(1)[0]
        if control & 0x70 or (control & 0x0F) > 8:
            raise self.fail(f"bad integer control byte 0x{control:02x}", start)
        value = int.from_bytes(self.take(control & 0x0F), "little")
        return -value if control & 0x80 else value

    def dims(self, count: int) -> tuple[int, ...]:
        values = tuple(self.integer() for _ in range(count))
        if any(v < 0 or v > 1 << 24 for v in values):
            raise self.fail(f"implausible dimensions {values}")
        return values

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        if abs(exponent) > 2000:
            raise self.fail(f"bad float exponent {exponent}")
        return math.ldexp(mantissa, exponent)

    def string(self, limit: int = 64) -> str:
        n = self.integer()
        if not 0 <= n <= limit:
            raise self.fail(f"bad string length {n}")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-ASCII layer name") from None

    def version(self, expected: int, what: str) -> None:
        if (found := self.integer()) != expected:
            raise self.fail(f"{what} version {found}, expected {expected}")

    def tensor(self) -> np.ndarray:
        """A parameter tensor: dims (n, k, nr, nc) then raw little-endian float32, returned flat."""
        self.version(2, "tensor")
        count = math.prod(self.dims(4))
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        """An alias_tensor (a view into a layer's params): just its version and four dims."""
        self.version(1, "alias tensor")
        return self.dims(4)

    def layer_footer(self) -> None:
        """Training state after each layer: three '0'/'1' flags and three tensors that are empty in a saved net."""
        for _ in range(3):
            if self.take(1) not in (b"0", b"1"):
                raise self.fail("bad layer flag", self.pos - 1)
        for _ in range(3):
            if self.tensor().size:
                raise self.fail("non-empty gradient tensor")


def _split(stream: _Stream, params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Cut a layer's flat params into its alias tensors' shapes (which must use exactly all of them)."""
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != params.size:
        raise stream.fail(f"{params.size} parameters do not fill shapes {shapes}")
    parts = np.split(params, np.cumsum(sizes)[:-1])
    return [p.reshape(s) for p, s in zip(parts, shapes)]


def _multipliers(stream: _Stream) -> None:
    """Learning-rate and weight-decay multipliers of con/fc layers: training only, read and dropped."""
    for _ in range(4):
        stream.real()


def _conv(stream: _Stream) -> Conv:
    params = stream.tensor()
    filters, nr, nc, sy, sx, py, px = stream.dims(7)
    w_shape, b_shape = stream.alias(), stream.alias()
    if w_shape[0] != filters or w_shape[2:] != (nr, nc) or b_shape != (1, filters, 1, 1):
        raise stream.fail(f"conv shapes {w_shape} / {b_shape} do not match {filters} {nr}x{nc} filters")
    weight, bias = _split(stream, params, w_shape, (filters,))
    _multipliers(stream)
    return Conv(weight, bias, (sy, sx), (py, px))


def _affine(stream: _Stream) -> Affine:
    params = stream.tensor()
    g_shape, b_shape = stream.alias(), stream.alias()
    if (mode := stream.integer()) != 0:
        raise stream.fail(f"affine mode {mode}, expected 0 (per-channel conv mode)")
    gamma, beta = _split(stream, params, g_shape, b_shape)
    return Affine(gamma.reshape(-1), beta.reshape(-1))


def _pool(stream: _Stream, kind: str) -> Pool:
    nr, nc, sy, sx, py, px = stream.dims(6)
    return Pool(kind, (nr, nc), (sy, sx), (py, px))


def _fc(stream: _Stream) -> Fc:
    outputs, inputs = stream.dims(2)
    params = stream.tensor()
    w_shape, b_shape = stream.alias(), stream.alias()
    if (mode := stream.integer()) != 1 or math.prod(b_shape) != 0:
        raise stream.fail(f"fc bias mode {mode}, expected 1 (no bias)")
    if w_shape[:2] != (inputs, outputs):
        raise stream.fail(f"fc weight shape {w_shape}, expected ({inputs}, {outputs}, 1, 1)")
    (weight,) = _split(stream, params, (inputs, outputs))
    _multipliers(stream)
    return Fc(weight)


_READERS = {
    "con_4": _conv, "affine_": _affine, "relu_": lambda s: Relu(), "add_prev_": lambda s: AddPrev(),
    "max_pool_2": lambda s: _pool(s, "max"), "avg_pool_2": lambda s: _pool(s, "avg"), "fc_2": _fc,
}


def _layer(stream: _Stream) -> Layer:
    name = stream.string()
    if name not in _READERS:
        raise stream.fail(f"unsupported layer {name!r} (known: {', '.join(_READERS)})")
    layer = _READERS[name](stream)
    stream.layer_footer()
    return layer


def parse_dlib_net(data: bytes, name: str = "<bytes>") -> DlibNet:
    """Decode a whole serialized network; every byte must be accounted for."""
    stream = _Stream(data, name)
    stream.version(1, "loss wrapper")
    if (loss := stream.string()) != _LOSS_LAYER:
        raise stream.fail(f"loss layer {loss!r}, expected {_LOSS_LAYER!r}")
    stream.real(), stream.real()  # margin and distance threshold: training only
    wrappers, layers_expected = 0, 1
    while (version := stream.integer()) != 3:  # 3: the layer that sits on the input
        if version not in (1, 2):
            raise stream.fail(f"unexpected wrapper version {version}")
        wrappers += version == 1
        layers_expected += version == 2
    if (kind := stream.string()) != _INPUT_LAYER:
        raise stream.fail(f"input layer {kind!r}, expected {_INPUT_LAYER!r}")
    avg_rgb = (stream.real(), stream.real(), stream.real())
    input_size = stream.dims(2)
    layers = [_layer(stream)]
    if stream.integer() != 1:
        raise stream.fail("bad sample expansion factor (expected 1)")
    while len(layers) < layers_expected:
        layers.append(_layer(stream))
    if stream.pos != len(data):
        raise stream.fail(f"{len(data) - stream.pos} unexpected trailing bytes")
    return DlibNet(input_size, avg_rgb, tuple(layers), wrappers)
