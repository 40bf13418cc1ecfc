"""MTCNN on the CPU without torch: the cascade of :mod:`indexer.mtcnn` in numpy, its three nets in ONNX Runtime.

Same weights (facenet-pytorch's ``{p,r,o}net.pt``), same cascade, step by step: the image pyramid and the 24x24 /
48x48 candidate crops are torch's ``interpolate(mode="area")`` (adaptive average pooling: output cell i averages
input rows ``floor(i*n/m) .. ceil((i+1)*n/m)``), computed per axis from the averaging matrix (a gathered band up to 256 px, a sparse product above: a 4 MP
photo's pyramid then costs ~30 ms instead of seconds); NMS per
scale and per image, then across scales, R-net, O-net with landmarks and the final "Min" NMS. Arithmetic is
float32 throughout, like the torch cascade; the only differences are summation order (a few 1e-7 relative), so
boxes agree with the torch detector within 2e-4 px (tests/test_mtcnn.py). The nets are exported from torch once
and kept on disk (:mod:`indexer.onnx_cache`); every later process detects without importing torch, which is most
of a one-photo ``identify``'s start-up.

This module imports neither torch nor facenet-pytorch: the weights are located with ``importlib`` (facenet-pytorch's
``__init__`` imports torchvision), and only the one-time export in :func:`load_nets` imports torch.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import onnx_cache

log = logging.getLogger(__name__)

NET_NAMES = ("pnet", "rnet", "onet")


def weights_dir() -> Path:
    """facenet-pytorch's packaged MTCNN weights, located without importing facenet_pytorch."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("facenet-pytorch is not installed (it ships MTCNN's weights)")
    return Path(spec.submodule_search_locations[0]) / "data"


def weights_sha256() -> str:
    """One sha256 over the three weight files (their own sha256s, in net order)."""
    folder = weights_dir()
    parts = [hashlib.sha256((folder / f"{name}.pt").read_bytes()).hexdigest() for name in NET_NAMES]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()


def ort_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _export_all() -> dict[str, bytes]:
    """The three nets as ONNX graphs (imports torch; once per weights, see :func:`load_nets`), each checked against
    its torch module on a random input before it is returned."""
    import io
    import warnings

    import onnxruntime as ort
    import torch

    from indexer.mtcnn import Nets

    nets = Nets()
    shapes = {"pnet": (1, 3, 32, 32), "rnet": (2, 3, 24, 24), "onet": (2, 3, 48, 48)}
    dynamic = {"pnet": {0: "batch", 2: "height", 3: "width"}, "rnet": {0: "batch"}, "onet": {0: "batch"}}
    outputs = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "landmarks", "prob"]}
    graphs = {}
    for name in NET_NAMES:
        net, buffer = getattr(nets, name), io.BytesIO()
        with onnx_cache.EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's own deprecation notice
            torch.onnx.export(net, (torch.zeros(shapes[name]),), buffer, dynamo=False,
                              opset_version=17, input_names=["pixels"], output_names=outputs[name],
                              dynamic_axes={"pixels": dynamic[name], **{o: {0: "batch"} for o in outputs[name]}})
        example = torch.rand(shapes[name][0] + 1, *shapes[name][1:], generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            want = [t.numpy() for t in net(example)]
        got = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"]).run(
            None, {"pixels": example.numpy()})
        error = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
        if not error <= 1e-4:
            raise RuntimeError(f"the exported {name} changes the net's outputs (max abs error {error:.1e})")
        graphs[name] = buffer.getvalue()
    return graphs


@dataclass
class OrtNets:
    """P-net, R-net and O-net as ONNX Runtime sessions: each ``net(x)`` takes (N, 3, H, W) float32."""

    sessions: dict[str, Any]

    def __call__(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        return self.sessions[name].run(None, {"pixels": np.ascontiguousarray(x, dtype=np.float32)})


def load_nets(threads: int | None = None) -> OrtNets:
    """ONNX Runtime sessions of the three nets, from the graph cache (exported with torch on first use)."""
    from indexer.embedders import onnx_cpu

    sha = weights_sha256()
    exported: dict[str, bytes] = {}

    def export(name: str):
        def run() -> bytes:
            if not exported:
                exported.update(_export_all())
            return exported[name]
        return run

    threads = onnx_cache.ort_threads() if threads is None else threads
    sessions = {}
    for name in NET_NAMES:
        graph = onnx_cache.load_or_export(f"mtcnn-{name}", sha, export(name))
        sessions[name] = onnx_cpu.session(graph, threads).session  # the project's one set of session options
    return OrtNets(sessions)


@functools.lru_cache(maxsize=1024)
def _area_band(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The averaging matrix as a band: for output cell i, the input indices ``idx[i]`` (L of them, the widest
    window) and their weights ``w[i]`` (1/count, 0 past the cell's own window)."""
    i = np.arange(n_out)
    start = (i * n_in) // n_out
    count = -((-(i + 1) * n_in) // n_out) - start
    k = np.arange(int(count.max()))
    idx = np.minimum(start[:, None] + k[None, :], n_in - 1)
    weights = np.where(k[None, :] < count[:, None], np.float32(1) / count[:, None].astype(np.float32), np.float32(0))
    weights = weights.astype(np.float32)
    idx.setflags(write=False)  # cached and shared: nobody may change them in place
    weights.setflags(write=False)
    return idx, weights


@functools.lru_cache(maxsize=256)
def _area_sparse(n_in: int, n_out: int) -> Any:
    """The averaging matrix (n_out, n_in) as a scipy CSR matrix, built from :func:`_area_band`'s non-zeros (1-3 a
    row for the pyramid's first levels; a dense copy of a 1600 px photo's matrices was ~35 MB a photo size)."""
    from scipy import sparse  # only for images and crops over 256 px: identify of small photos never loads scipy

    idx, weights = _area_band(n_in, n_out)
    used = weights > 0
    rows = np.broadcast_to(np.arange(n_out)[:, None], idx.shape)[used]
    return sparse.csr_matrix((weights[used], (rows, idx[used])), shape=(n_out, n_in), dtype=np.float32)


def _area_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Adaptive average pooling of float32 ``x`` along ``axis`` (-1 or -2) to ``n_out`` cells: a gathered band
    summed by ``einsum`` for short axes (crops, LFW-sized photos; 3x faster than a dense product there, and no BLAS
    threads to contend with the embedder's), a sparse product for long ones (a 4 MP photo's pyramid in ~30 ms)."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if n_in <= 256:
        idx, weights = _area_band(n_in, n_out)
        if axis == -1:
            return np.einsum("...ol,ol->...o", x[..., idx], weights)
        return np.einsum("...olw,ol->...ow", x[..., idx, :], weights)
    matrix = _area_sparse(n_in, n_out)
    planes = np.ascontiguousarray(x).reshape(-1, *x.shape[-2:])
    if axis == -1:  # (matrix @ plane.T).T: scipy copies the transposed plane once
        out = np.stack([np.asarray(matrix @ plane.T, dtype=np.float32).T for plane in planes])
        return out.reshape(*x.shape[:-1], n_out)
    out = np.stack([np.asarray(matrix @ plane, dtype=np.float32) for plane in planes])
    return out.reshape(*x.shape[:-2], n_out, x.shape[-1])


def area_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``interpolate(x, size=(height, width), mode="area")`` for float32 (..., H, W) arrays (rows first: the
    column pass, which transposes, then sees the smaller array)."""
    return np.ascontiguousarray(_area_axis(_area_axis(x, height, -2), width, -1))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first. A box is dropped when its
    IoU with a kept one exceeds ``threshold`` (areas without the +1 pixel, float32), as torchvision's ``nms``."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    b = np.asarray(boxes, dtype=np.float32)[order]
    x1, y1, x2, y2 = b.T
    area = (x2 - x1) * (y2 - y1)
    n = len(b)
    alive = np.ones(n, dtype=bool)
    keep = []
    for i in range(n):
        if not alive[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        w = np.maximum(np.minimum(x2[i], x2[i + 1:]) - np.maximum(x1[i], x1[i + 1:]), np.float32(0))
        h = np.maximum(np.minimum(y2[i], y2[i + 1:]) - np.maximum(y1[i], y1[i + 1:]), np.float32(0))
        inter = w * h
        alive[i + 1:] &= ~(inter / (area[i] + area[i + 1:] - inter) > np.float32(threshold))
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`nms` within each group (image); kept indices in descending score order overall."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = np.concatenate([np.flatnonzero(groups == g)[nms(boxes[groups == g], scores[groups == g], threshold)]
                           for g in np.unique(groups)])
    return keep[np.argsort(-scores[keep], kind="stable")]


def nms_min(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """The final stage's NMS: overlap = intersection / the smaller area (+1 pixel areas), per group; kept indices
    in descending score order (facenet-pytorch's ``batched_nms_numpy(..., 'Min')``)."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    shifted = boxes + (groups.astype(boxes.dtype) * (boxes.max() + 1))[:, None]
    x1, y1, x2, y2 = shifted.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    pick = []
    while order.size > 0:
        i = order[-1]
        pick.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        order = rest[(w * h) / np.minimum(area[i], area[rest]) <= threshold]
    return np.asarray(pick, np.int64)


def _candidates(reg: np.ndarray, probs: np.ndarray, scale: float, threshold: float):
    """P-net's output at one scale -> (boxes (n, 9): x1 y1 x2 y2 score reg..., image index per box)."""
    b, yy, xx = np.nonzero(probs >= threshold)
    score = probs[b, yy, xx]
    offsets = reg.transpose(0, 2, 3, 1)[b, yy, xx]
    bb = np.stack([xx, yy], axis=1).astype(np.float32)
    s = np.float32(scale)
    q1 = np.floor((2 * bb + 1) / s)
    q2 = np.floor((2 * bb + 12) / s)
    return np.concatenate([q1, q2, score[:, None], offsets], axis=1).astype(np.float32), b


def _square(boxes: np.ndarray) -> np.ndarray:
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * np.float32(0.5) - side * np.float32(0.5)
    boxes[:, 1] = boxes[:, 1] + h * np.float32(0.5) - side * np.float32(0.5)
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = np.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                             boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], axis=1)
    return boxes


def _resampled(imgs: np.ndarray, boxes: np.ndarray, image_inds: np.ndarray, size: int, w: int, h: int):
    """Each candidate's crop resampled to ``size`` x ``size`` ("area"), normalised; crops of one pixel size are
    resampled together. Returns (crops, which candidates have one)."""
    b = np.trunc(boxes[:, :4]).astype(np.int32)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    valid = np.flatnonzero((ey > y - 1) & (ex > x - 1))
    out = np.empty((len(valid), imgs.shape[1], size, size), dtype=np.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for j, k in enumerate(valid):
        by_shape.setdefault((int(ey[k] - y[k] + 1), int(ex[k] - x[k] + 1)), []).append(j)
    for rows in by_shape.values():
        ks = valid[rows]
        crops = np.stack([imgs[image_inds[k], :, y[k] - 1:ey[k], x[k] - 1:ex[k]] for k in ks])
        out[rows] = area_resize(crops, size, size)
    return (out - np.float32(127.5)) * np.float32(0.0078125), valid


def _batched(nets: OrtNets, name: str, data: np.ndarray, batch: int = 512) -> list[np.ndarray]:
    outs = [nets(name, data[i:i + batch]) for i in range(0, len(data), batch)]
    return [np.concatenate(v, axis=0) for v in zip(*outs)]


def pyramid_scales(h: int, w: int, min_size: int, factor: float) -> list[float]:
    """MTCNN's image pyramid: 12 / min_size, then times ``factor`` while the shorter side stays >= 12 px."""
    m = 12.0 / min_size
    minl = min(h, w) * m
    scales, scale = [], m
    while minl >= 12:
        scales.append(scale)
        scale *= factor
        minl *= factor
    return scales


def detect_faces(nets: OrtNets, imgs: np.ndarray, min_size: int, thresholds, factor: float):
    """Equal-size images ``(B, H, W, 3)`` uint8 -> per image (boxes (n, 5): x1 y1 x2 y2 prob, points (n, 5, 2))."""
    imgs = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2), dtype=np.float32)
    batch = len(imgs)
    h, w = imgs.shape[2:4]
    boxes_all, inds_all = [], []
    for scale in pyramid_scales(h, w, min_size, factor):
        data = area_resize(imgs, int(h * scale + 1), int(w * scale + 1))
        reg, probs = nets("pnet", (data - np.float32(127.5)) * np.float32(0.0078125))
        boxes, inds = _candidates(reg, probs[:, 1], scale, thresholds[0])
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.5)
        boxes_all.append(boxes[pick])
        inds_all.append(inds[pick])
    if not boxes_all:  # no pyramid level: the image is smaller than min_size
        boxes_all, inds_all = [np.zeros((0, 9), np.float32)], [np.zeros(0, np.int64)]
    boxes, inds = np.concatenate(boxes_all), np.concatenate(inds_all)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
    boxes, inds = boxes[pick], inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = np.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                      boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], axis=1)
    boxes = _square(boxes)

    if len(boxes):
        data, valid = _resampled(imgs, boxes, inds, 24, w, h)
        boxes, inds = boxes[valid], inds[valid]
    if len(boxes):
        reg, score = _batched(nets, "rnet", data)
        keep = score[:, 1] > thresholds[1]
        boxes = np.concatenate((boxes[keep, :4], score[keep, 1:2]), axis=1)
        inds, reg = inds[keep], reg[keep]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes = _square(_regress(boxes[pick], reg[pick]))
        inds = inds[pick]

    points = np.zeros((0, 5, 2), dtype=np.float32)
    if len(boxes):
        data, valid = _resampled(imgs, boxes, inds, 48, w, h)
        boxes, inds = boxes[valid], inds[valid]
    if len(boxes):
        reg, marks, score = _batched(nets, "onet", data)
        keep = score[:, 1] > thresholds[2]
        marks = marks[keep]
        boxes = np.concatenate((boxes[keep, :4], score[keep, 1:2]), axis=1)
        inds, reg = inds[keep], reg[keep]
        wi = boxes[:, 2:3] - boxes[:, 0:1] + 1
        hi = boxes[:, 3:4] - boxes[:, 1:2] + 1
        px = wi * marks[:, :5] + boxes[:, 0:1] - 1
        py = hi * marks[:, 5:10] + boxes[:, 1:2] - 1
        points = np.stack((px, py), axis=2)
        boxes = _regress(boxes, reg)
        pick = nms_min(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds, points = boxes[pick], inds[pick], points[pick]

    return [(boxes[inds == b], points[inds == b]) for b in range(batch)]
