"""FAISS index for one embedder: cosine top-k search over database row ids.

The database is the source of truth; an index file is a cache that can always be rebuilt from it.

Decisions (see benchmarks/search_scale.py for the measurements behind the numbers):

* Cosine = inner product on L2-normalised float32. ``add`` and ``search`` normalise a *copy* of what they are
  given (embedders already normalise, so this only guards the contract); zero, non-finite or non-float input is
  rejected, never silently "fixed". ``reconstruct`` therefore returns the normalised vector.
* ``flat`` is ``IndexIDMap2`` over ``IndexFlatIP`` (exact). ``ivf`` is an ``IndexIVFFlat`` holding the row ids
  natively, with a hashtable direct map for ``reconstruct``: wrapping IVF in ``IndexIDMap2`` breaks
  ``remove_ids`` silently (IVF keeps positional labels that IndexIDMap's compaction then maps to the wrong ids;
  checked with faiss 1.15). Both remove in place.
* No HNSW: at 100k x 512 it built 3x slower than IVF, reached recall@1 0.90-0.96 where IVF reached 1.0, cannot
  delete, and needs more memory.
* Flat costs n*dim per query (single-threaded scan, ~30-70 ms at 100k x 512 here), so ``choose_kind`` switches
  to IVF at FLAT_MAX_ELEMENTS. IVF recall is excellent for photos of enrolled people; for strangers the "true"
  nearest neighbour is an arbitrary unrelated face and IVF often misses it, which does not change an
  identification answer that a similarity threshold rejects anyway.
* Measured at 1M x 512 (benchmarks/search_scale.py, 2-core box at load ~10): flat p50 367 ms; IVF nlist 4000
  nprobe 16: p50 3.2 ms, recall@1 0.981; nprobe 32 (the default): 7.9 ms, 1.0; build 9 min, k-means dominated.
  The default favours recall: a missed enrolled person costs more than 5 ms next to an embedding forward pass.
* Search returns padded arrays; a slot faiss could not fill (k > size, or an IVF probe that found too few
  vectors) holds id -1 and score -inf. ``search_lists`` drops those slots.
* Threads: faiss's OpenMP default (all cores) is left alone (training, adding and batched search use them).
  One query is sequential work, yet each call still opens a parallel region: on an oversubscribed machine the
  barrier cost ~20 ms per call (loaded 2-core box), so a process answering one query at a time may call
  ``faiss.omp_set_num_threads(1)``. Concurrent searches are safe; add/remove/train need the caller's lock.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import faiss
import numpy as np

from indexer.atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf")
#: choose_kind: exact search while n * dim is below this (100k vectors of 512-D), IVF from there on.
FLAT_MAX_ELEMENTS = 100_000 * 512
#: lists probed per query (capped at nlist); see default_nprobe.
DEFAULT_NPROBE = 32
#: k-means sees this many points per centroid: faiss's minimum before it warns; k-means costs
#: points * nlist * dim per iteration, which dominates building at 1M on a small CPU.
TRAIN_POINTS_PER_LIST = 39
# File = magic, header length, JSON header (stamp, shape, payload size + sha256), faiss.serialize_index payload.
# One file, so index and stamp can never disagree; the checksum catches truncation and bit rot before faiss
# parses anything.
_ADD_CHUNK = 65_536
_MAGIC = b"FGVIDX1\n"
_PREFIX = struct.Struct("<8sQ")
_MAX_HEADER = 1 << 20


class VectorIndexError(Exception):
    """Base class for vector index errors."""


class InvalidVectorsError(VectorIndexError, ValueError):
    """Vectors or ids have the wrong shape, dtype or values."""


class DuplicateIdError(VectorIndexError, ValueError):
    """An id being added is already in the index or repeated in the batch."""


class UnknownIdError(VectorIndexError, KeyError):
    """The id is not in the index."""


class UntrainedIndexError(VectorIndexError):
    """An IVF index must be trained before vectors are added."""


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One search hit: a database row id and its cosine similarity to the query."""

    id: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score}


def choose_kind(n: int, dim: int = 512) -> str:
    """Index kind for ``n`` vectors of ``dim``: exact ``flat`` below FLAT_MAX_ELEMENTS, else ``ivf``."""
    return "flat" if n * dim < FLAT_MAX_ELEMENTS else "ivf"


def default_nlist(n: int) -> int:
    """IVF list count: ~4*sqrt(n), capped so k-means sees TRAIN_POINTS_PER_LIST points per centroid."""
    return max(1, min(round(4 * math.sqrt(max(n, 1))), n // TRAIN_POINTS_PER_LIST))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: DEFAULT_NPROBE. A person's photos sit in a few neighbouring cells whatever the
    gallery size, so a constant (not a fraction of nlist) keeps recall while latency stays flat as n grows."""
    return min(nlist, DEFAULT_NPROBE)


class VectorIndex:
    """Cosine top-k index over int64 database row ids (see the module docstring for the design)."""

    def __init__(self, dim: int, kind: str = "flat", nlist: int | None = None, nprobe: int | None = None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; known: {', '.join(KINDS)}")
        if kind == "ivf" and not nlist:
            raise ValueError("an ivf index needs nlist (VectorIndex.build sizes it from the data)")
        self._attach(_new_faiss_index(dim, kind, nlist))
        if kind == "ivf":
            self.nprobe = nprobe or default_nprobe(nlist)

    def _attach(self, index: faiss.Index) -> None:
        self._index = index
        self._kind = "ivf" if isinstance(index, faiss.IndexIVF) else "flat"
        self._ids = _stored_ids(index)  # sorted copy: duplicate checks and membership in O(log n)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, kind: str | None = None, *, nlist: int | None = None,
              nprobe: int | None = None, seed: int = 0) -> VectorIndex:
        """Index ``vectors`` under ``ids``; ``kind=None`` lets ``choose_kind`` pick; IVF trains on a sample."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise InvalidVectorsError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
        n, dim = vectors.shape
        ids = _check_ids(ids, n)  # before the (expensive) training
        kind = kind or choose_kind(n, dim)
        if kind == "ivf":
            nlist = nlist or default_nlist(n)
        index = cls(dim, kind, nlist=nlist, nprobe=nprobe)
        if kind == "ivf":
            rng = np.random.default_rng(seed)
            size = min(n, TRAIN_POINTS_PER_LIST * nlist)
            sample = vectors if size == n else vectors[np.sort(rng.choice(n, size, replace=False))]
            index.train(sample, seed=seed)
        for start in range(0, n, _ADD_CHUNK):  # bounds the normalised copy: peak ~ data + index, not 2x data
            index.add(ids[start:start + _ADD_CHUNK], vectors[start:start + _ADD_CHUNK])
        return index

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self._kind

    @property
    def dim(self) -> int:
        return self._index.d

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def nlist(self) -> int | None:
        return int(self._index.nlist) if self._kind == "ivf" else None

    @property
    def nprobe(self) -> int | None:
        """IVF lists probed per query (None for flat); settable, saved with the index."""
        return int(self._index.nprobe) if self._kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._kind != "ivf":
            raise ValueError(f"nprobe only applies to ivf indexes, this one is {self._kind}")
        if not 1 <= value <= self._index.nlist:
            raise ValueError(f"nprobe must be in 1..{self._index.nlist}, got {value}")
        self._index.nprobe = int(value)

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying faiss object, for inspection and benchmarks; mutate it only through this class."""
        return self._index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self._kind!r}, dim={self.dim}, size={len(self)})"

    def ids(self) -> np.ndarray:
        """All ids in the index, sorted ascending."""
        return self._ids.copy()

    def __contains__(self, row_id: object) -> bool:
        return isinstance(row_id, (int, np.integer)) and _member(self._ids, np.array([row_id], np.int64))[0]

    # -- mutation ---------------------------------------------------------------------------------------------
    def train(self, vectors: np.ndarray, seed: int = 0) -> None:
        """Train an empty IVF index's coarse quantizer (spherical k-means) on ``vectors``."""
        if self._kind != "ivf":
            raise ValueError(f"only ivf indexes are trained, this one is {self._kind}")
        if len(self):
            raise VectorIndexError("cannot retrain a non-empty ivf index; build a new one")
        x = self._prepare(vectors)
        if x.shape[0] < self._index.nlist:
            raise InvalidVectorsError(f"{x.shape[0]} training vectors for {self._index.nlist} lists")
        self._index.cp.seed = seed
        self._index.train(x)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors[i]`` under ``ids[i]``; rejects ids already present or repeated in the batch."""
        x = self._prepare(vectors)
        row_ids = _check_ids(ids, x.shape[0])
        if len(np.unique(row_ids)) != row_ids.size:
            raise DuplicateIdError("ids repeat within the batch")
        clash = row_ids[_member(self._ids, row_ids)]
        if clash.size:
            raise DuplicateIdError(f"{clash.size} ids already in the index, e.g. {int(clash[0])}")
        if not self.is_trained:
            raise UntrainedIndexError("train the ivf index (or use VectorIndex.build) before adding")
        if row_ids.size:
            self._index.add_with_ids(x, row_ids)
            self._ids = np.union1d(self._ids, row_ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids; ids not in the index are ignored. Returns how many were removed."""
        gone = np.unique(_check_ids(ids, None))
        gone = gone[_member(self._ids, gone)]
        if not gone.size:
            return 0
        removed = self._index.remove_ids(gone)  # faiss wraps the array in an IDSelectorBatch
        if removed != gone.size:
            raise VectorIndexError(f"faiss removed {removed} of {gone.size} ids")
        self._ids = np.setdiff1d(self._ids, gone, assume_unique=True)
        return int(gone.size)

    # -- queries ----------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: ``(scores, ids)``, both (m, min(k, len)); unfilled slots are id -1, score -inf."""
        q = self._prepare(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        if k == 0:
            return np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
        scores, labels = self._index.search(q, k)
        scores[labels < 0] = -np.inf
        return scores, labels

    def search_lists(self, queries: np.ndarray, k: int) -> list[list[Neighbor]]:
        """Top-k per query as lists of ``Neighbor``, best first, with unfilled (-1) slots dropped."""
        scores, labels = self.search(queries, k)
        return [[Neighbor(int(i), float(s)) for s, i in zip(row_s, row_i) if i >= 0]
                for row_s, row_i in zip(scores, labels)]

    def reconstruct(self, row_id: int) -> np.ndarray:
        """The stored (normalised) vector of ``row_id``; raises UnknownIdError when absent."""
        if row_id not in self:
            raise UnknownIdError(row_id)
        return self._index.reconstruct(int(row_id))

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | Path, stamp: Mapping[str, Any]) -> None:
        """Atomically write the index and ``stamp`` (JSON-able: what database state it mirrors) to ``path``."""
        payload = faiss.serialize_index(self._index)
        header = {"format": 1, "kind": self._kind, "dim": self.dim, "count": len(self), "stamp": dict(stamp),
                  "payload_size": int(payload.size), "payload_sha256": hashlib.sha256(payload).hexdigest()}
        raw = json.dumps(header, sort_keys=True).encode()
        write_bytes_atomic(path, _PREFIX.pack(_MAGIC, len(raw)), raw, memoryview(payload))

    @classmethod
    def load(cls, path: str | Path, expected_stamp: Mapping[str, Any], dim: int | None = None) -> VectorIndex | None:
        """The index saved at ``path``, or None (logged) if missing, corrupt, stale or of another ``dim``."""
        expected = json.loads(json.dumps(dict(expected_stamp), sort_keys=True))  # tuples -> lists, as stored
        found = _read_checked(Path(path))
        if found is None:
            return None
        header, payload = found
        if header.get("stamp") != expected:
            logger.info("index file %s is stale (stamp %s, expected %s): ignoring it", path, header.get("stamp"),
                        expected)
            return None
        if dim is not None and header.get("dim") != dim:
            logger.info("index file %s has dim %s, expected %s: ignoring it", path, header.get("dim"), dim)
            return None
        try:
            self = cls.__new__(cls)
            self._attach(faiss.deserialize_index(payload))
            ok = _consistent(self, header)
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("index file %s does not deserialise (%s): ignoring it", path, exc)
            return None
        if not ok:
            logger.warning("index file %s does not match its own header: ignoring it", path)
            return None
        return self

    # -- helpers ----------------------------------------------------------------------------------------------
    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        return unit_rows(vectors, self.dim)


def unit_rows(vectors, dim: int) -> np.ndarray:
    """``vectors`` as contiguous float32 rows of unit length; anything a cosine index cannot hold (wrong shape,
    not floating point, NaN or infinity, a zero vector) raises :class:`InvalidVectorsError`."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != dim:
        raise InvalidVectorsError(f"expected shape (n, {dim}), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidVectorsError(f"vectors must be floating point, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InvalidVectorsError("vectors contain NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms <= 1e-12).any():
        raise InvalidVectorsError("zero vector has no direction for cosine similarity")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _new_faiss_index(dim: int, kind: str, nlist: int | None) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(nlist), faiss.METRIC_INNER_PRODUCT)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct/remove by arbitrary ids
    return ivf


def _stored_ids(index: faiss.Index) -> np.ndarray:
    if not isinstance(index, faiss.IndexIVF):
        return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    invlists, parts = index.invlists, [np.empty(0, np.int64)]
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ptr = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            invlists.release_ids(list_no, ptr)
    return np.sort(np.concatenate(parts))


def _check_ids(ids: np.ndarray, n: int | None) -> np.ndarray:
    row_ids = np.asarray(ids)
    if row_ids.ndim != 1 or (n is not None and row_ids.shape[0] != n):
        wanted = "any number of" if n is None else str(n)
        raise InvalidVectorsError(f"ids must be 1-D with {wanted} entries, got shape {row_ids.shape}")
    if row_ids.size and not np.issubdtype(row_ids.dtype, np.integer):
        raise InvalidVectorsError(f"ids must be integers, got {row_ids.dtype}")
    row_ids = row_ids.astype(np.int64)
    if (row_ids < 0).any():
        raise InvalidVectorsError("ids must be >= 0 (faiss uses -1 for 'no result')")
    return row_ids


def _member(sorted_ids: np.ndarray, probe: np.ndarray) -> np.ndarray:
    if not sorted_ids.size:
        return np.zeros(probe.shape, bool)
    pos = np.searchsorted(sorted_ids, probe)
    return (pos < sorted_ids.size) & (sorted_ids[np.minimum(pos, sorted_ids.size - 1)] == probe)


def _consistent(vi: VectorIndex, header: Mapping[str, Any]) -> bool:
    index = vi.faiss_index
    if vi.kind == "flat":  # anything but IndexIDMap2(IndexFlatIP) / IndexIVFFlat is not ours
        ok = isinstance(index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(index.index),
                                                                  faiss.IndexFlatIP)
    else:
        ok = isinstance(index, faiss.IndexIVFFlat) and index.direct_map.type == faiss.DirectMap.Hashtable
    return ok and vi.kind == header["kind"] and index.metric_type == faiss.METRIC_INNER_PRODUCT \
        and index.d == header["dim"] and index.ntotal == header["count"]


def _read_checked(path: Path) -> tuple[dict[str, Any], np.ndarray] | None:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        logger.info("no index file at %s", path)
        return None
    except OSError as exc:
        logger.warning("index file %s is unreadable (%s): ignoring it", path, exc)
        return None
    try:
        return _split(raw)
    except ValueError as exc:  # includes JSON and UTF-8 decode errors
        logger.warning("index file %s is corrupt (%s): ignoring it", path, exc)
        return None


def _split(raw: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    if raw.size < _PREFIX.size:
        raise ValueError(f"{raw.size} bytes is shorter than the file prefix")
    magic, length = _PREFIX.unpack(raw[:_PREFIX.size].tobytes())
    if magic != _MAGIC:
        raise ValueError("not a facegallery index file")
    if length > min(_MAX_HEADER, raw.size - _PREFIX.size):
        raise ValueError(f"header length {length} out of range")
    header = json.loads(raw[_PREFIX.size:_PREFIX.size + length].tobytes())
    if not isinstance(header, dict) or header.get("format") != 1:
        raise ValueError("unknown header format")
    payload = raw[_PREFIX.size + length:]
    if payload.size != header.get("payload_size"):
        raise ValueError(f"payload is {payload.size} bytes, header says {header.get('payload_size')}")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise ValueError("payload checksum mismatch")
    return header, payload
