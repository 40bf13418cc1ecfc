"""Reduced-precision fast paths of the dlib embedder are admitted only by measured LFW accuracy (issue 12).

- the admission check refuses a broken quantiser: an int8 graph quantised from ranges shrunk 20x (activations
  saturate), run on real LFW chips, falls far outside 0.1 point of fp32; written as a record, ``--fast`` then
  runs fp32. The check runs on a 300-pair subset of pairs.txt (30 per fold) for this test only; the admission
  itself (benchmarks/dlib_precision.py) uses all 6000 pairs;
- ``--fast`` picks a path only from a record for exactly these weights, precision, engine and CPU ISA that says
  admitted and faster; a missing file, another sha256, another quantised graph, a refused or slower record, or a
  CPU without native bf16 all run fp32, with the reason logged.

Chips: a fixed box (the median LFW face box) through dlib's shape predictor, as tests/test_dlib_torch.py does, so
no detector runs here. Calibration chips come from LFW View 1 training people who are not in pairs.txt.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.embedders import lowp, onnx_cpu, precision
from indexer.embedders.precision import BF16, INT8, Admission

LFW_BOX = (77.0, 89.0, 181.0, 185.0)
PER_FOLD = 15  # same and different pairs taken from each of the 10 folds: 300 pairs


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("dlib")
    from indexer.embedders.dlib_model import DlibEmbedder, models_dir

    if models_dir() is None:
        pytest.skip("face_recognition_models is not installed")
    return DlibEmbedder.create(engine="torch", device="cpu")


def _chips(embedder, root: Path, images: list[str]) -> torch.Tensor:
    from indexer.detect import DetectedFace

    face = DetectedFace(box=LFW_BOX, prob=1.0, landmarks=None)
    crops = []
    for image in images:
        with Image.open(root / image) as img:
            crops.append(embedder.crop(img.convert("RGB"), face))
    return torch.from_numpy(embedder.preprocess(crops)).float()


@pytest.fixture(scope="module")
def lfw(lfw_dir, embedder, one_torch_thread_module):
    """(pairs subset, its images, their chips, fp32 descriptors, fp32 ONNX bytes, calibrated int8 ranges)."""
    from gallery.benchmark.data import Pairs, read_pairs

    root = lfw_dir / "lfw-deepfunneled"
    full = read_pairs(lfw_dir / "pairs.txt", root)
    keep = np.concatenate([np.flatnonzero((full.fold == f) & (full.same == s))[:PER_FOLD]
                           for f in range(10) for s in (True, False)])
    pairs = Pairs([full.left[i] for i in keep], [full.right[i] for i in keep], full.same[keep], full.fold[keep])
    excluded = {image.split("/")[0] for image in full.images}
    rows = [ln.split() for ln in (lfw_dir / "peopleDevTrain.txt").read_text().splitlines()[1:] if ln.strip()]
    calibration = [f"{name}/{name}_0001.jpg" for name, _ in rows if name not in excluded][:32]
    model = embedder._torch_net()
    chips = _chips(embedder, root, pairs.images)
    with torch.inference_mode():
        reference = model(chips).numpy()
    fp32 = onnx_cpu.export_onnx(model, chips[:2])
    cal = _chips(embedder, root, calibration).numpy()
    int8, ranges = lowp.calibrate_int8(fp32, [cal[:16], cal[16:]])
    return {"pairs": pairs, "images": pairs.images, "chips": chips, "reference": reference, "fp32": fp32,
            "ranges": ranges, "graph_sha256": lowp.sha256(int8)}


def _record(check, *, sha: str, graph_sha256: str, ranges: dict, speedup: float = 2.0) -> Admission:
    return Admission(weights_sha256=sha, precision=INT8, engine=precision.INT8_ENGINE,
                     isa=precision.cpu_isa(INT8), admitted=check.admitted, accuracy_fp32=check.accuracy_fp32,
                     accuracy=check.accuracy, min_cosine=check.min_cosine, mean_cosine=check.mean_cosine,
                     pairs=check.pairs, speedup=speedup, graph_sha256=graph_sha256, calibration=ranges)


def _fast_load(monkeypatch, caplog, records_file: Path):
    """A fresh ``--fast`` dlib embedder loaded against ``records_file``: (embedder, its net, the log text)."""
    from indexer.embedders.dlib_model import DlibEmbedder

    monkeypatch.setenv(precision.ADMISSIONS_ENV, str(records_file))
    monkeypatch.setattr(precision, "_LOGGED", set())
    monkeypatch.delenv("FACEGALLERY_FAST_ENGINE", raising=False)
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="indexer.embedders.precision"):
        fast = DlibEmbedder.create(engine="torch", device="cpu", fast=True)
        net = fast.load().net
    return fast, net, caplog.text


@pytest.mark.numeric
@pytest.mark.data
def test_admission_check_refuses_a_broken_quantiser_and_fast_then_runs_fp32(lfw, embedder, tmp_path, monkeypatch,
                                                                            caplog):
    from gallery.benchmark.precision import admission_check

    broken_ranges = {k: [lo / 20, hi / 20] for k, (lo, hi) in lfw["ranges"].items()}
    broken = lowp.quantize_int8(lfw["fp32"], broken_ranges)
    candidate = onnx_cpu.session(broken, 1)(lfw["chips"]).numpy()
    check = admission_check(lfw["reference"], candidate, lfw["pairs"], lfw["images"])
    assert check.pairs == 300 and check.accuracy_fp32 > 95.0  # the subset is a fair one for dlib (99.4% on all)
    assert not check.admitted and check.delta_points < -1.0, check.to_dict()
    print("broken quantiser on the 300-pair subset:", check.to_dict())
    assert check.min_cosine < 0.99
    fp32_check = admission_check(lfw["reference"], lfw["reference"], lfw["pairs"], lfw["images"])
    assert fp32_check.admitted and fp32_check.delta_points == 0 and fp32_check.min_cosine > 0.999999
    assert fp32_check.changed == 0 and check.changed > 30

    # The refused record, even claiming a 2x speed-up, leaves --fast on fp32 ONNX Runtime.
    records = tmp_path / "admissions.json"
    precision.save_admission(_record(check, sha=embedder.weights.sha256, graph_sha256=lowp.sha256(broken),
                                     ranges=broken_ranges), records)
    fast, net, log = _fast_load(monkeypatch, caplog, records)
    assert fast.precision == "fp32" and "refused by its LFW check" in log
    got = fast.forward(lfw["chips"][:8].to(torch.uint8))
    cos = np.sum(got * lfw["reference"][:8], 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(lfw["reference"][:8],
                                                                                                  axis=1)
    assert cos.min() > 0.99999


@pytest.mark.numeric
@pytest.mark.data
def test_fast_uses_int8_only_with_an_admitted_record_for_exactly_these_weights(lfw, embedder, tmp_path,
                                                                               monkeypatch, caplog):
    # The record's numbers are stand-ins (the real ones come from benchmarks/dlib_precision.py); the key matters.
    passed = type("Check", (), {"admitted": True, "accuracy_fp32": 99.4, "accuracy": 99.38, "min_cosine": 0.999,
                                "mean_cosine": 0.9995, "pairs": 6000})()
    sha, graph = embedder.weights.sha256, lfw["graph_sha256"]
    records = tmp_path / "admissions.json"

    precision.save_admission(_record(passed, sha=sha, graph_sha256=graph, ranges=lfw["ranges"]), records)
    fast, net, log = _fast_load(monkeypatch, caplog, records)
    assert fast.precision == "int8" and isinstance(net, onnx_cpu.OrtModel) and "int8" in log and "admitted" in log
    got = fast.forward(lfw["chips"][:16].to(torch.uint8))
    ref = lfw["reference"][:16]
    assert (np.sum(got * ref, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)).min() > 0.99

    for name, record, reason in (
            ("other weights", _record(passed, sha="0" * 64, graph_sha256=graph, ranges=lfw["ranges"]),
             "never measured"),
            ("another graph", _record(passed, sha=sha, graph_sha256="f" * 64, ranges=lfw["ranges"]),
             "not the one measured")):
        other = tmp_path / f"{name}.json"
        precision.save_admission(record, other)
        fast, net, log = _fast_load(monkeypatch, caplog, other)
        assert fast.precision == "fp32" and isinstance(net, onnx_cpu.OrtModel) and reason in log, name


def test_decisions_follow_the_record_key_verdict_and_speed(monkeypatch):
    for name in (precision.PRECISION_ENV, "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni", "avx512_bf16"}))

    def record(p: str, **kw) -> Admission:
        base = dict(weights_sha256="a" * 64, precision=p, engine=precision.ENGINES[p], isa=precision.cpu_isa(p),
                    admitted=True, accuracy_fp32=99.4, accuracy=99.35, min_cosine=0.999, mean_cosine=0.9995,
                    pairs=6000, speedup=2.0)
        return Admission(**{**base, **kw})

    assert precision.choose("a" * 64, records=[]).precision is None
    assert precision.choose("a" * 64, records=[record(INT8)]).precision == INT8
    assert precision.choose("a" * 64, records=[record(INT8), record(BF16, speedup=3.0)]).precision == BF16
    assert precision.choose("b" * 64, records=[record(INT8)]).precision is None  # other weights
    refused = precision.choose("a" * 64, records=[record(INT8, admitted=False)])
    assert refused.precision is None and "refused by its LFW check" in refused.reason
    slow = precision.choose("a" * 64, records=[record(INT8, speedup=0.9)])
    assert slow.precision is None and "not faster" in slow.reason
    assert precision.choose("a" * 64, records=[record(INT8, speedup=None)]).precision is None
    other_isa = precision.choose("a" * 64, records=[record(INT8, isa="x86_64:avx2")])
    assert other_isa.precision is None and "never measured" in other_isa.reason
    assert precision.choose("a" * 64, records=[record(INT8, engine="onnxruntime-qoperator")]).precision is None
    # bf16 on a CPU without native bf16: not even a record for it would be used
    bf16 = record(BF16)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    no_bf16 = precision.choose("a" * 64, records=[bf16])
    assert no_bf16.precision is None and "no native bf16" in no_bf16.reason
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped below its bf16 kernels (the AVX2 test leg)
    assert precision.choose("a" * 64, records=[bf16]).precision is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert precision.choose("a" * 64, records=[bf16]).precision == BF16
    # on a GPU only bf16 is a candidate, keyed by its compute capability
    gpu = record(BF16, isa="cuda:sm_90")
    assert precision.choose("a" * 64, "cuda", (9, 0), records=[gpu, record(INT8)]).precision == BF16
    assert precision.choose("a" * 64, "cuda", (8, 0), records=[gpu]).precision is None
    # the user's opt-out wins over any record
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    assert precision.choose("a" * 64, "cuda", (9, 0), records=[gpu]).precision is None


def test_records_file_round_trip_and_bad_files(tmp_path, monkeypatch):
    path = tmp_path / "admissions.json"
    first = Admission("a" * 64, INT8, precision.INT8_ENGINE, "x86_64:avx2", True, 99.4, 99.35, 0.999, 0.9995, 6000,
                      2.0, "c" * 64, {"t": [0.0, 1.5]})
    precision.save_admission(first, path)
    precision.save_admission(Admission(**{**first.to_dict(), "admitted": False}), path)  # same key: replaced
    assert precision.load_admissions(path) == [Admission(**{**first.to_dict(), "admitted": False})]
    assert precision.load_admissions(tmp_path / "missing.json") == []
    path.write_text("{not json")
    monkeypatch.setattr(precision, "_LOGGED", set())
    assert precision.load_admissions(path) == []


def test_fast_uses_bf16_only_where_the_cpu_has_it(embedder, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    sha = embedder.weights.sha256
    records = tmp_path / "admissions.json"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    precision.save_admission(Admission(sha, BF16, precision.BF16_ENGINE, precision.cpu_isa(BF16), True, 99.4, 99.4,
                                       0.9999, 0.99998, 6000, 1.3), records)
    fast, net, log = _fast_load(monkeypatch, caplog, records)
    assert fast.precision == "bf16" and isinstance(net, lowp.Bf16Model)
    out = fast.forward(torch.randint(0, 256, (2, 3, 150, 150), dtype=torch.uint8))
    assert out.shape == (2, 128) and out.dtype == np.float32 and np.isfinite(out).all()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))  # the same record, no native bf16
    monkeypatch.setenv("FACEGALLERY_FAST_ENGINE", "torch")  # keep this load cheap: no ONNX export
    monkeypatch.setenv(precision.ADMISSIONS_ENV, str(records))
    from indexer.embedders.dlib_model import DlibEmbedder

    plain = DlibEmbedder.create(engine="torch", device="cpu", fast=True)
    assert not isinstance(plain.load().net, lowp.Bf16Model) and plain.precision == "fp32"


def test_shipped_records_are_complete_and_their_int8_graph_rebuilds(embedder):
    """The package's records: well-formed, measured on the full pairs.txt; an int8 one carries its ranges, and
    with the torch/onnxruntime versions it was measured with, those ranges rebuild exactly the measured graph."""
    from importlib.metadata import version

    records = precision.load_admissions(precision.ADMISSIONS_FILE)
    assert records, "indexer/embedders/precision_admissions.json holds no record"
    for r in records:
        assert r.engine == precision.ENGINES[r.precision] and r.pairs == 6000 and r.isa
        assert r.admitted == (abs(r.accuracy - r.accuracy_fp32) <= precision.TOLERANCE_POINTS + 1e-9)
    int8 = [r for r in records if r.precision == INT8 and r.weights_sha256 == embedder.weights.sha256]
    assert int8 and int8[0].calibration and int8[0].graph_sha256
    measured = int8[0].measured
    if (measured.get("torch"), measured.get("onnxruntime")) != (torch.__version__, version("onnxruntime")):
        pytest.skip("torch/onnxruntime differ from the versions the int8 record was measured with")
    example = torch.zeros(2, 3, 150, 150)
    fp32 = onnx_cpu.export_onnx(embedder._torch_net(), example)
    assert lowp.sha256(lowp.quantize_int8(fp32, int8[0].calibration)) == int8[0].graph_sha256
