"""First-face latency: a one-photo ``facegallery identify`` as a whole process, from spawn to the answer.

    python -m benchmarks.startup --data-dir /path/to/data --rounds 5 [--compare-tree /path/to/older/checkout]

A small gallery (12 LFW photos, dlib) is enrolled first through the CLI; then each round runs, one after another:

- ``identify``: ``facegallery --gallery G -q identify PHOTO --model dlib`` from this checkout;
- ``identify (other tree)``: the same command from ``--compare-tree`` (an older copy of the packages, e.g. the
  code before a change), so before/after is measured interleaved on the same gallery and photo;
- for context, the imports that bound it: ``python -c pass``, ``import torch``, ``import torch, torchvision``
  (facenet-pytorch's MTCNN imports torchvision, whose ``ops`` import ``torch._dynamo``, sympy and triton), each
  ending with ``gc.freeze()`` as the CLI does: interpreter shutdown would otherwise garbage-collect the objects
  these imports leave, ~0.4 s after ``import torch`` and ~1 s after the CLI's imports.

Every process starts cold in the Python sense (a new interpreter, nothing imported) with the OS file cache warm
(the warm-up round reads every file once): the latency a user sees on the second command of a session. Wall
seconds are the median over rounds; CPU seconds (user + sys of the child) show how much of the wall was waiting
for a core on a shared machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, command_line, default_data_dir, lfw_photos, loadavg, median
from benchmarks.report import text_table

logger = logging.getLogger(__name__)

SECTION = "start-up"
REPO = Path(__file__).resolve().parent.parent
CLI = "import sys; from cli.main import main; sys.argv[0] = 'facegallery'; main()"
GOAL_S = 2.0


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process; raises when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cli(tree: Path, args: list[str]) -> tuple[list[str], Path]:
    """The CLI of the checkout ``tree``: run from its root, whose packages then come first on sys.path."""
    return [sys.executable, "-c", CLI, *args], tree


def run(data: Path, rounds: int, compare_tree: Path | None, model: str, threads: int = 0) -> tuple[list[Figure], dict]:
    env = {k: v for k, v in os.environ.items() if k != "FACEGALLERY_HOME"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    photos = lfw_photos(data, 16)
    enrolled, query = [p for i, p in enumerate(photos) if i % 4 != 3], photos[3]
    with tempfile.TemporaryDirectory() as tmp:
        people = Path(tmp) / "people"
        for p in enrolled:
            (people / p.parent.name).mkdir(parents=True, exist_ok=True)
            (people / p.parent.name / p.name).write_bytes(p.read_bytes())
        gallery = Path(tmp) / "gallery"
        subprocess.run(cli(REPO, ["--gallery", str(gallery), "-q", "enroll", str(people), "--model", model,
                                  "--augment", "0"])[0], cwd=REPO, env=env, check=True, capture_output=True)
        identify = ["--gallery", str(gallery), "-q", "identify", str(query), "--model", model]
        variants = {"identify": cli(REPO, identify)}
        if compare_tree is not None:
            variants["identify (other tree)"] = cli(compare_tree, identify)
        for name, code in (("python -c pass", "pass"), ("import torch", "import torch"),
                           ("import torch, torchvision", "import torch, torchvision")):
            # gc.freeze(): exit without the final collection, as the CLI does (cli/main.py), so these rows are
            # what the imports cost the CLI
            variants[name] = ([sys.executable, "-c", code + "; import gc; gc.freeze()"], REPO)
        for cmd, cwd in variants.values():  # warm-up: file cache, FAISS cache files
            timed(cmd, cwd, env)
        wall: dict[str, list[float]] = {n: [] for n in variants}
        cpu: dict[str, list[float]] = {n: [] for n in variants}
        for r in range(rounds):
            for name, (cmd, cwd) in variants.items():
                w, c = timed(cmd, cwd, env)
                wall[name].append(w)
                cpu[name].append(c)
            logger.info("round %d: %s", r + 1, {n: round(v[-1], 2) for n, v in wall.items()})
    med = {n: (median(wall[n]), median(cpu[n])) for n in variants}
    w, c = med["identify"]
    figures = [Figure(SECTION, f"one-photo identify ({model}), new process to answer: wall, median of {rounds}", w,
                      f"{c:.2f} CPU-s; import torch alone {med['import torch'][0]:.2f} s wall, with torchvision "
                      f"{med['import torch, torchvision'][0]:.2f} s", goal_max=GOAL_S, unit="s")]
    if compare_tree is not None:
        ow, oc = med["identify (other tree)"]
        ratios = sorted(o / n for o, n in zip(wall["identify (other tree)"], wall["identify"]))
        figures.append(Figure(SECTION, "one-photo identify: other tree vs this one (wall, per-round ratio)",
                              ratios[len(ratios) // 2], f"{ow:.2f} vs {w:.2f} s wall; {oc:.2f} vs {c:.2f} CPU-s"))
    details = {"wall_s": wall, "cpu_s": cpu, "median": med, "query": query.name, "gallery_photos": len(enrolled)}
    return figures, details


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="dlib")
    parser.add_argument("--compare-tree", type=Path, help="another checkout's root (cli/, gallery/, indexer/, db/)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every process (0: unset)")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or FACEGALLERY_DATA) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    start = loadavg()
    figures, details = run(args.data_dir, args.rounds, args.compare_tree, args.model, args.threads)
    print(f"# load average 1/5/15 min: start {start}, end {loadavg()}; OMP_NUM_THREADS {args.threads or 'unset'}")
    print("# command: " + command_line("benchmarks.startup", argv if argv is not None else sys.argv[1:]))
    print(text_table(figures))
    for name, (w, c) in details["median"].items():
        print(f"{name:28s} wall {w:6.2f} s  CPU {c:6.2f} s   rounds: "
              + " ".join(f"{v:.2f}" for v in details["wall_s"][name]))


if __name__ == "__main__":
    main()
