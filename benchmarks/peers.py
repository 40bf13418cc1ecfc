"""Peers side by side: facegallery vs face_recognition (ageitgey) vs the seed's stock per-photo loop.

    pip install 'facegallery[dlib]'                      # dlib-bin + face_recognition_models
    pip install --no-deps face_recognition               # its own dependency list would build dlib from source
    python -m benchmarks.peers --data-dir /path/to/data --threads 1 --out peers.md   # ~13 min on 2 cores

face_recognition_models 0.3.0 imports ``pkg_resources``, which recent setuptools no longer ships; the peer's
process then stands in a module exposing the package's four ``*_location()`` functions over its own files
(benchmarks/peer_workers.py, benchmark only): same model files, same code paths.

Photos: the first 30 LFW people (by name) with at least 7 photos; photos 1-4 of each are enrolled (120 photos),
photos 5-7 identified (90). Every tool takes the largest face of a photo (facegallery's identify answers every
confident face, which only adds work to its side).

Every variant is a whole process, timed from spawn to exit, including interpreter start-up, imports and model
loading; all run one after another within each round (interleaved), after one warm-up round; figures are medians
over rounds and ratios medians of per-round ratios. CPU seconds are the child's user + sys.

- enroll, K=0: ``facegallery --gallery G -q enroll PEOPLE --model dlib --augment 0`` (a fresh gallery each time:
  database, vectors, FAISS index) vs face_recognition (HOG ``face_locations``, ``face_encodings``, saved to .npz)
  vs the stock loop (MTCNN per photo, dlib chip, ``compute_face_descriptor`` per crop at batch 1);
- identify: ``facegallery ... identify Q1..Q90 --model dlib --json`` vs face_recognition (nearest encoding);
- detection + embedding stages alone: measured inside worker processes (benchmarks/peer_workers.py), excluding
  start-up, model loading and decoding; face_recognition's inside its enroll/identify runs, facegallery's in
  workers that call its detector and dlib embedder the way enroll and identify do;
- enrollment at K=10: ``facegallery enroll --augment 10`` vs the stock loop with the same 10 augmented copies.

``--threads 1`` sets OMP_NUM_THREADS=1 for every process: the per-core comparison (dlib-bin and face_recognition
use one core). On a shared machine two OpenMP threads per torch process spin-wait for a busy core: with the
variable unset at load ~3, facegallery's identify of 90 photos took 49 s wall / 33 CPU-s instead of 6 s.

Goals (issue 12): >= 2.5x face_recognition's wall time on enroll and identify, >= 4x on the stages, and K=10
enrollment >= 8x the stock loop. The header records the CPU's ISA and the load average: on a shared machine only
ratios measured within one run mean anything.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import Figure, command_line, default_data_dir, loadavg, machine, median
from benchmarks.report import markdown_block, text_table

logger = logging.getLogger(__name__)

SECTION = "peers"
MODEL = "dlib"


@dataclass
class Variant:
    cmd: list[str]
    report: Path | None = None  # a worker's JSON report
    fresh_home: bool = False  # replace "{home}" in cmd by a new gallery folder each run
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)
    stdout: str = ""


def pick_photos(data: Path, people: int = 30, enroll: int = 4, query: int = 3) -> tuple[list, list]:
    """(person, path) pairs to enroll and to identify."""
    root = data / "lfw" / "lfw-deepfunneled"
    chosen = [p for p in sorted(root.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= enroll + query]
    if len(chosen) < people:
        raise ValueError(f"only {len(chosen)} LFW people with >= {enroll + query} photos")
    to_enroll, to_query = [], []
    for person in chosen[:people]:
        files = sorted(person.glob("*.jpg"))
        to_enroll += [(person.name, f) for f in files[:enroll]]
        to_query += [(person.name, f) for f in files[enroll:enroll + query]]
    return to_enroll, to_query


def stage(tmp: Path, enroll: list, query: list) -> tuple[Path, list, list]:
    """Copy the photos under ``tmp`` (enroll reads PEOPLE/<person>/<photo>; symbolic links are skipped)."""
    people = tmp / "people"
    staged_enroll, staged_query = [], []
    for person, src in enroll:
        (people / person).mkdir(parents=True, exist_ok=True)
        staged_enroll.append((person, shutil.copy(src, people / person / src.name)))
    (tmp / "query").mkdir()
    for person, src in query:
        staged_query.append((person, shutil.copy(src, tmp / "query" / src.name)))
    return people, staged_enroll, staged_query


def write_list(path: Path, photos: list) -> Path:
    path.write_text("".join(f"{person}\t{p}\n" for person, p in photos))
    return path


def run_once(name: str, v: Variant, tmp: Path, env: dict[str, str], counter: list[int]) -> tuple[float, float]:
    cmd = v.cmd
    if v.fresh_home:
        counter[0] += 1
        home = tmp / f"home-{counter[0]}"
        cmd = [c.replace("{home}", str(home)) for c in cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr[-3000:]}")
    if v.fresh_home:
        shutil.rmtree(home, ignore_errors=True)
    v.stdout = done.stdout
    if v.report is not None:
        v.reports.append(json.loads(v.report.read_text()))
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def variants(tmp: Path, people: Path, enroll: list, query: list, k10_photos: int, augment: int) -> dict[str, Variant]:
    py, fg = sys.executable, str(Path(sys.executable).parent / "facegallery")
    worker = [py, "-m", "benchmarks.peer_workers"]
    enroll_list, query_list = write_list(tmp / "enroll.txt", enroll), write_list(tmp / "query.txt", query)
    k10_list = write_list(tmp / "enroll_k10.txt", enroll[:k10_photos])
    k10_people = tmp / "people_k10"
    for person, path in enroll[:k10_photos]:
        (k10_people / person).mkdir(parents=True, exist_ok=True)
        os.link(path, k10_people / person / Path(path).name)
    identify_home = tmp / "identify-gallery"
    out = {name: tmp / f"{name}.json" for name in ("fr-enroll", "fr-identify", "stock", "fg-es", "fg-is", "stock10")}
    return {
        "facegallery enroll": Variant([fg, "--gallery", "{home}", "-q", "enroll", str(people), "--model", MODEL,
                                       "--augment", "0", "--json"], fresh_home=True),
        "face_recognition enroll": Variant(worker + ["fr-enroll", str(enroll_list), str(out["fr-enroll"]),
                                                     str(tmp / "fr.npz")], out["fr-enroll"]),
        "stock loop enroll": Variant(worker + ["stock-enroll", str(enroll_list), str(out["stock"]), "0"],
                                     out["stock"]),
        "facegallery identify": Variant([fg, "--gallery", str(identify_home), "-q", "identify",
                                         *[str(p) for _, p in query], "--model", MODEL, "--json"]),
        "face_recognition identify": Variant(worker + ["fr-identify", str(query_list), str(out["fr-identify"]),
                                                       str(tmp / "fr.npz")], out["fr-identify"]),
        "facegallery enroll stages": Variant(worker + ["fg-enroll-stages", str(enroll_list), str(out["fg-es"]),
                                                       str(tmp / "stages-home")], out["fg-es"]),
        "facegallery identify stages": Variant(worker + ["fg-identify-stages", str(query_list), str(out["fg-is"]),
                                                         str(identify_home)], out["fg-is"]),
        f"facegallery enroll K={augment}": Variant([fg, "--gallery", "{home}", "-q", "enroll", str(k10_people),
                                                    "--model", MODEL, "--augment", str(augment), "--json"],
                                                   fresh_home=True),
        f"stock loop enroll K={augment}": Variant(worker + ["stock-enroll", str(k10_list), str(out["stock10"]),
                                                            str(augment)], out["stock10"]),
    }


def prepare_identify_gallery(tmp: Path, people: Path, env: dict[str, str]) -> None:
    fg = str(Path(sys.executable).parent / "facegallery")
    subprocess.run([fg, "--gallery", str(tmp / "identify-gallery"), "-q", "enroll", str(people), "--model", MODEL,
                    "--augment", "0"], env=env, check=True, capture_output=True)


def accuracy_fg(stdout: str, query: list) -> tuple[int, int]:
    """(largest face's nearest person correct, named correctly at the default threshold) over the queries."""
    truth = {Path(p).name: person for person, p in query}
    nearest = named = 0
    for image in json.loads(stdout)["images"]:
        if not image.get("faces"):
            continue
        answer = image["faces"][0]["models"][MODEL]
        person = truth[Path(image["path"]).name]
        nearest += bool(answer["candidates"]) and answer["candidates"][0]["identity"] == person
        named += answer["status"] != "unknown" and answer["identity"] == person
    return nearest, named


def accuracy_fr(report: dict) -> tuple[int, int]:
    answers = report["answers"]
    return (sum(a["nearest"] == a["truth"] for a in answers), sum(a["named"] == a["truth"] for a in answers))


def stage_seconds(v: Variant) -> list[float]:
    return [r["stages"]["detect"] + r["stages"]["embed"] for r in v.reports]


def paired(slow: list[float], fast: list[float]) -> float:
    return median([s / f for s, f in zip(slow, fast)])


def figures_of(vs: dict[str, Variant], query: list, augment: int, k10_photos: int) -> list[Figure]:
    fg_e, fr_e, st_e = vs["facegallery enroll"], vs["face_recognition enroll"], vs["stock loop enroll"]
    fg_i, fr_i = vs["facegallery identify"], vs["face_recognition identify"]
    fg_es, fg_is = vs["facegallery enroll stages"], vs["facegallery identify stages"]
    fg_k, st_k = vs[f"facegallery enroll K={augment}"], vs[f"stock loop enroll K={augment}"]

    def wall_cpu(v: Variant) -> str:
        return f"{median(v.wall):.2f} s wall / {median(v.cpu):.2f} CPU-s"

    def stages(v: Variant) -> str:
        det = median([r["stages"]["detect"] for r in v.reports])
        emb = median([r["stages"]["embed"] for r in v.reports])
        return f"detect {det:.2f} + embed {emb:.2f} s"

    near_fg, named_fg = accuracy_fg(fg_i.stdout, query)
    near_fr, named_fr = accuracy_fr(fr_i.reports[-1])
    n = len(query)
    return [
        Figure(SECTION, "enroll 120 LFW photos, K=0, whole process: facegallery vs face_recognition (wall)",
               paired(fr_e.wall, fg_e.wall), f"{wall_cpu(fg_e)} vs {wall_cpu(fr_e)}", goal_min=2.5),
        Figure(SECTION, "identify 90 LFW photos, whole process: facegallery vs face_recognition (wall)",
               paired(fr_i.wall, fg_i.wall), f"{wall_cpu(fg_i)} vs {wall_cpu(fr_i)}", goal_min=2.5),
        Figure(SECTION, "enroll 120: detection + embedding stages alone, facegallery vs face_recognition",
               paired(stage_seconds(fr_e), stage_seconds(fg_es)), f"{stages(fg_es)} vs {stages(fr_e)}",
               goal_min=4.0),
        Figure(SECTION, "identify 90: detection + embedding stages alone, facegallery vs face_recognition",
               paired(stage_seconds(fr_i), stage_seconds(fg_is)), f"{stages(fg_is)} vs {stages(fr_i)}",
               goal_min=4.0),
        Figure(SECTION, f"enroll {k10_photos} LFW photos, K={augment}, dlib weights: facegallery vs the stock "
               "per-photo loop (wall)", paired(st_k.wall, fg_k.wall), f"{wall_cpu(fg_k)} vs {wall_cpu(st_k)}; "
               f"stock stages {stages(st_k)}", goal_min=8.0),
        Figure(SECTION, "enroll 120, K=0: facegallery vs the stock per-photo loop (wall)",
               paired(st_e.wall, fg_e.wall), f"{wall_cpu(fg_e)} vs {wall_cpu(st_e)}; stock stages {stages(st_e)}"),
        Figure(SECTION, f"identify {n}: top-1 nearest person correct, facegallery vs face_recognition", None,
               f"nearest {near_fg}/{n} vs {near_fr}/{n}; named correctly at the default threshold (facegallery "
               f"cosine {MODEL} default, face_recognition distance <= 0.6) {named_fg}/{n} vs {named_fr}/{n}"),
    ]


def run(data: Path, rounds: int, k10_photos: int, augment: int, threads: int) -> tuple[list[Figure], dict]:
    env = {k: v for k, v in os.environ.items() if k != "FACEGALLERY_HOME"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    enroll, query = pick_photos(data)
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        people, enroll, query = stage(tmp, enroll, query)
        prepare_identify_gallery(tmp, people, env)
        vs = variants(tmp, people, enroll, query, k10_photos, augment)
        counter = [0]
        for name, v in vs.items():  # warm-up: file cache, FAISS caches, ONNX/first-shape set-up on disk
            if "K=" not in name:
                run_once(name, v, tmp, env, counter)
                v.reports.clear()
        for r in range(rounds):
            for name, v in vs.items():
                wall, cpu = run_once(name, v, tmp, env, counter)
                v.wall.append(wall)
                v.cpu.append(cpu)
                logger.info("round %d %-32s %6.2f s wall %6.2f CPU-s", r + 1, name, wall, cpu)
        figures = figures_of(vs, query, augment, k10_photos)
    details = {name: {"wall_s": v.wall, "cpu_s": v.cpu, "stages": [r.get("stages") for r in v.reports]}
               for name, v in vs.items()}
    return figures, details


def variant_table(details: dict) -> str:
    rows = [("variant", "wall s (median)", "CPU-s (median)", "detect s", "embed s", "wall s per round")]
    for name, d in details.items():
        det = [s["detect"] for s in d["stages"] if s]
        emb = [s["embed"] for s in d["stages"] if s]
        rows.append((name, f"{median(d['wall_s']):.2f}", f"{median(d['cpu_s']):.2f}",
                     f"{median(det):.2f}" if det else "-", f"{median(emb):.2f}" if emb else "-",
                     " ".join(f"{w:.2f}" for w in d["wall_s"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--augment", type=int, default=10, help="K of the augmented-enrollment comparison")
    parser.add_argument("--k10-photos", type=int, default=120, help="photos of the K-augmented comparison")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every process (0: unset)")
    parser.add_argument("--out", type=Path, help="write a markdown report here")
    parser.add_argument("--json", type=Path, help="write figures and per-round numbers as JSON here")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    load_start, started = loadavg(), time.time()
    figures, details = run(args.data_dir, args.rounds, args.k10_photos, args.augment, args.threads)
    header = {**machine(), "OMP_NUM_THREADS": str(args.threads or "unset"), "load average 1/5/15 min, start":
              load_start, "load average 1/5/15 min, end": loadavg(),
              "command": command_line("benchmarks.peers", argv if argv is not None else sys.argv[1:]),
              "duration": f"{(time.time() - started) / 60:.1f} min", "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    table = variant_table(details)
    print("\n".join(f"# {k}: {v}" for k, v in header.items()))
    print(text_table(figures))
    print("\n" + table)
    if args.out is not None:
        args.out.write_text("# Peers\n\n" + markdown_block(figures, header, {"Every variant": table}) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps({"header": header, "figures": [f.to_dict() for f in figures],
                                         "details": details}, indent=2))


if __name__ == "__main__":
    main()
