"""MTCNN (Zhang et al. 2016) in plain PyTorch: facenet-pytorch's three nets and cascade, without torchvision.

The weights are facenet-pytorch's own (``facenet_pytorch/data/{p,r,o}net.pt``, found with ``importlib`` without
importing the package, whose ``__init__`` imports torchvision: about 1.2 s of a cold one-photo ``identify``). The
cascade is the one ``facenet_pytorch.models.utils.detect_face`` runs: an image pyramid through P-net, NMS per
scale and per image, R-net on 24x24 resamplings of the candidates, O-net on 48x48 ones with landmarks, and a final
"Min" NMS. Only torchvision's ``batched_nms`` is replaced, by :func:`nms` below (greedy, IoU over boxes without the
+1 pixel, suppressing above the threshold, stable score order), and the per-candidate resampling of the R-net and
O-net stages is batched per crop size. tests/test_mtcnn.py checks boxes, probabilities and landmarks against
facenet-pytorch's MTCNN on real photos.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.functional import interpolate

from indexer import mtcnn_cpu as cpu
from indexer.mtcnn_cpu import nms_min, weights_dir  # noqa: F401  (weights_dir: re-exported)

log = logging.getLogger(__name__)


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x):
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x)))))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


class Nets(nn.Module):
    """The three nets with facenet-pytorch's weights, in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        folder = weights_dir()
        for name in ("pnet", "rnet", "onet"):
            state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
            getattr(self, name).load_state_dict(state)
        self.eval()


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """:func:`indexer.mtcnn_cpu.nms` (torchvision's ``nms``, in numpy) on tensors."""
    keep = cpu.nms(boxes.detach().cpu().numpy(), scores.detach().cpu().numpy(), threshold)
    return torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """:func:`nms` within each group (image); kept indices in descending score order overall."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    keep = torch.cat([torch.nonzero(groups == g).flatten()[nms(boxes[groups == g], scores[groups == g], threshold)]
                      for g in torch.unique(groups)])
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def _candidates(reg, probs, scale: float, threshold: float):
    """P-net's output at one scale -> (boxes (n, 9): x1 y1 x2 y2 score reg..., image index per box)."""
    reg = reg.permute(1, 0, 2, 3)
    mask = probs >= threshold
    where = mask.nonzero()
    score = probs[mask]
    reg = reg[:, mask].permute(1, 0)
    bb = where[:, 1:].type(reg.dtype).flip(1)
    q1 = ((2 * bb + 1) / scale).floor()
    q2 = ((2 * bb + 12) / scale).floor()
    return torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1), where[:, 0]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.max(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side.repeat(2, 1).permute(1, 0)
    return boxes


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                                boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h]).permute(1, 0)
    return boxes


def _clip(boxes: torch.Tensor, w: int, h: int):
    b = boxes.trunc().int().cpu().numpy()
    x, y, ex, ey = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h
    return y, ey, x, ex


def _resampled(imgs: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, size: int, w: int, h: int):
    """Each candidate's crop resampled to ``size`` x ``size`` ("area"), normalised; crops of one pixel size are
    resampled together. Returns (crops, which candidates have one)."""
    y, ey, x, ex = _clip(boxes, w, h)
    valid = [k for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x[k] - 1]
    out = torch.empty((len(valid), imgs.shape[1], size, size), dtype=imgs.dtype, device=imgs.device)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for j, k in enumerate(valid):
        by_shape.setdefault((int(ey[k] - y[k] + 1), int(ex[k] - x[k] + 1)), []).append(j)
    inds = image_inds.cpu().numpy()
    for rows in by_shape.values():
        crops = torch.stack([imgs[inds[valid[j]], :, y[valid[j]] - 1:ey[valid[j]], x[valid[j]] - 1:ex[valid[j]]]
                             for j in rows])
        out[rows] = interpolate(crops, size=(size, size), mode="area")
    return (out - 127.5) * 0.0078125, valid


def _batched(net, data: torch.Tensor, batch: int = 512):
    outs = [net(data[i:i + batch]) for i in range(0, len(data), batch)]
    return tuple(torch.cat(v, dim=0) for v in zip(*outs))


def detect_faces(nets: Nets, imgs: torch.Tensor, min_size: int, thresholds, factor: float):
    """Equal-size images ``(B, H, W, 3)`` uint8 -> per image (boxes (n, 5): x1 y1 x2 y2 prob, points (n, 5, 2))."""
    dtype = next(nets.pnet.parameters()).dtype
    imgs = imgs.permute(0, 3, 1, 2).type(dtype)
    batch = len(imgs)
    h, w = imgs.shape[2:4]
    boxes_all, inds_all = [], []
    for scale in cpu.pyramid_scales(h, w, min_size, factor):
        data = interpolate(imgs, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        reg, probs = nets.pnet((data - 127.5) * 0.0078125)
        boxes, inds = _candidates(reg, probs[:, 1], scale, thresholds[0])
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.5)
        boxes_all.append(boxes[pick])
        inds_all.append(inds[pick])
    if not boxes_all:  # no pyramid level: the image is smaller than min_size
        boxes_all = [torch.zeros((0, 9), dtype=imgs.dtype, device=imgs.device)]
        inds_all = [torch.zeros(0, dtype=torch.int64, device=imgs.device)]
    boxes, inds = torch.cat(boxes_all), torch.cat(inds_all)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
    boxes, inds = boxes[pick], inds[pick]
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                         boxes[:, 4]]).permute(1, 0)
    boxes = _square(boxes)

    if len(boxes):
        data, valid = _resampled(imgs, boxes, inds, 24, w, h)
        boxes, inds = boxes[valid], inds[valid]
    if len(boxes):
        reg, score = _batched(nets.rnet, data)
        keep = score[:, 1] > thresholds[1]
        boxes = torch.cat((boxes[keep, :4], score[keep, 1].unsqueeze(1)), dim=1)
        inds, reg = inds[keep], reg[keep]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes = _square(_regress(boxes[pick], reg[pick]))
        inds = inds[pick]

    points = torch.zeros(0, 5, 2, device=imgs.device)
    if len(boxes):
        data, valid = _resampled(imgs, boxes, inds, 48, w, h)
        boxes, inds = boxes[valid], inds[valid]
    if len(boxes):
        reg, marks, score = _batched(nets.onet, data)
        keep = score[:, 1] > thresholds[2]
        marks = marks[keep]
        boxes = torch.cat((boxes[keep, :4], score[keep, 1].unsqueeze(1)), dim=1)
        inds, reg = inds[keep], reg[keep]
        wi = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        hi = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        px = wi * marks[:, :5] + boxes[:, 0:1] - 1
        py = hi * marks[:, 5:10] + boxes[:, 1:2] - 1
        points = torch.stack((px, py), dim=2)
        boxes = _regress(boxes, reg)
        pick = torch.as_tensor(nms_min(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(), inds.cpu().numpy(),
                                       0.7), device=boxes.device)
        boxes, inds, points = boxes[pick], inds[pick], points[pick]

    boxes, points, inds = boxes.cpu().numpy(), points.cpu().numpy(), inds.cpu().numpy()
    return [(boxes[inds == b], points[inds == b]) for b in range(batch)]
