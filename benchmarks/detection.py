"""MTCNN detection: time per photo and recall by photo size, memory format, batching and pyramid settings.

    python -m benchmarks.detection --data-dir /path/to/data --threads 1 --out detection.md   # ~3-5 min, 2 cores

Photos: LFW deep-funneled (250x250, one large face and sometimes small background faces), five_celebrity train/
and val/ (web photos of 0.02-0.09 MP, some with several people), and facenet-pytorch's four full test photos
(1.8-4 MP) plus its multiface.jpg (0.76 MP). The detector is ``indexer.detect.Detector``: large photos are shrunk
to ``max_side`` (1600) before MTCNN sees them.

Variants, timed interleaved (benchmarks/common.py), median of rounds:

- engine: the CPU default, ``onnx`` (the cascade in numpy, the nets in ONNX Runtime from stored graphs; no torch)
  vs the ``torch`` engine, one photo at a time, on LFW and on five_celebrity: ms/photo, same faces, max box diff;
- memory format (torch engine): facenet-pytorch's P/R/O-nets as shipped (NCHW weights) vs ``channels_last`` weights, which the
  detector now uses. On this torch build the CPU's NCHW max-pool is 7-30x slower than the channels-last one on
  MTCNN's small maps; the boxes must agree within float rounding (max abs diff reported, same faces);
- one photo at a time (``detect``, what identify does) vs ``detect_batch`` (what enroll does, per chunk);
- pyramid: ``min_face_size`` (the first scale is 12 / min_face_size) and ``factor`` (scale step) against the
  default (20, 0.709). Recall is measured against the default's confident faces (prob >= 0.9) on five_celebrity:
  a default face counts as found when the variant has a confident face with IoU >= 0.5. There is no hand-made
  ground truth: "recall" here is "loses none of what the default finds", and photos with no face are counted;
- context: dlib's HOG detector (``get_frontal_face_detector``, one upsample: face_recognition's default) and its
  CNN (mmod) detector, time per photo and the share of MTCNN's confident faces they find.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    Figure,
    command_line,
    default_data_dir,
    interleaved,
    lfw_photos,
    loadavg,
    machine,
    median,
    paired_ratio,
    set_torch_threads,
)
from benchmarks.report import markdown_block, text_table
from indexer.detect import DetectedFace, Detector, DetectorConfig
from indexer.detect import box_iou as iou
from indexer.images import load_image

logger = logging.getLogger(__name__)

SECTION = "detection"
PYRAMIDS = ((20, 0.709), (20, 0.6), (30, 0.709), (40, 0.709), (40, 0.6))  # (min_face_size, factor); first = default
MIN_PROB = 0.9
FULL_PHOTOS = ("test_images/angelina_jolie/1.jpg", "test_images/kate_siegel/1.jpg", "test_images/paul_rudd/1.jpg",
               "test_images/shea_whigham/1.jpg", "multiface.jpg")


def detector(min_face_size: int = 20, factor: float = 0.709, channels_last: bool = True,
             max_side: int = 1600, engine: str = "torch") -> Detector:
    """A built detector; ``channels_last=False`` puts facenet-pytorch's nets back in their shipped NCHW layout."""
    det = Detector(DetectorConfig(min_face_size=min_face_size, factor=factor, min_prob=MIN_PROB, max_side=max_side,
                                  engine=engine))
    mtcnn = det._model()
    if det.engine != "torch":
        return det
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet):
        net.to(memory_format=fmt)
    return det


def recall(reference: list[list[DetectedFace]], found: list[list]) -> tuple[int, int, int]:
    """(reference faces found, reference faces, photos where the variant finds no face but the reference does)."""
    hit = total = empty = 0
    for ref, got in zip(reference, found):
        total += len(ref)
        hit += sum(any(iou(r.box, g) >= 0.5 for g in got) for r in ref)
        empty += bool(ref) and not got
    return hit, total, empty


def boxes(faces: list[DetectedFace]) -> list[tuple]:
    return [f.box for f in faces]


def per_photo_ms(seconds: list[float], count: int) -> float:
    return median(seconds) / count * 1e3


def engine_section(sets: dict[str, list], rounds: int) -> tuple[list[Figure], dict]:
    """The onnx engine (CPU default) against the torch engine, one photo at a time."""
    torch_det, onnx_det = detector(), detector(engine="onnx")
    figures, details = [], {}
    for name in ("LFW 250px", "five_celebrity val", "full photos 0.8-4 MP"):
        imgs = sets[name]
        a = [torch_det.detect(img) for img in imgs]
        b = [onnx_det.detect(img) for img in imgs]
        same = all(len(x) == len(y) for x, y in zip(a, b))
        diff = max((abs(p - q) for x, y in zip(a, b) for f, g in zip(x, y) for p, q in zip(f.box, g.box)),
                   default=0.0)
        times = interleaved({"torch": lambda i=imgs: [torch_det.detect(x) for x in i],
                             "onnx": lambda i=imgs: [onnx_det.detect(x) for x in i]}, rounds)
        n = len(imgs)
        figures.append(Figure(SECTION, f"{name}, one photo at a time: onnx engine vs torch engine (x)",
                              paired_ratio(times["torch"], times["onnx"]),
                              f"{per_photo_ms(times['onnx'], n):.1f} vs {per_photo_ms(times['torch'], n):.1f} "
                              f"ms/photo; same face count on every photo: {same}; max box diff {diff:.1e} px"))
        details[name] = {"max_box_diff_px": diff, "same_faces": same,
                         "ms_per_photo": {k: per_photo_ms(v, n) for k, v in times.items()}}
    return figures, details


def memory_format_section(lfw: list, rounds: int) -> tuple[list[Figure], dict]:
    stock, fast = detector(channels_last=False), detector()
    a = [stock.detect(img) for img in lfw]
    b = [fast.detect(img) for img in lfw]
    same = all(len(x) == len(y) for x, y in zip(a, b))
    diff = max((abs(p - q) for x, y in zip(a, b) for f, g in zip(x, y) for p, q in zip(f.box, g.box)), default=0.0)
    times = interleaved({"nchw": lambda: [stock.detect(i) for i in lfw],
                         "channels_last": lambda: [fast.detect(i) for i in lfw]}, rounds)
    n = len(lfw)
    fig = Figure(SECTION, "LFW 250 px, one photo at a time: channels_last nets vs facenet-pytorch's NCHW (x)",
                 paired_ratio(times["nchw"], times["channels_last"]),
                 f"{per_photo_ms(times['channels_last'], n):.1f} vs {per_photo_ms(times['nchw'], n):.1f} ms/photo; "
                 f"same face count on every photo: {same}; max box diff {diff:.1e} px")
    return [fig], {"max_box_diff_px": diff, "same_faces": same,
                   "ms_per_photo": {k: per_photo_ms(v, n) for k, v in times.items()}}


def batching_section(lfw: list, rounds: int) -> tuple[list[Figure], dict]:
    det = detector()
    chunks = [lfw[i:i + 16] for i in range(0, len(lfw), 16)]  # enrollment's chunk on a CPU
    times = interleaved({"one": lambda: [det.detect(i) for i in lfw],
                         "batch": lambda: [det.detect_batch(c) for c in chunks]}, rounds)
    n = len(lfw)
    fig = Figure(SECTION, "LFW 250 px: detect_batch (chunks of 16) vs one photo at a time (x)",
                 paired_ratio(times["one"], times["batch"]),
                 f"{per_photo_ms(times['batch'], n):.1f} vs {per_photo_ms(times['one'], n):.1f} ms/photo")
    return [fig], {"ms_per_photo": {k: per_photo_ms(v, n) for k, v in times.items()}}


def pyramid_section(sets: dict[str, list], rounds: int) -> tuple[list[Figure], list[dict]]:
    """Every pyramid setting on every photo set: ms/photo (interleaved) and recall against the default."""
    dets = {p: detector(*p) for p in PYRAMIDS}
    rows, figures = [], []
    for name, imgs in sets.items():
        found = {p: [d.detect(i) for i in imgs] for p, d in dets.items()}
        times = interleaved({p: (lambda d=d: [d.detect(i) for i in imgs]) for p, d in dets.items()}, rounds)
        default = PYRAMIDS[0]
        for p in PYRAMIDS:
            hit, total, empty = recall(found[default], [boxes(f) for f in found[p]])
            rows.append({"set": name, "photos": len(imgs), "min_face_size": p[0], "factor": p[1],
                         "ms_per_photo": round(per_photo_ms(times[p], len(imgs)), 1),
                         "speedup": round(paired_ratio(times[default], times[p]), 2),
                         "faces": sum(len(f) for f in found[p]), "recall_vs_default": f"{hit}/{total}",
                         "photos_emptied": empty})
    return figures, rows


def max_side_section(imgs: list, rounds: int) -> list[dict]:
    """Large photos: the side MTCNN sees (``max_side``, default 1600) vs time and recall against the default."""
    sides = (1600, 1200, 1024, 800)
    dets = {side: detector(max_side=side) for side in sides}
    found = {side: [d.detect(i) for i in imgs] for side, d in dets.items()}
    times = interleaved({side: (lambda d=d: [d.detect(i) for i in imgs]) for side, d in dets.items()}, rounds)
    rows = []
    for side in sides:
        hit, total, empty = recall(found[sides[0]], [boxes(f) for f in found[side]])
        rows.append({"max_side": side, "photos": len(imgs),
                     "ms_per_photo": round(per_photo_ms(times[side], len(imgs)), 1),
                     "speedup": round(paired_ratio(times[sides[0]], times[side]), 2),
                     "recall_vs_1600": f"{hit}/{total}", "photos_emptied": empty})
    return rows


def dlib_section(sets: dict[str, list], reference: dict[str, list], cnn_photos: int) -> list[dict]:
    """dlib's HOG (and CNN on a few photos) for context: ms/photo and share of MTCNN's faces found."""
    import dlib

    from benchmarks.peer_workers import model_file

    hog = dlib.get_frontal_face_detector()
    cnn = dlib.cnn_face_detection_model_v1(model_file("mmod_human_face_detector.dat"))
    rows = []
    for name, imgs in sets.items():
        arrays = [np.asarray(i) for i in imgs]
        for label, run, subset in (("dlib HOG, upsample 1", lambda a: hog(a, 1), arrays),
                                   ("dlib CNN, upsample 1", lambda a: [d.rect for d in cnn(a, 1)],
                                    arrays[:cnn_photos])):
            if not subset or (label.startswith("dlib CNN") and max(a.shape[0] * a.shape[1] for a in subset) > 1e6):
                continue
            t0 = time.perf_counter()
            found = [[(r.left(), r.top(), r.right(), r.bottom()) for r in run(a)] for a in subset]
            ms = (time.perf_counter() - t0) / len(subset) * 1e3
            hit, total, empty = recall(reference[name][:len(subset)], found)
            rows.append({"set": name, "photos": len(subset), "detector": label, "ms_per_photo": round(ms, 1),
                         "recall_vs_mtcnn": f"{hit}/{total}", "photos_emptied": empty})
    return rows


def format_rows(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    table = [keys] + [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in table)


def photo_sets(data: Path, lfw_count: int) -> dict[str, list]:
    five = data / "five_celebrity"
    full = data / "facenet_pytorch_test_images"
    return {
        "LFW 250px": [load_image(p) for p in lfw_photos(data, lfw_count, per_person=1)],
        "five_celebrity train": [load_image(p) for p in sorted((five / "train").rglob("*.jpg"))],
        "five_celebrity val": [load_image(p) for p in sorted((five / "val").rglob("*.jpg"))],
        "full photos 0.8-4 MP": [load_image(full / p) for p in FULL_PHOTOS if (full / p).exists()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: all cores unless loaded)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lfw", type=int, default=40, help="LFW photos (one per person)")
    parser.add_argument("--cnn-photos", type=int, default=5, help="photos per set for dlib's slow CNN detector")
    parser.add_argument("--out", type=Path, help="write a markdown report here")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    load_start, started = loadavg(), time.time()
    threads = set_torch_threads(args.threads)
    sets = photo_sets(args.data_dir, args.lfw)
    with torch.inference_mode():
        for d in (detector(), detector(channels_last=False), detector(engine="onnx")):
            d.detect(sets["LFW 250px"][0])  # first-call set-up (and the graphs' export) is not what is measured
        figures, details = [], {}
        figs, details["engine_section"] = engine_section(sets, args.rounds)
        figures += figs
        for section in (memory_format_section, batching_section):
            figs, details[section.__name__] = section(sets["LFW 250px"], args.rounds)
            figures += figs
        _, pyramid_rows = pyramid_section(sets, args.rounds)
        side_rows = max_side_section(sets["full photos 0.8-4 MP"], args.rounds)
        default = detector()
        reference = {name: [default.detect(i) for i in imgs] for name, imgs in sets.items()}
    context_rows = dlib_section(sets, reference, args.cnn_photos)
    header = {**machine(), "torch threads": str(threads), "load average 1/5/15 min, start": load_start,
              "load average 1/5/15 min, end": loadavg(),
              "command": command_line("benchmarks.detection", argv if argv is not None else sys.argv[1:]),
              "duration": f"{(time.time() - started) / 60:.1f} min", "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    tables = {"Pyramid settings (recall against the default's confident faces)": format_rows(pyramid_rows),
              "Large photos: the side MTCNN sees (Detector max_side)": format_rows(side_rows),
              "dlib detectors for context (recall against MTCNN's confident faces)": format_rows(context_rows)}
    print("\n".join(f"# {k}: {v}" for k, v in header.items()))
    print(text_table(figures))
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    if args.out is not None:
        args.out.write_text("# MTCNN detection\n\n" + markdown_block(figures, header, tables) + "\n")


if __name__ == "__main__":
    main()
