"""Helpers shared by several test files (fixtures live in conftest.py; fakes of the models in fakes.py).

- people folders and fake-backed galleries: :func:`make_people`, :func:`open_gallery`, :func:`fake_opener`;
- LFW sub-folders: :func:`lfw_folder`; LFW-like benchmark inputs: :func:`make_dataset`, :func:`write_pairs`, and a
  whole benchmark run with the fakes: :func:`fake_benchmark`;
- small utilities: :func:`jpeg_bytes`, :func:`iou` (indexer.detect.box_iou);
- float tolerances: :func:`float32_dot_tolerance`, the bound used wherever two code paths compute the same
  float32 similarity;
- :func:`unreachable_for_others`, for tests that drop to an unprivileged user;
- :class:`ForkServer`: ``facegallery`` commands as forked children of one pre-imported interpreter (the crash
  and concurrency tests).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from gallery.config import Settings
from gallery.store import Gallery
from indexer.detect import box_iou as iou  # noqa: F401 - re-exported for the tests
from tests.fakes import FakeDetector, fake_factory, person_image


# -- people and galleries ----------------------------------------------------------------------------------------
def make_people(root: Path, people: int | Iterable[int] = 3, photos: int = 3) -> Path:
    """``root/person_<p>/<i>.jpg``: ``photos`` fake pictures (``person_image(p * 100 + i)``) of each person ``p``
    in ``people`` (a count from 0, or the person numbers themselves). Returns ``root``."""
    for p in range(people) if isinstance(people, int) else people:
        d = root / f"person_{p}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(photos):
            person_image(p * 100 + i).save(d / f"{i}.jpg", quality=95)
    return root


def open_gallery(home: Path, store: dict | None = None, **settings) -> Gallery:
    """A gallery in ``home`` with the fast fake detector and embedders; ``store`` (name -> embedder) lets several
    galleries share the same fake embedder objects; ``settings`` go to :class:`gallery.config.Settings`."""
    return Gallery(Settings(home=home, progress=False, **settings), detector=FakeDetector(),
                   embedder_factory=fake_factory(store))


def fake_opener(store: dict | None = None):
    """A stand-in for the CLI's ``open_gallery(ctx, **overrides)`` that puts the fakes behind the real CLI."""
    from cli.main import settings_of

    store = {} if store is None else store

    def opener(ctx, **overrides):
        settings = settings_of(ctx)
        return Gallery(settings.with_(**overrides) if overrides else settings, detector=FakeDetector(),
                       embedder_factory=fake_factory(store))

    return opener


# -- commands in forked processes -------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
RUN_LIMIT_S = 300

# A fork server: one interpreter imports the CLI and the heavy libraries once (no model is built, no thread is
# started), then forks a fresh child per run that executes exactly what the console script runs (``main()`` with
# the given argv). This saves the ~4 s of imports per process that would make 20+ runs too slow on a small
# machine; everything after the imports (building MTCNN and dlib, scanning, detecting, embedding, committing,
# saving indexes) happens in the child, whose stdout goes to OUT and stderr to OUT.err. Its argv: CHUNK for
# gallery.enroll.enroll and gallery.library.scan ("-" keeps 16); "fakes" to put the fast fake detector/embedders of tests/fakes.py behind the CLI
# (:func:`fake_opener`, as the CLI tests do with monkeypatch), else "real".
# SINGLE_THREAD: the children run torch on one thread. On a small machine shared with other jobs, torch's two
# OpenMP threads spin-wait on each other and MTCNN ran 10x slower (1.8 s instead of 0.18 s per LFW photo, measured
# at load 6 on 2 cores); the code path is the same either way.
FORK_SERVER = """
import json, os, sys, time
import gallery.enroll.enroll, gallery.recognize.identify, gallery.manage.maintenance, gallery.manage.people, indexer.embedders
import gallery.library.scan
import dlib, faiss, facenet_pytorch, torch
from cli.main import main

if sys.argv[1] != "-":
    gallery.enroll.enroll.CHUNK = gallery.library.scan.CHUNK = int(sys.argv[1])
if sys.argv[2] == "fakes":
    import cli.commands_core
    from tests.helpers import fake_opener

    cli.commands_core.open_gallery = fake_opener()


def child(job):
    os.dup2(os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
    os.dup2(os.open(job["out"] + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.argv = ["facegallery", *job["run"]]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wait(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


for line in sys.stdin:
    job = json.loads(line)
    if "run" in job:
        pid = os.fork()
        if pid == 0:
            child(job)
        reply = {"pid": pid}
    else:
        reply = {"status": wait(job["wait"], job["timeout"])}
    print(json.dumps(reply), flush=True)
"""


class ForkServer:
    """Runs ``facegallery`` commands as forked processes of one pre-imported interpreter (see FORK_SERVER)."""

    def __init__(self, chunk: int | None = None, fakes: bool = False):
        args = [sys.executable, "-c", FORK_SERVER, "-" if chunk is None else str(chunk), "fakes" if fakes else "real"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see SINGLE_THREAD
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0)
        self.buf = b""

    def _ask(self, job: dict) -> dict:
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        while b"\n" not in self.buf:
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, "the fork server died"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def start(self, argv: list[str], out: Path) -> int:
        return self._ask({"run": [str(a) for a in argv], "out": str(out)})["pid"]

    def wait(self, pid: int, timeout: float = RUN_LIMIT_S) -> int | None:
        """The raw wait status of ``pid``, or None if it still runs after ``timeout`` s."""
        return self._ask({"wait": pid, "timeout": timeout})["status"]

    def run(self, argv: list[str], out: Path, kill_after: float | None = None) -> tuple[bool, int]:
        """Run one command; SIGKILL it after ``kill_after`` s. Returns (killed, exit code)."""
        pid = self.start(argv, out)
        status = self.wait(pid, RUN_LIMIT_S if kill_after is None else kill_after)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            status = self.wait(pid)
            assert status is not None, "a killed run did not end"
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        return killed, os.waitstatus_to_exitcode(status)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# -- real photos and benchmark inputs ----------------------------------------------------------------------------
def lfw_folder(lfw: Path, root: Path, people: Mapping[str, Iterable[int]]) -> Path:
    """``root/<person>/<person>_<nnnn>.jpg`` copied from LFW deep-funneled for the given photo numbers."""
    for person, numbers in people.items():
        (root / person).mkdir(parents=True)
        for n in numbers:
            name = f"{person}_{n:04d}.jpg"
            shutil.copyfile(lfw / "lfw-deepfunneled" / person / name, root / person / name)
    return root


def make_dataset(root: Path, people: int = 7, photos: int = 5) -> Path:
    """LFW-like names (``p3/p3_0002.jpg``) with the fakes' per-person pictures; odd people get one photo more."""
    for p in range(people):
        d = root / f"p{p}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(photos + (p % 2)):
            person_image(p * 100 + i).save(d / f"p{p}_{i + 1:04d}.jpg", quality=95)
    return root


def write_pairs(path: Path, same: list, diff: list, folds: int = 2) -> Path:
    """A pairs.txt in LFW's format: ``folds`` folds of len(same) // folds same and as many different pairs."""
    n = len(same) // folds
    lines = [f"{folds}\t{n}"]
    for f in range(folds):
        lines += ["\t".join(map(str, s)) for s in same[f * n:(f + 1) * n]]
        lines += ["\t".join(map(str, d)) for d in diff[f * n:(f + 1) * n]]
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_benchmark(ds: Path, pairs: Path, home: Path, store: dict | None = None, augment=(0, 2)):
    """A whole benchmark run on ``ds``/``pairs`` with the fakes (dlib and facenet, 4 identities, 3 impostors, quick
    heads); ``home`` is the user's gallery, which the run must leave alone."""
    from gallery.benchmark.run import BenchmarkConfig, run_benchmark
    from gallery.heads.model import TrainConfig

    cfg = BenchmarkConfig(models=("dlib", "facenet"), pairs=pairs, identities=4, enroll_per_person=3, impostors=3,
                          augment=augment, heads=TrainConfig(epochs=40, patience=6))
    return run_benchmark(ds, cfg, Settings(home=home, progress=False), detector=FakeDetector(),
                         embedder_factory=fake_factory(store))


# -- small utilities ---------------------------------------------------------------------------------------------
def jpeg_bytes(img, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def float32_dot_tolerance(dim: int) -> float:
    """How far apart two float32 computations of the same cosine of two unit ``dim``-vectors can be.

    Summed in any order (BLAS kernels, FAISS, numpy loops; with or without FMA), a float32 dot product is within
    gamma_d * |x| |y| of the exact value, gamma_d = d u / (1 - d u), u = 2**-24 (Higham, *Accuracy and Stability
    of Numerical Algorithms*, 2nd ed., section 3.1); vectors normalised in float32 have |x| <= 1 + gamma_d. Two code
    paths therefore differ by at most 2 gamma_d (1 + gamma_d)**2: 1.5e-5 for 128-D dlib vectors, 5.7e-6 for the
    48-D fakes. In practice they differ by a unit or two in the last place (~6e-8).
    """
    u = 2.0 ** -24
    gamma = dim * u / (1 - dim * u)
    return 2 * gamma * (1 + gamma) ** 2


# -- privileges ----------------------------------------------------------------------------------------------------
def unreachable_for_others(paths: Iterable[Path]) -> str | None:
    """Why a user who is neither the owner nor in the group of these files (``nobody``) cannot read them, or None.

    Every folder on the way (to the path as named and to where its symlinks lead) must be searchable by others
    (o+x), and each path readable by others (o+r; folders o+rx). Owner and group bits are not consulted: the
    unprivileged user drops every group.
    """
    for named in paths:
        for path in dict.fromkeys([Path(named).absolute(), Path(named).resolve()]):
            for folder in reversed(path.parents):
                mode = folder.stat().st_mode
                if not mode & stat.S_IXOTH:
                    return f"other users cannot enter {folder} (mode {stat.filemode(mode)})"
            mode = path.stat().st_mode
            need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
            if mode & need != need:
                return f"other users cannot read {path} (mode {stat.filemode(mode)})"
    return None
