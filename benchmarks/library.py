"""Photo-library benchmarks (issue 15): scan throughput, find latency at 100K faces, clusters over all of LFW.

    python -m benchmarks.library                          # all sections; rewrites its block of BENCHMARKS.md
    python -m benchmarks.library --quick                  # small sizes, prints only unless --out
    python -m benchmarks.library --full-scan              # first scan all of LFW into --lfw-gallery (~10+ min)

- **scan vs enroll.** The same LFW photos (the first 4 of each person with >= 4, by name), laid out as a library
  tree (``<initial>/<photo>``) and as per-person folders, both of symbolic links; ``facegallery scan`` and
  ``facegallery enroll --augment 0``, dlib, whole processes into fresh galleries, interleaved rounds (the order
  alternates), median. The work is not the same per photo: scan embeds *every* face, flip-averaged (two forwards
  per face, identify's query vector); enroll embeds the largest face, no flip.
- **find at 100K faces.** A gallery with real people enrolled (photos 1-2 of each person), their photos 3-4
  scanned as a real library, then synthetic dlib-like faces up to the size (:mod:`gallery.benchmark.library`),
  inserted through the write path. ``find_person`` and ``find_by_photo`` are timed in-process and warm (indexes
  and centroids cached, as in a long-lived app or server); one cold ``facegallery find`` process for context.
- **clusters over all LFW.** The whole ``facegallery clusters --json`` process over a gallery holding every LFW
  photo scanned (``--lfw-gallery``; made by ``--full-scan``, kept outside the project), and the in-process split
  (load vectors / cluster / write). The scan at scale is reported from ``scan_timing.json`` in that gallery.

Every process and torch call runs with the same thread count (``--threads``; 0: 1 when the load fills the cores).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import (
    Figure,
    auto_threads,
    command_line,
    default_data_dir,
    lfw_photos,
    loadavg,
    machine,
    median,
    paired_ratio,
    percentile,
)
from benchmarks.report import markdown_block as report_block
from benchmarks.report import replace_block, text_table

logger = logging.getLogger(__name__)

BEGIN = "<!-- BEGIN benchmarks.library output: generated, do not edit by hand -->"
END = "<!-- END benchmarks.library output -->"
SECTIONS = ("scan", "find", "clusters")
REPO = Path(__file__).resolve().parent.parent
MODEL = "dlib"
SCAN_TIMING = "scan_timing.json"


@dataclass(frozen=True)
class Profile:
    photos: int = 200
    rounds: int = 3
    library_faces: int = 100_000
    find_calls: int = 50
    photo_calls: int = 20


FULL = Profile()
QUICK = Profile(photos=24, rounds=1, library_faces=5_000, find_calls=10, photo_calls=3)


def facegallery(*args: str | Path) -> list[str]:
    return [str(Path(sys.executable).parent / "facegallery"), *map(str, args)]


def timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def layout(photos: list[Path], work: Path) -> tuple[Path, Path]:
    """The photos as a library tree (no per-person folders) and as per-person folders, both of symlinks."""
    library, people = work / "library", work / "people"
    for p in photos:
        for link in (library / p.parent.name[0] / p.name, people / p.parent.name / p.name):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p.resolve())
    return library, people


# -- 1. scan vs enroll --augment 0 ----------------------------------------------------------------------------------
def scan_vs_enroll(photos: list[Path], rounds: int, env: dict[str, str], work: Path) -> tuple[list[Figure], str]:
    library, people = layout(photos, work / "photos")
    warm_lib, warm_people = layout(photos[:4], work / "warm")

    def scan(lib: Path, home: Path):
        return timed_process(facegallery("--gallery", home, "-q", "--device", "cpu", "scan", lib, "--model", MODEL,
                                         "--follow-symlinks", "--json"), env)

    def enroll(ppl: Path, home: Path):
        return timed_process(facegallery("--gallery", home, "-q", "--device", "cpu", "enroll", ppl, "--model",
                                         MODEL, "--augment", "0", "--follow-symlinks", "--json"), env)

    scan(warm_lib, work / "warm-scan")  # file caches of the models and the interpreter, not what is measured
    enroll(warm_people, work / "warm-enroll")
    seconds: dict[str, list[float]] = {"scan": [], "enroll": []}
    reports: dict[str, dict] = {}
    for r in range(rounds):
        order = ("scan", "enroll") if r % 2 == 0 else ("enroll", "scan")
        for name in order:
            home = work / f"{name}-{r}"
            s, reports[name] = scan(library, home) if name == "scan" else enroll(people, home)
            seconds[name].append(s)
            logger.info("round %d %s: %.1f s (load %s)", r, name, s, loadavg())
    warm = warm_in_process(library, people, warm_lib, rounds, work)
    n = len(photos)
    scanned, enrolled = reports["scan"], reports["enroll"]
    faces = scanned["faces_added"]
    rate = {k: n / median(v) for k, v in seconds.items()}
    warm_rate = {k: n / median(v) for k, v in warm.items()}
    label = f"{n} LFW photos: scan vs enroll --augment 0, photos/s"
    figures = [
        Figure("library scan", f"{label} (whole processes, dlib)", paired_ratio(seconds["enroll"], seconds["scan"]),
               f"{rate['scan']:.2f} vs {rate['enroll']:.2f} photos/s; scan found {faces / n:.2f} faces/photo "
               f"({faces} faces, {scanned['photos_without_face']} photos without one), each embedded "
               f"flip-averaged; enroll embeds 1 face/photo ({len(enrolled['enrolled'])} enrolled), no flip",
               goal_min=1.0),
        Figure("library scan", f"{label} (in-process, models loaded: the per-photo cost without start-up)",
               paired_ratio(warm["enroll"], warm["scan"]),
               f"{warm_rate['scan']:.1f} vs {warm_rate['enroll']:.1f} photos/s; a process spends "
               f"{median(seconds['scan']) - median(warm['scan']):.1f} s (scan) / "
               f"{median(seconds['enroll']) - median(warm['enroll']):.1f} s (enroll) starting up and loading models"),
    ]
    rows = [("round", "scan s", "enroll s", "in-process scan s", "in-process enroll s")]
    rows += [(str(r), f"{seconds['scan'][r]:.1f}", f"{seconds['enroll'][r]:.1f}", f"{warm['scan'][r]:.1f}",
              f"{warm['enroll'][r]:.1f}") for r in range(rounds)]
    return figures, _table(rows)


def warm_in_process(library: Path, people: Path, warm_lib: Path, rounds: int, work: Path) -> dict[str, list[float]]:
    """Seconds of ``scan_library`` and ``enroll_folder(augment=0)`` into fresh galleries sharing one loaded
    detector and embedder, interleaved (the order alternates)."""
    from gallery.config import Settings
    from gallery.enroll.enroll import enroll_folder
    from gallery.library.scan import scan_library
    from gallery.store import Gallery

    first = Gallery(Settings(home=work / "in-process-warm", device="cpu", progress=False))
    scan_library(first, warm_lib, models=[MODEL], follow_symlinks=True)
    detector, embedder = first.detector, first.embedder(MODEL)
    seconds: dict[str, list[float]] = {"scan": [], "enroll": []}
    for r in range(rounds):
        for name in (("scan", "enroll") if r % 2 == 0 else ("enroll", "scan")):
            g = Gallery(Settings(home=work / f"in-process-{name}-{r}", device="cpu", progress=False),
                        detector=detector, embedder_factory=lambda *_, **__: embedder)
            t0 = time.perf_counter()
            if name == "scan":
                scan_library(g, library, models=[MODEL], follow_symlinks=True)
            else:
                enroll_folder(g, people, models=[MODEL], augment=0, follow_symlinks=True)
            seconds[name].append(time.perf_counter() - t0)
            g.close()
    first.close()
    return seconds


# -- 2. find at 100K faces ------------------------------------------------------------------------------------------
def find_at_scale(photos: list[Path], size: int, calls: int, photo_calls: int, env: dict[str, str], work: Path
                  ) -> tuple[list[Figure], str]:
    from db import queries as q
    from gallery.benchmark.library import cosine_stats, fit_face_model, insert_library_faces, synthetic_faces
    from gallery.config import Settings
    from gallery.enroll.enroll import enroll_jobs
    from gallery.enroll.scan import PhotoJob
    from gallery.library.find import find_by_photo, find_person
    from gallery.library.scan import scan_library
    from gallery.store import Gallery
    from gallery.vectors import decode_rows

    by_person: dict[str, list[Path]] = {}
    for p in photos:
        by_person.setdefault(p.parent.name, []).append(p)
    refs = [p for ps in by_person.values() for p in ps[:2]]
    lib_photos = [p for ps in by_person.values() for p in ps[2:]]
    library, _ = layout(lib_photos, work / "find-photos")
    home = work / "find-gallery"
    g = Gallery(Settings(home=home, device="cpu", progress=False))
    enroll_jobs(g, [PhotoJob(person=p.parent.name, key=str(p), source=p) for p in refs], models=[MODEL], augment=0)
    scan_library(g, library, models=[MODEL], follow_symlinks=True)
    with g.session() as s:
        owners, enrolled = q.original_vectors(s, MODEL)
        _, rows = q.library_vectors(s, MODEL)
    real_library = decode_rows(rows, enrolled.shape[1])[1]
    fit = fit_face_model(np.concatenate([enrolled, real_library]),
                         np.concatenate([owners, -1 - np.arange(len(real_library))]))
    n_synth = max(0, size - len(real_library))
    synth, ident = synthetic_faces(fit, n_synth)
    t0 = time.perf_counter()
    insert_library_faces(g, MODEL, synth)
    insert_s = time.perf_counter() - t0
    real_stats, synth_stats = cosine_stats(enrolled, owners), cosine_stats(synth, ident)
    names = list(by_person)
    truth = {name: {str(p.resolve()) for p in by_person[name][2:]} for name in names}
    find_person(g, names[0])  # builds the library index and the centroids, as the first call of a process would
    times, hits, real_found, real_total, synth_hits = [], [], 0, 0, 0
    for i in range(calls):
        name = names[i % len(names)]
        t0 = time.perf_counter()
        report = find_person(g, name)
        times.append((time.perf_counter() - t0) * 1000)
        if i < len(names):
            threshold = report.threshold
            hits.append(len(report.photos))
            found = {_real_source(h.key) for h in report.photos}
            real_found += len(truth[name] & found)
            real_total += len(truth[name])
            synth_hits += sum(1 for h in report.photos if h.key.startswith("/synthetic-library/"))
    queries = [by_person[n][0] for n in names]
    find_by_photo(g, queries[0])
    photo_times = []
    for i in range(photo_calls):
        t0 = time.perf_counter()
        find_by_photo(g, queries[i % len(queries)])
        photo_times.append((time.perf_counter() - t0) * 1000)
    with g.session() as s:
        total_faces = q.library_counts(s)["faces"]
    g.close()
    cold_s, cold = timed_process(facegallery("--gallery", home, "-q", "--device", "cpu", "find", names[0], "--json"),
                                 env)
    label = f"{total_faces:,} library faces ({len(real_library)} real, rest synthetic), {len(names)} people enrolled"
    figures = [
        Figure("find", f"find NAME on {total_faces:,} library faces: p50, in-process, warm", median(times),
               f"p95 {percentile(times, 95):.1f} ms over {calls} calls; {label}; real photos of the person found "
               f"{real_found}/{real_total}, synthetic faces listed {synth_hits} (over {len(names)} names)",
               goal_max=50.0, unit="ms"),
        Figure("find", f"find --photo on {total_faces:,} library faces: p50, in-process, warm", median(photo_times),
               f"p95 {percentile(photo_times, 95):.1f} ms over {photo_calls} calls; includes detecting and "
               "embedding the query photo", unit="ms"),
        Figure("find", "facegallery find NAME, whole process, cold (context)", cold_s,
               f"{len(cold.get('photos', []))} photos listed; loads the models' settings, the library index "
               f"({total_faces:,} x 128) and the enrolled centroids", unit="s"),
    ]
    table = _table([("what", "value"),
                    ("insert synthetic faces (write path)", f"{n_synth:,} in {insert_s:.0f} s"),
                    ("real dlib cosine same / different person (mean)",
                     f"{real_stats['same']:.3f} / {real_stats['different']:.3f} "
                     f"(p99 different {real_stats['different_p99']:.3f})"),
                    ("synthetic cosine same / different identity (mean)",
                     f"{synth_stats['same']:.3f} / {synth_stats['different']:.3f} "
                     f"(p99 different {synth_stats['different_p99']:.3f})"),
                    ("find NAME p50 / p95 / max ms",
                     f"{median(times):.1f} / {percentile(times, 95):.1f} / {max(times):.1f}"),
                    ("find NAME photos listed per name (mean; threshold)", f"{np.mean(hits):.2f} ({threshold:.3f})"),
                    ("find --photo p50 / p95 ms", f"{median(photo_times):.1f} / {percentile(photo_times, 95):.1f}"),
                    ("find NAME cold process s", f"{cold_s:.2f}")])
    return figures, table


def _real_source(key: str) -> str:
    return str(Path(key).resolve()) if not key.startswith("/synthetic-library/") else key


# -- 3. clusters over all LFW ---------------------------------------------------------------------------------------
def full_scan(lfw_dir: Path, home: Path, env: dict[str, str]) -> dict:
    """Scan every LFW photo into ``home`` (a fresh gallery), niced, and keep the timing beside it."""
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"{home} is not empty: --full-scan makes a fresh gallery")
    cmd = ["nice", "-n", "10", *facegallery("--gallery", home, "-q", "--device", "cpu", "scan", lfw_dir, "--model",
                                            MODEL, "--json")]
    load = loadavg()
    cpu = _children_cpu()
    seconds, report = timed_process(cmd, env)
    return record_scan(home, seconds, report, load, env.get("OMP_NUM_THREADS", ""), _children_cpu() - cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record_scan(home: Path, seconds: float, report: dict, load: str, threads: str, cpu_s: float) -> dict:
    photos = len(report["scanned"])
    timing = {"photos": photos, "faces": report["faces_added"], "photos_without_face": report["photos_without_face"],
              "skipped": len(report["skipped"]), "seconds": round(seconds, 1), "cpu_s": round(cpu_s, 1),
              "photos_per_s": round(photos / seconds, 2), "load_start": load, "load_end": loadavg(),
              "threads": threads, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    (home / SCAN_TIMING).write_text(json.dumps(timing, indent=2))
    return timing


def clusters_over_lfw(home: Path, env: dict[str, str], runs: int = 2) -> tuple[list[Figure], str]:
    from gallery.benchmark.library import clusters_split
    from gallery.config import Settings
    from gallery.library import clustering
    from gallery.store import Gallery

    figures, rows = [], [("what", "value")]
    timing_file = home / SCAN_TIMING
    if timing_file.exists():
        t = json.loads(timing_file.read_text())
        figures.append(Figure(
            "library scan", f"all {t['photos']:,} LFW photos: scan throughput (one process, nice 10)",
            t["photos_per_s"], f"{t['faces']:,} faces in {t['seconds'] / 60:.1f} min ({t['faces'] / t['photos']:.2f} "
            f"faces/photo, {t['photos_without_face']} photos without one); CPU {t['cpu_s']:.0f} s "
            f"({t['photos'] / t['cpu_s']:.1f} photos per CPU-second); threads {t['threads']}; load "
            f"{t['load_start']} -> {t['load_end']}; {t['date']}", unit="photos/s"))
    seconds, reports = [], []
    for _ in range(runs):
        s, report = timed_process(facegallery("--gallery", home, "-q", "--device", "cpu", "clusters", "--json"), env)
        seconds.append(s)
        reports.append(report)
        logger.info("clusters: %.1f s (load %s)", s, loadavg())
    g = Gallery(Settings(home=home, device="cpu", progress=False), create=False)
    split = clusters_split(g, MODEL)
    g.close()
    last = reports[-1]
    params = clustering.ClusterParams.for_model(MODEL, clustering.DEFAULT_METHOD)
    load_s, cluster_s = split["load vectors"] + split["decode"], split["cluster"] + split["stable ids"]
    figures.append(Figure(
        "clusters", f"facegallery clusters --json over all LFW ({last['unassigned']:,} faces), whole process",
        median(seconds), f"runs {', '.join(f'{s:.1f}' for s in seconds)} s; {len(last['clusters'])} clusters of >= 2, "
        f"{last['clustered']:,} faces clustered; method {last['method']} ({params}); in-process: load vectors "
        f"{load_s:.1f} s, cluster {cluster_s:.1f} s, write + list {split['total'] - load_s - cluster_s:.1f} s",
        goal_max=15.0, unit="s"))
    rows += [(f"in-process {k}", f"{v:.2f} s" if isinstance(v, float) else str(v)) for k, v in split.items()]
    rows += [("DEFAULT_METHOD", clustering.DEFAULT_METHOD), ("params", str(params))]
    return figures, _table(rows)


# -- report ----------------------------------------------------------------------------------------------------------
def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def markdown_block(figures: list[Figure], header: dict[str, str], tables: dict[str, str]) -> str:
    return report_block(figures, header, tables, begin=BEGIN, end=END)


def write_block(path: Path, block: str) -> None:
    """Replace this benchmark's block of ``path`` (appended when absent); other blocks are left alone."""
    replace_block(path, block, BEGIN, END,
                  "## Photo library: scan, find and clusters at scale (issue 15, benchmarks.library)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; prints only unless --out is given")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="folder holding lfw/ (default: $FACEGALLERY_DATA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads everywhere (0: see module docstring)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--lfw-gallery", type=Path, default=Path(tempfile.gettempdir()) / "lfw_library_gallery",
                        help="gallery holding all of LFW scanned (section clusters); kept outside the project")
    parser.add_argument("--work", type=Path, help="keep the photo layouts and galleries here (an empty folder)")
    parser.add_argument("--full-scan", action="store_true", help="scan all of LFW into --lfw-gallery first")
    parser.add_argument("--out", type=Path, help="markdown file to update (default: BENCHMARKS.md for full runs)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required: the benchmarks use real LFW photos")
    if args.out is None and not args.quick:
        args.out = REPO / "BENCHMARKS.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    profile = QUICK if args.quick else FULL
    threads = args.threads or auto_threads()
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))  # the child processes
    import torch
    from threadpoolctl import threadpool_limits  # numpy's BLAS, loaded before the variables above were set

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    env = dict(os.environ)
    load_start, started = loadavg(), time.time()
    figures: list[Figure] = []
    tables: dict[str, str] = {}
    photos = lfw_photos(args.data_dir, profile.photos, per_person=4)
    with tempfile.TemporaryDirectory(prefix="facegallery-library-bench-") as tmp:
        work = args.work or Path(tmp)
        if "scan" in args.sections:
            figs, tables["scan vs enroll, seconds per round (benchmarks.library)"] = scan_vs_enroll(
                photos, profile.rounds, env, work)
            figures += figs
        if "find" in args.sections:
            figs, tables["find at scale (benchmarks.library)"] = find_at_scale(
                photos, profile.library_faces, profile.find_calls, profile.photo_calls, env, work)
            figures += figs
    if "clusters" in args.sections:
        if args.full_scan:
            full_scan(args.data_dir / "lfw" / "lfw-deepfunneled", args.lfw_gallery, env)
        if (args.lfw_gallery / "gallery.sqlite").exists():
            figs, tables["clusters over all LFW (benchmarks.library)"] = clusters_over_lfw(args.lfw_gallery, env)
            figures += figs
        else:
            logger.warning("%s holds no gallery: clusters section skipped (--full-scan makes it)", args.lfw_gallery)
    header = {**machine(), "torch threads (every process)": str(threads),
              "load average 1/5/15 min, start": load_start, "load average 1/5/15 min, end": loadavg(),
              "command": command_line("benchmarks.library", argv if argv is not None else sys.argv[1:]),
              "profile": "quick" if args.quick else "full", "duration": f"{(time.time() - started) / 60:.1f} min",
              "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    print("\n".join(f"# {k}: {v}" for k, v in header.items()))
    print(text_table(figures))
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    if args.out is not None:
        write_block(args.out, markdown_block(figures, header, tables))
    if args.json is not None:
        args.json.write_text(json.dumps({"header": header, "figures": [f.to_dict() for f in figures]}, indent=2))


if __name__ == "__main__":
    main()
