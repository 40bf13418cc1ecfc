"""Shared plumbing for the performance benchmarks: figures, side-by-side timing, machine facts, LFW photos.

Every comparison is timed *interleaved*: round r runs variant A then variant B (then C...), and a ratio is the
median over rounds of the per-round ratio. On a shared machine whose load drifts by 2x within a minute, that is
far steadier than timing A for a minute and then B for a minute.
"""
from __future__ import annotations

import logging
import os
import platform
import shlex
import socket
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    """One measured comparison: ``ratio`` of two variants timed side by side, and its goal when it has one.

    A few goals are absolute (a latency in ms, a cosine): then ``ratio`` holds that value and ``unit`` names it.
    """

    section: str
    name: str
    ratio: float | None
    detail: str  # the absolute numbers behind the ratio
    goal_min: float | None = None
    goal_max: float | None = None
    unit: str = "x"  # "x" for a ratio; otherwise the unit of an absolute value (e.g. "ms")

    @property
    def goal(self) -> str:
        if self.goal_min is not None:
            return f">= {self.goal_min:g}"
        if self.goal_max is not None:
            return f"<= {self.goal_max:g}"
        return ""

    @property
    def met(self) -> bool | None:
        if self.ratio is None or (self.goal_min is None and self.goal_max is None):
            return None
        if self.goal_min is not None and self.ratio < self.goal_min:
            return False
        return self.goal_max is None or self.ratio <= self.goal_max

    def to_dict(self) -> dict:
        return {**asdict(self), "goal": self.goal, "met": self.met}


def interleaved(variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each variant per round, the variants run one after another within every round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of ``slow[r] / fast[r]``: how many times faster ``fast`` ran, round by round."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) without importing numpy here."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def set_torch_threads(threads: int) -> int:
    """Intra-op threads for torch (0 = automatic, see :func:`auto_threads`); returns the number set."""
    import torch

    chosen = threads or auto_threads()
    torch.set_num_threads(chosen)
    return chosen


def auto_threads() -> int:
    """All cores on an idle machine; 1 when the 1-minute load already fills every core.

    On an oversubscribed machine OpenMP threads spin at barriers waiting for preempted peers: facenet's forward
    ran 2.5-4.5x slower with 2 threads than with 1 on this 2-core box at load ~7 (the benchmark shows it).
    """
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cores else cores


def command_line(module: str, argv: list[str]) -> str:
    """The command as a reader would retype it: absolute paths (data folder, output files) shortened to their
    last component, so the reports name no folder of the machine they were made on."""
    def short(arg: str) -> str:
        return Path(arg).name if os.path.isabs(arg) else arg

    return " ".join(["python", "-m", module] + [shlex.quote(short(a)) for a in argv])


def machine() -> dict[str, str]:
    """CPU, memory, load and library versions, for the report header."""
    from importlib.metadata import PackageNotFoundError, version

    import faiss
    import torch

    try:
        dlib_version = version("dlib-bin")
    except PackageNotFoundError:
        dlib_version = "not installed"
    return {
        "cpu": _cpu_model(), "cores": str(os.cpu_count()), "cpu_flags": _simd_flags(),
        "memory": _mem_total(), "python": platform.python_version(), "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "facenet-pytorch": version("facenet-pytorch"), "faiss": faiss.__version__, "dlib": dlib_version,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _simd_flags() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
            present = [f for f in wanted if f in flags]
            absent = [f for f in wanted if f not in flags]
            return " ".join(present) + (f" (no {', '.join(absent)})" if absent else "")
    return "unknown"


def _mem_total() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def lfw_photos(data_dir: Path, count: int, per_person: int = 4) -> list[Path]:
    """``count`` LFW photos: the first ``per_person`` of each person with at least that many, by name."""
    root = data_dir / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: pass --data-dir (the folder holding lfw/) or FACEGALLERY_DATA")
    photos: list[Path] = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))
        if len(files) >= per_person:
            photos.extend(files[:per_person])
        if len(photos) >= count:
            return photos[:count]
    raise ValueError(f"only {len(photos)} LFW photos of people with >= {per_person} images; asked for {count}")


def default_data_dir() -> Path | None:
    raw = os.environ.get("FACEGALLERY_DATA")
    return Path(raw).expanduser() if raw else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(cmd: list[str], env: Mapping[str, str], log: Path, port: int, ready_s: float = 180):
    """Start a ``facegallery serve`` process (``cmd``), wait (bounded) until its /v1/health answers on
    127.0.0.1:``port``, yield its base URL, and stop it at the end. Used by the service benchmark and tests."""
    import subprocess

    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
