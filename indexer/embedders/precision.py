"""Which reduced-precision fast path may run: only one measured on LFW for exactly these weights, on this ISA.

A bf16 or int8 descriptor is not the fp32 one; with real weights the only acceptable evidence that it is good
enough is accuracy. ``benchmarks/dlib_precision.py`` measures each candidate on the full LFW ``pairs.txt`` (10-fold
verification accuracy against fp32 on the same chips, min/mean cosine between the two descriptor sets) and the
speed against fp32 ONNX Runtime, and writes an :class:`Admission` into ``precision_admissions.json`` beside this
module (shipped with the package). At run time ``--fast`` enables a path only when a record for exactly this
weights sha256, this precision, this engine and this CPU ISA exists, says ``admitted`` (accuracy within
:data:`TOLERANCE_POINTS` of fp32) and says it pays (faster than fp32 ONNX Runtime). Anything else runs fp32,
with the reason logged once: nothing is ever enabled that was not measured. ``FACEGALLERY_FAST_PRECISION=fp32``
keeps ``--fast`` in float32 whatever the records say.

The ISA is part of the key because the kernels, and so the numbers, differ: ONNX Runtime's int8 convolutions use
VNNI dot products, or AVX2 ones that can saturate; bf16 needs avx512_bf16 or AMX to be anything but an emulation.
Library versions are recorded with each admission (not keyed): the int8 graph is also pinned by its own sha256,
so an exporter or quantiser that builds a different graph is refused (see :mod:`.lowp`).

Torch-free: reading the records and the CPU flags costs nothing.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

logger = logging.getLogger(__name__)

ADMISSIONS_FILE = Path(__file__).with_name("precision_admissions.json")
ADMISSIONS_ENV = "FACEGALLERY_PRECISION_ADMISSIONS"  # another records file (tests, a re-measured machine)
PRECISION_ENV = "FACEGALLERY_FAST_PRECISION"  # "auto" (default: what the records admit) or "fp32" (never reduce)
TOLERANCE_POINTS = 0.1  # |LFW 10-fold accuracy - fp32's|, in percentage points (issue 12)
INT8, BF16 = "int8", "bf16"
INT8_ENGINE = "onnxruntime-qdq-u8s8-per-channel-minmax"
BF16_ENGINE = "torch-autocast-bf16-channels_last"
ENGINES = {INT8: INT8_ENGINE, BF16: BF16_ENGINE}
# The CPU flags that select ONNX Runtime's int8 kernels (MLAS) and torch's bf16 ones (oneDNN).
_INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Admission:
    """One measured candidate: what it is, where it was measured, and what LFW said."""

    weights_sha256: str
    precision: str  # "int8" | "bf16"
    engine: str  # INT8_ENGINE | BF16_ENGINE
    isa: str  # cpu_isa(precision) of the machine it was measured on
    admitted: bool  # accuracy within TOLERANCE_POINTS of fp32 on the pairs
    accuracy_fp32: float  # LFW 10-fold accuracy, percent
    accuracy: float
    min_cosine: float  # between the candidate's and fp32's descriptors of the same chips
    mean_cosine: float
    pairs: int
    speedup: float | None = None  # faces/s over fp32 ONNX Runtime, same threads and batch (None: not measured)
    graph_sha256: str | None = None  # int8: the quantised ONNX graph measured
    calibration: dict = field(default_factory=dict, repr=False)  # int8: {tensor: [lowest, highest]}
    measured: dict = field(default_factory=dict)  # date, command, versions, cpu, threads, batch, chips

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.weights_sha256, self.precision, self.engine, self.isa)

    @property
    def pays(self) -> bool:
        return self.speedup is not None and self.speedup > 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Admission":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Decision:
    """The reduced-precision path to run (``precision`` None: fp32), and why."""

    precision: str | None
    reason: str
    admission: Admission | None = None


def admissions_path() -> Path:
    raw = os.environ.get(ADMISSIONS_ENV, "").strip()
    return Path(raw).expanduser() if raw else ADMISSIONS_FILE


def load_admissions(path: Path | None = None) -> list[Admission]:
    """The records of ``path`` (default :func:`admissions_path`); a missing or unreadable file holds none."""
    path = path or admissions_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Admission.from_dict(r) for r in data.get("records", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log_once(f"precision admissions {path} unreadable ({type(exc).__name__}: {exc}); fp32 only")
        return []


def save_admission(record: Admission, path: Path | None = None) -> None:
    """Add ``record`` to ``path``, replacing the one with the same key (atomic write)."""
    path = path or admissions_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    kept = [r for r in data.get("records", []) if Admission.from_dict(r).key != record.key]
    data = {"about": "LFW admission records of reduced-precision fast paths (indexer/embedders/precision.py); "
                     "written by benchmarks/dlib_precision.py, never by hand",
            "records": kept + [record.to_dict()]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def cpu_flags() -> frozenset[str]:
    """The flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


def cpu_isa(precision: str, device_type: str = "cpu", cuda_capability: tuple[int, int] | None = None) -> str | None:
    """The ISA key of this machine for ``precision``, or None where that precision has no native kernels here.

    ``x86_64:avx2+avx512bw+avx512_vnni`` style on the CPU (the flags that pick the kernels, sorted); ``cuda:sm_90``
    on a GPU (bf16 only).
    """
    if device_type == "cuda":
        return f"cuda:sm_{cuda_capability[0]}{cuda_capability[1]}" if precision == BF16 and cuda_capability else None
    wanted = {INT8: _INT8_FLAGS, BF16: _BF16_FLAGS}[precision]
    present = sorted(set(wanted) & cpu_flags())
    if precision == BF16 and (not present or not _onednn_allows_bf16()):
        return None
    return f"{platform.machine()}:{'+'.join(present) or 'baseline'}"


def _onednn_allows_bf16() -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` caps torch's oneDNN below its bf16 kernels (e.g. the AVX2 test leg)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").strip().upper()
    return cap == "ALL" or any(level in cap for level in ("BF16", "FP16", "AMX", "AVX10"))


def decide(weights_sha256: str, precision: str, isa: str | None,
           records: list[Admission] | None = None) -> Decision:
    """Whether ``precision`` may run for these weights on this ISA, with the reason either way."""
    label = f"{precision} ({ENGINES[precision]})"
    if isa is None:
        return Decision(None, f"{label}: this device has no native {precision} kernels")
    records = load_admissions() if records is None else records
    match = next((r for r in records if r.key == (weights_sha256, precision, ENGINES[precision], isa)), None)
    if match is None:
        return Decision(None, f"{label}: never measured for weights {weights_sha256[:12]} on {isa}")
    numbers = (f"LFW {match.accuracy:.2f}% vs fp32 {match.accuracy_fp32:.2f}% on {match.pairs} pairs, "
               f"min cosine {match.min_cosine:.5f}, {match.speedup or 0:.2f}x fp32 ONNX Runtime")
    if not match.admitted:
        return Decision(None, f"{label}: refused by its LFW check ({numbers})", match)
    if not match.pays:
        return Decision(None, f"{label}: admitted but not faster than fp32 here ({numbers})", match)
    return Decision(precision, f"{label}: admitted ({numbers})", match)


def choose(weights_sha256: str, device_type: str = "cpu", cuda_capability: tuple[int, int] | None = None,
           records: list[Admission] | None = None) -> Decision:
    """The fastest admitted reduced-precision path for these weights on this device, or fp32 with the reasons.

    ``FACEGALLERY_FAST_PRECISION=fp32`` keeps ``--fast`` in float32 (descriptors equal to the plain engine's)."""
    wanted = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if wanted == "fp32":
        return Decision(None, f"fp32 ({PRECISION_ENV}=fp32)")
    if wanted != "auto":
        log_once(f"{PRECISION_ENV}={wanted} is not one of auto, fp32; using auto", logging.WARNING)
    records = load_admissions() if records is None else records
    candidates = (BF16,) if device_type == "cuda" else (INT8, BF16)
    decisions = [decide(weights_sha256, p, cpu_isa(p, device_type, cuda_capability), records) for p in candidates]
    usable = [d for d in decisions if d.precision is not None]
    if usable:
        return max(usable, key=lambda d: d.admission.speedup)
    return Decision(None, "fp32; " + "; ".join(d.reason for d in decisions))


_LOGGED: set[str] = set()
_LOG_LOCK = threading.Lock()


def log_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time it comes up in this process (every embedder load would repeat it)."""
    with _LOG_LOCK:
        if message in _LOGGED:
            return
        _LOGGED.add(message)
    logger.log(level, "%s", message)
