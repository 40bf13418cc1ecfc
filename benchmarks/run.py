"""One entry point for the performance benchmarks: prints a table and rewrites BENCHMARKS.md's generated block.

    python -m benchmarks.run                 # full run on this machine (~20 min on a loaded 2-core box)
    python -m benchmarks.run --quick         # small sizes, a couple of minutes; prints only unless --out
    python -m benchmarks.run --device cuda   # the same on a GPU (see also benchmarks/gpu.py)

Sections: embedding stage (benchmarks.embed_stage), enrollment end to end and peak memory
(benchmarks.enroll_e2e), identify latency (benchmarks.identify_latency), search at scale
(benchmarks.search_scale). Every ratio is measured side by side in this one run.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import embed_stage, enroll_e2e, identify_latency, search_scale
from benchmarks.common import Figure, command_line, default_data_dir, lfw_photos, loadavg, machine, set_torch_threads
from benchmarks.report import markdown_block, text_table, write_markdown

logger = logging.getLogger(__name__)

SECTIONS = ("embed", "enroll", "memory", "identify", "search")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    """Sizes of one run; ``FULL`` is what BENCHMARKS.md reports, ``QUICK`` checks that everything runs."""

    embed_photos: int = 24
    embed_batch: int = 16
    embed_rounds: int = 9  # this shared box's per-round noise is +-20%; the ratio is the median of rounds
    enroll_photos: int = 200
    enroll_augment: int = 10
    enroll_segments: int = 4
    memory_photos: tuple[int, ...] = (200, 1000)
    memory_augment: int = 0
    identify_photos: int = 16
    identify_rounds: int = 15
    search_sizes: tuple[int, ...] = (100_000, 1_000_000)
    search_queries: int = 200


FULL = Profile()
QUICK = Profile(embed_photos=6, embed_batch=4, embed_rounds=2, enroll_photos=12, enroll_augment=2,
                enroll_segments=2, memory_photos=(8, 24), identify_photos=8, identify_rounds=3,
                search_sizes=(20_000,), search_queries=50)


def search_section(sizes: tuple[int, ...], queries: int) -> tuple[list[Figure], str]:
    rows = search_scale.run(sizes, queries=queries)
    figures = []
    for size in sizes:
        flat = next(r for r in rows if r["size"] == size and r["kind"] == "flat")
        good = [r for r in rows if r["size"] == size and r["kind"] == "ivf" and r["recall1_known"] >= 0.98]
        if not good:
            continue
        best = min(good, key=lambda r: r["p50_ms"])
        figures.append(Figure("search", f"{size:,} x 512: IVF ({best['params']}) vs exact flat, p50 per query",
                              flat["p50_ms"] / best["p50_ms"],
                              f"{best['p50_ms']} vs {flat['p50_ms']} ms; recall@1 {best['recall1_known']}; "
                              f"build {best['build_s']} vs {flat['build_s']} s"))
        figures.append(Figure("search", f"{size:,} x 512: p50 of the fastest IVF setting with recall@1 >= 0.98",
                              best["p50_ms"], f"{best['params']}, recall@1 {best['recall1_known']} (goal is at 1M)",
                              goal_max=5.0 if size >= 1_000_000 else None, unit="ms"))
    return figures, search_scale.format_table(rows)


def run(args: argparse.Namespace, profile: Profile) -> tuple[list[Figure], dict, dict[str, str]]:
    figures: list[Figure] = []
    details: dict = {}
    tables: dict[str, str] = {}
    data = args.data_dir
    if "embed" in args.sections:
        figs, details["embed"] = embed_stage.run(lfw_photos(data, profile.embed_photos, per_person=1),
                                                 args.device, profile.embed_batch, profile.embed_rounds, args.threads)
        figures += figs
    if "enroll" in args.sections:
        photos = lfw_photos(data, profile.enroll_photos + 3)
        figs, details["enroll"] = enroll_e2e.compare(photos[:-3], photos[-3:], args.device, profile.enroll_augment,
                                                     profile.enroll_segments)
        figures += figs
    if "memory" in args.sections:
        figs, details["memory"] = enroll_e2e.peak_rss(data, list(profile.memory_photos), profile.memory_augment,
                                                      args.device, args.threads)
        figures += figs
    if "identify" in args.sections:
        photos = lfw_photos(data, profile.identify_photos)  # 4 per person: 3 enrolled, the 4th a query candidate
        figs, details["identify"] = identify_latency.run([p for i, p in enumerate(photos) if i % 4 != 3],
                                                         photos[3::4], args.device, profile.identify_rounds)
        figures += figs
    if "search" in args.sections:
        figs, tables["Search at scale (benchmarks.search_scale)"] = search_section(profile.search_sizes,
                                                                                   profile.search_queries)
        figures += figs
    return figures, details, tables


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; prints only unless --out is given")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="folder holding lfw/ (default: $FACEGALLERY_DATA)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for every variant (0: all cores, or 1 when the load fills them)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--search-sizes", type=int, nargs="+", help="override the profile's gallery sizes")
    parser.add_argument("--out", type=Path, help="markdown file to update (default: BENCHMARKS.md for full runs)")
    parser.add_argument("--json", type=Path, help="also write figures and details as JSON here")
    args = parser.parse_args(argv)
    if args.data_dir is None and set(args.sections) - {"search"}:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required: the benchmarks use real LFW photos")
    if args.out is None and not args.quick:
        args.out = REPO / "BENCHMARKS.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    profile = QUICK if args.quick else FULL
    if args.search_sizes:
        profile = Profile(**{**profile.__dict__, "search_sizes": tuple(args.search_sizes)})
    load_start = loadavg()
    args.threads = set_torch_threads(args.threads)
    started = time.time()
    figures, details, tables = run(args, profile)
    header = {**machine(), "device": args.device, "torch threads (every variant)": str(args.threads),
              "load average 1/5/15 min, start": load_start, "load average 1/5/15 min, end": loadavg(),
              "command": command_line("benchmarks.run", argv if argv is not None else sys.argv[1:]),
              "profile": "quick" if args.quick else "full", "duration": f"{(time.time() - started) / 60:.1f} min",
              "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    print("\n".join(f"# {k}: {v}" for k, v in header.items()))
    print(text_table(figures))
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    if args.out is not None:
        write_markdown(args.out, markdown_block(figures, header, tables), preamble="# Benchmarks")
    if args.json is not None:
        args.json.write_text(json.dumps({"header": header, "figures": [f.to_dict() for f in figures],
                                         "details": details}, indent=2, default=str))


if __name__ == "__main__":
    main()
