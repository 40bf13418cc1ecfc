"""The processes that benchmarks.peers times: face_recognition, the seed's stock loop, facegallery's stages.

Each worker is a fresh ``python -m benchmarks.peer_workers WORKER LIST OUT`` process: it reads the photo paths
(one ``person<TAB>path`` a line) from LIST, does its job, and writes a JSON report to OUT: per-stage seconds
(decode, detection, embedding = landmarks + chip + descriptor) measured inside the process, and what it answered.
Module-level imports are the standard library only, so a worker's start-up is what its own library costs.

- ``fr-enroll`` / ``fr-identify``: face_recognition (ageitgey) as its README teaches: ``load_image_file``,
  ``face_locations`` (HOG, one upsample), the largest location, ``face_encodings`` (5-point landmarks, one jitter).
  Enroll saves the encodings; identify names each query by the nearest enrolled encoding within its 0.6 tolerance.
- ``stock-enroll``: the seed's per-photo loop with dlib's model: decode, MTCNN (facenet-pytorch defaults, largest
  face), dlib's 5-point chip, the same K augmented copies as facegallery's enrollment, then one
  ``compute_face_descriptor`` per crop (batch 1, dlib-bin). It keeps vectors in a list: no database, no index.
- ``fg-enroll-stages`` / ``fg-identify-stages``: facegallery's own detection and embedding stages with the dlib
  embedder (default engine), the way enroll (batched detection per chunk, batched embedding) and identify (chunks of
  ``identify.CHUNK`` photos, every confident face, ``identify.chip_vectors``) call them; models are warmed on the first
  photo before timing.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

# face_recognition_models' functions -> the file each returns
FR_MODEL_FILES = {
    "pose_predictor_model_location": "shape_predictor_68_face_landmarks.dat",
    "pose_predictor_five_point_model_location": "shape_predictor_5_face_landmarks.dat",
    "face_recognition_model_location": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn_face_detector_model_location": "mmod_human_face_detector.dat",
}
FR_TOLERANCE = 0.6  # face_recognition's default distance tolerance
CHUNK = 16  # facegallery enrollment's chunk size on a CPU (gallery.enroll.enroll.CHUNK)


def import_face_recognition():
    """``import face_recognition``, working around face_recognition_models 0.3.0's ``import pkg_resources``.

    Recent setuptools no longer ships pkg_resources, so the models package fails to import and face_recognition
    prints an install hint and quits. Here only: the package is then stood in for by a module exposing the same
    four ``*_location()`` functions over the package's own files (found without running its ``__init__``).
    """
    try:
        import face_recognition_models  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("face_recognition_models")
        for function, filename in FR_MODEL_FILES.items():
            setattr(stand_in, function, lambda path=model_file(filename): path)
        sys.modules["face_recognition_models"] = stand_in
    import face_recognition

    return face_recognition


def model_file(filename: str) -> str:
    """A file of the face_recognition_models package, found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face_recognition_models is not installed: pip install face_recognition_models")
    return str(Path(list(spec.submodule_search_locations)[0]) / "models" / filename)


def read_list(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in path.read_text().splitlines() if line]


class Stages:
    """Seconds spent per stage, accumulated."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"decode": 0.0, "detect": 0.0, "embed": 0.0}
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self, stage: str) -> None:
        self.seconds[stage] += time.perf_counter() - self._t


def _fr_largest_encodings(fr, photos: list[tuple[str, str]], stages: Stages):
    import numpy as np

    names, vectors, missed = [], [], []
    for person, path in photos:
        stages.start()
        img = fr.load_image_file(path)
        stages.stop("decode")
        stages.start()
        locations = fr.face_locations(img)  # HOG, number_of_times_to_upsample=1
        stages.stop("detect")
        if not locations:
            missed.append(path)
            continue
        largest = max(locations, key=lambda t: (t[2] - t[0]) * (t[1] - t[3]))  # (top, right, bottom, left)
        stages.start()
        vectors.append(fr.face_encodings(img, [largest])[0])
        stages.stop("embed")
        names.append(person)
    return names, np.array(vectors, dtype=np.float64).reshape(-1, 128), missed


def fr_enroll(photos: list[tuple[str, str]], out: Path, store: Path) -> dict:
    import numpy as np

    fr = import_face_recognition()
    stages = Stages()
    names, vectors, missed = _fr_largest_encodings(fr, photos, stages)
    np.savez(store, names=np.array(names), vectors=vectors)
    return {"stages": stages.seconds, "enrolled": len(names), "no_face": missed}


def fr_identify(photos: list[tuple[str, str]], out: Path, store: Path) -> dict:
    import numpy as np

    fr = import_face_recognition()
    known = np.load(store)
    stages = Stages()
    answers = []
    for person, path in photos:
        names, vectors, missed = _fr_largest_encodings(fr, [(person, path)], stages)
        if missed:
            answers.append({"path": path, "truth": person, "nearest": None, "named": None})
            continue
        distances = fr.face_distance(known["vectors"], vectors[0])
        best = int(np.argmin(distances))
        nearest = str(known["names"][best])
        answers.append({"path": path, "truth": person, "nearest": nearest,
                        "named": nearest if distances[best] <= FR_TOLERANCE else None})
    return {"stages": stages.seconds, "answers": answers}


def stock_enroll(photos: list[tuple[str, str]], augment: int) -> dict:
    import dlib
    import numpy as np
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    from indexer.augment import aug_seed
    from indexer.augment import augment as augment_crop

    mtcnn = MTCNN(image_size=160, margin=0)  # the tutorial's detector: defaults, largest face
    shapes = dlib.shape_predictor(model_file(FR_MODEL_FILES["pose_predictor_five_point_model_location"]))
    recognizer = dlib.face_recognition_model_v1(model_file(FR_MODEL_FILES["face_recognition_model_location"]))
    stages = Stages()
    vectors = []
    for person, path in photos:
        stages.start()
        img = Image.open(path).convert("RGB")
        stages.stop("decode")
        stages.start()
        with torch.no_grad():
            boxes, _ = mtcnn.detect(img)
        stages.stop("detect")
        if boxes is None:
            continue
        stages.start()
        x1, y1, x2, y2 = (int(round(v)) for v in max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])))
        rgb = np.asarray(img)
        chip = Image.fromarray(dlib.get_face_chip(rgb, shapes(rgb, dlib.rectangle(x1, y1, x2, y2)), 150, 0.25))
        for copy in [chip] + augment_crop(chip, augment, aug_seed(0, path)):
            vectors.append(np.asarray(recognizer.compute_face_descriptor(np.asarray(copy))))
        stages.stop("embed")
    return {"stages": stages.seconds, "vectors": len(vectors), "augment": augment}


def _facegallery(home: Path):
    from gallery.config import Settings
    from gallery.store import Gallery

    return Gallery(Settings(home=home, progress=False))


def fg_enroll_stages(photos: list[tuple[str, str]], home: Path) -> dict:
    from indexer.images import load_image

    gallery = _facegallery(home)
    detector, embedder = gallery.detector, gallery.embedder("dlib")
    embedder.crop(load_image(Path(photos[0][1])), detector.detect(load_image(Path(photos[0][1])))[0])  # warm
    stages = Stages()
    faces = 0
    for start in range(0, len(photos), CHUNK):
        stages.start()
        images = [load_image(Path(path)) for _, path in photos[start:start + CHUNK]]
        stages.stop("decode")
        stages.start()
        found = detector.detect_batch(images)
        stages.stop("detect")
        stages.start()
        crops = [embedder.crop(img, sure[0]) for img, f in zip(images, found) if (sure := gallery.confident(f))]
        embedder.embed_crops(crops, batch_size=gallery.settings.batch_size)
        stages.stop("embed")
        faces += len(crops)
    gallery.close()
    return {"stages": stages.seconds, "faces": faces, "engine": embedder.engine}


def fg_identify_stages(photos: list[tuple[str, str]], home: Path) -> dict:
    from gallery.recognize.identify import CHUNK as ID_CHUNK
    from gallery.recognize.identify import chip_vectors  # identify's own query vectors (crop, flip average)
    from indexer.images import load_image

    gallery = _facegallery(home)
    detector, embedder = gallery.detector, gallery.embedder("dlib")
    embedder.crop(load_image(Path(photos[0][1])), detector.detect(load_image(Path(photos[0][1])))[0])  # warm
    stages = Stages()
    faces = 0
    for start in range(0, len(photos), ID_CHUNK):  # as identify goes: chunks, every confident face
        stages.start()
        images = [load_image(Path(path)) for _, path in photos[start:start + ID_CHUNK]]
        stages.stop("decode")
        stages.start()
        found = [gallery.confident(f) for f in detector.detect_batch(images)]
        stages.stop("detect")
        stages.start()
        crops = [embedder.crop(img, f) for img, fs in zip(images, found) for f in fs]
        chip_vectors(embedder, crops, gallery.settings.batch_size)
        stages.stop("embed")
        faces += len(crops)
    gallery.close()
    return {"stages": stages.seconds, "faces": faces, "engine": embedder.engine}


def main(argv: list[str]) -> None:
    worker, listing, out = argv[0], Path(argv[1]), Path(argv[2])
    extra = argv[3] if len(argv) > 3 else ""
    started = time.perf_counter()
    photos = read_list(listing)
    if worker == "fr-enroll":
        report = fr_enroll(photos, out, Path(extra))
    elif worker == "fr-identify":
        report = fr_identify(photos, out, Path(extra))
    elif worker == "stock-enroll":
        report = stock_enroll(photos, int(extra or 0))
    elif worker == "fg-enroll-stages":
        report = fg_enroll_stages(photos, Path(extra))
    elif worker == "fg-identify-stages":
        report = fg_identify_stages(photos, Path(extra))
    else:
        raise SystemExit(f"unknown worker {worker!r}")
    report["in_process_s"] = time.perf_counter() - started
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
