"""Reduced-precision fast paths of the dlib embedder, each admitted or refused by LFW accuracy (issue 12).

    python -m benchmarks.precision_chips --data-dir DATA          # once: the chips, cached outside the project
    python -m benchmarks.dlib_precision --data-dir DATA --out BENCHMARKS.md --write-admissions

Candidates (indexer/embedders/lowp.py): **int8**, ONNX Runtime static quantisation (QDQ, u8 activations, s8
per-channel weights, MinMax ranges calibrated on chips of LFW View 1 training people who appear nowhere in
pairs.txt), and **bf16**, torch autocast in channels_last, only on a CPU with avx512_bf16 or AMX.

Accuracy: descriptors of every image of the full LFW ``pairs.txt`` (7701 chips, 6000 pairs) from the fp32 torch
engine (the default, the reference), fp32 ONNX Runtime (today's ``--fast``), and each candidate; the admission
check (gallery/benchmark/precision.py) compares LFW 10-fold accuracy with the reference's (within 0.1 point to be
admitted) and states min/mean cosine. A deliberately broken quantiser (every calibrated range shrunk 20x, so the
activations saturate) is run through the same check to show that it refuses.

Speed: faces/s of each variant's forward on the same real chips, interleaved with fp32 ONNX Runtime (round r runs
every variant once; a ratio is the median over rounds of the per-round ratio), at batch 16 and 64 and 1 and 2
threads (ONNX Runtime sessions are built per thread count). A candidate "pays" when it is faster than fp32 ONNX
Runtime in every configuration measured; the record keeps the smallest ratio.

``--write-admissions`` stores one record per candidate in indexer/embedders/precision_admissions.json, keyed by
the weights sha256, precision, engine and this CPU's ISA (indexer/embedders/precision.py); ``--fast`` then uses a
candidate on a CPU with the same ISA only when its record says admitted and pays.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import command_line, default_data_dir, interleaved, loadavg, machine, median, paired_ratio
from benchmarks.precision_chips import load_chips
from benchmarks.report import replace_block

logger = logging.getLogger(__name__)

BEGIN = "<!-- BEGIN benchmarks.dlib_precision output: generated, do not edit by hand -->"
END = "<!-- END benchmarks.dlib_precision output -->"
BROKEN_SHRINK = 20.0  # the broken quantiser's ranges are the real ones divided by this
EVAL_BATCH = 64


def as_pixels(chips: np.ndarray) -> torch.Tensor:
    """(N, 150, 150, 3) uint8 chips -> (N, 3, 150, 150) float pixels, as DlibEmbedder.preprocess + forward."""
    return torch.from_numpy(np.array(chips, dtype=np.uint8)).permute(0, 3, 1, 2).float()  # a writable copy


def describe(run, chips: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Raw descriptors of every chip, ``batch`` at a time."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(chips), batch):
            out.append(np.asarray(run(as_pixels(chips[start:start + batch]))))
    return np.concatenate(out).astype(np.float32)


def build_variants(calibration: np.ndarray, threads: tuple[int, ...]) -> tuple[dict, dict]:
    """{name: {threads: callable}} for fp32 torch, fp32 ONNX Runtime, int8, broken int8 and (where the CPU has
    native bf16) bf16; and the facts the records need (sha, ranges, graph sha)."""
    from indexer.embedders import lowp, onnx_cpu, precision
    from indexer.embedders.dlib_model import DlibEmbedder

    embedder = DlibEmbedder.create(engine="torch", device="cpu")
    model = embedder._torch_net()
    example = as_pixels(calibration[:2])
    fp32 = onnx_cpu.export_onnx(model, example)
    started = time.time()
    batches = (as_pixels(calibration[i:i + 32]).numpy() for i in range(0, len(calibration), 32))
    int8, ranges = lowp.calibrate_int8(fp32, batches)
    logger.info("int8 calibrated on %d chips in %.0f s (%d tensors)", len(calibration), time.time() - started,
                len(ranges))
    assert lowp.quantize_int8(fp32, ranges) == int8, "quantising from the stored ranges must rebuild the graph"
    broken = lowp.quantize_int8(fp32, {k: [lo / BROKEN_SHRINK, hi / BROKEN_SHRINK] for k, (lo, hi) in ranges.items()})
    variants = {"fp32 torch": {t: model for t in threads},
                "fp32 ONNX Runtime": {t: onnx_cpu.session(fp32, t) for t in threads},
                "int8": {t: onnx_cpu.session(int8, t) for t in threads},
                "int8, broken quantiser": {threads[0]: onnx_cpu.session(broken, threads[0])}}
    if precision.cpu_isa(precision.BF16) is not None:
        bf16 = lowp.Bf16Model(model)
        variants["bf16"] = {t: bf16 for t in threads}
    facts = {"weights_sha256": embedder.weights.sha256, "ranges": ranges, "graph_sha256": lowp.sha256(int8)}
    return variants, facts


def measure_speed(variants: dict, chips: np.ndarray, batches: tuple[int, ...], threads: tuple[int, ...],
                  rounds: int) -> dict[tuple[int, int], dict[str, tuple[float, float | None]]]:
    """{(threads, batch): {variant: (faces/s, ratio to fp32 ONNX Runtime)}}, interleaved per configuration."""
    results = {}
    for t in threads:
        torch.set_num_threads(t)
        for b in batches:
            x = as_pixels(chips[:b])
            fns = {name: (lambda run=by_t[t]: run(x)) for name, by_t in variants.items()
                   if t in by_t and name != "int8, broken quantiser"}
            with torch.inference_mode():
                times = interleaved(fns, rounds)
            base = times["fp32 ONNX Runtime"]
            results[(t, b)] = {name: (b / median(ts), paired_ratio(base, ts)) for name, ts in times.items()}
            logger.info("threads %d batch %d: %s", t, b, {k: f"{v[0]:.0f}/s {v[1]:.2f}x"
                                                          for k, v in results[(t, b)].items()})
    torch.set_num_threads(threads[0])
    return results


def check_accuracy(variants: dict, chips: np.ndarray, images: list[str], pairs, threads: int) -> dict:
    """{variant: PrecisionCheck} against the fp32 torch reference, on every pair."""
    from gallery.benchmark.precision import admission_check

    torch.set_num_threads(threads)
    descriptors = {}
    for name, by_t in variants.items():
        started = time.time()
        descriptors[name] = describe(by_t[threads], chips)
        logger.info("%s: %d descriptors in %.0f s", name, len(chips), time.time() - started)
    reference = descriptors["fp32 torch"]
    return {name: admission_check(reference, d, pairs, images) for name, d in descriptors.items()}


def records(checks: dict, speed: dict, facts: dict, header: dict) -> list:
    from indexer.embedders import precision

    out = []
    for name, p in (("int8", precision.INT8), ("bf16", precision.BF16)):
        if name not in checks:
            continue
        ratios = {f"threads {t} batch {b}": round(v[name][1], 3) for (t, b), v in speed.items()}
        extra = {"graph_sha256": facts["graph_sha256"], "calibration": facts["ranges"]} if p == precision.INT8 else {}
        c = checks[name]
        out.append(precision.Admission(
            weights_sha256=facts["weights_sha256"], precision=p, engine=precision.ENGINES[p],
            isa=precision.cpu_isa(p), admitted=c.admitted, accuracy_fp32=round(c.accuracy_fp32, 4),
            accuracy=round(c.accuracy, 4), min_cosine=round(c.min_cosine, 6), mean_cosine=round(c.mean_cosine, 6),
            pairs=c.pairs, speedup=min(ratios.values()) if ratios else None,
            measured={"changed_at_fp32_thresholds": c.changed, "speedup_vs_fp32_onnxruntime": ratios, "reference": "fp32 torch engine",
                      "calibration_chips": header.get("calibration chips"), **{k: header[k] for k in
                      ("date", "command", "cpu", "cpu_flags", "torch", "onnxruntime", "load average")}},
            **extra))
    return out


def report(checks: dict, speed: dict, header: dict, admissions: list) -> str:
    """The markdown block: header, accuracy table, speed table, decisions."""
    lines = [BEGIN, "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in header.items()]
    lines += ["", f"**Accuracy on the full LFW pairs.txt** (reference: fp32 torch engine; admitted when within "
              f"{next(iter(checks.values())).tolerance_points} point)", "",
              "| variant | LFW 10-fold accuracy % | vs fp32 (points) | pairs decided otherwise at fp32's thresholds "
              "| min cosine to fp32 | mean cosine | admitted |", "|---|---|---|---|---|---|---|"]
    for name, c in checks.items():
        verdict = "reference" if name == "fp32 torch" else ("yes" if c.admitted else "**REFUSED**")
        lines.append(f"| {name} | {c.accuracy:.2f} | {c.delta_points:+.2f} | {c.changed} of {c.pairs} | "
                     f"{c.min_cosine:.6f} | {c.mean_cosine:.6f} | {verdict} |")
    names = [n for n in next(iter(speed.values()))]
    lines += ["", "**Speed, faces/s (ratio to fp32 ONNX Runtime in the same rounds)**", "",
              "| threads | batch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for (t, b), row in speed.items():
        cells = [f"{row[n][0]:.0f} ({row[n][1]:.2f}x)" if n in row else "-" for n in names]
        lines.append(f"| {t} | {b} | " + " | ".join(cells) + " |")
    lines += ["", "**Decisions (indexer/embedders/precision.py, on a CPU with this ISA)**", ""]
    for a in admissions:
        state = "used by --fast" if a.admitted and a.pays else "not used: " + " and ".join(
            why for why, bad in (("refused by accuracy", not a.admitted),
                                 ("not faster than fp32 ONNX Runtime everywhere", not a.pays)) if bad)
        lines.append(f"- {a.precision} ({a.engine}, {a.isa}): {state}; smallest speed ratio {a.speedup:.2f}x.")
    lines += ["", END]
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    """Replace this benchmark's block of ``path`` (appended when absent); other blocks are left alone."""
    replace_block(path, block, BEGIN, END,
                  "## Reduced precision for the dlib embedder (issue 12, benchmarks.dlib_precision)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding lfw/")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calibration-chips", type=int, default=0, help="0: all of them (1118)")
    parser.add_argument("--out", type=Path, help="markdown file whose dlib_precision block is replaced")
    parser.add_argument("--write-admissions", action="store_true",
                        help="store the records in indexer/embedders/precision_admissions.json")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    from gallery.benchmark.data import read_pairs
    from indexer.embedders import precision

    started = time.time()
    threads = tuple(args.threads)
    torch.set_num_threads(threads[0])
    images, chips = load_chips(args.data_dir, "pairs")
    _, calibration = load_chips(args.data_dir, "calibration")
    calibration = np.asarray(calibration[:args.calibration_chips or None])
    lfw = args.data_dir / "lfw"
    pairs = read_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled")
    variants, facts = build_variants(calibration, threads)
    speed = measure_speed(variants, chips, tuple(args.batches), threads, args.rounds)
    checks = check_accuracy(variants, chips, images, pairs, threads[0])
    info = machine()
    header = {"cpu": info["cpu"], "cpu_flags": info["cpu_flags"], "cores": info["cores"], "torch": info["torch"],
              "onnxruntime": version("onnxruntime"), "int8 ISA key": precision.cpu_isa(precision.INT8),
              "bf16 ISA key": precision.cpu_isa(precision.BF16) or "none (no avx512_bf16/AMX)",
              "chips": f"{len(images)} LFW pairs.txt images, MTCNN largest face, DlibEmbedder.crop",
              "calibration chips": f"{len(calibration)} chips of LFW View 1 training people not in pairs.txt",
              "load average": loadavg(),
              "command": command_line("benchmarks.dlib_precision", argv if argv is not None else sys.argv[1:]),
              "duration": f"{(time.time() - started) / 60:.1f} min", "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    admissions = records(checks, speed, facts, header)
    block = report(checks, speed, header, admissions)
    print(block)
    if args.out:
        write_block(args.out, block)
    if args.write_admissions:
        for record in admissions:
            precision.save_admission(record, precision.ADMISSIONS_FILE)
        logger.info("wrote %d record(s) to %s", len(admissions), precision.ADMISSIONS_FILE)


if __name__ == "__main__":
    main()
