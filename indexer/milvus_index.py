"""One embedder's vectors in a Milvus collection, behind the calls the gallery makes of a FAISS ``VectorIndex``:
``build``, ``add``, ``remove``, ``search`` (padded ``(scores, ids)``), ``search_lists``, ``ids``, ``len``, ``kind``.

Milvus is an optional, shared vector store (extra ``milvus``): a Milvus server or cluster (``milvus://host:19530``,
``http://...``) that every node of a deployment searches, or Milvus Lite, a local folder (``vectors.db``), for one
machine and for tests. Like a FAISS file it is a cache: the database holds every vector, and a collection whose
stamp (kept in the ``<prefix>_meta`` collection beside it) differs from the database is rebuilt from it.

* Cosine = inner product on L2-normalised float32, an exact ``FLAT`` index: answers equal FAISS flat up to float
  rounding. Input is checked and normalised exactly as ``VectorIndex`` does.
* Collections use ``Strong`` consistency: a search sees every insert and delete acknowledged before it, which is
  what "visible as soon as it commits" needs across processes.
* A search asks for at most ``MAX_TOP_K`` (16384, Milvus' limit) neighbours.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np

from indexer.vector_index import InvalidVectorsError, Neighbor, unit_rows

log = logging.getLogger(__name__)

MAX_TOP_K = 16_384
_INSERT_CHUNK = 2_000
_PAGE = 10_000


def connect(uri: str):
    """A client for ``uri``: ``milvus://host:port`` (a server), ``http(s)://...``, or a local Milvus Lite path."""
    from pymilvus import MilvusClient

    if uri.startswith("milvus://"):
        uri = "http://" + uri.removeprefix("milvus://")
    return MilvusClient(uri)


class MilvusIndex:
    """Cosine top-k over int64 database row ids, in the Milvus collection ``name``."""

    kind = "milvus"

    def __init__(self, client, name: str, dim: int, count: int | None = None):
        self.client, self.name, self._dim = client, name, dim
        self._count = count

    # -- collections ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, client, name: str, dim: int) -> MilvusIndex:
        """A new, empty collection ``name`` (an existing one is dropped first)."""
        from pymilvus import DataType

        if client.has_collection(name):
            client.drop_collection(name)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
        return cls(client, name, dim, 0)

    @classmethod
    def build(cls, client, name: str, ids: np.ndarray, vectors: np.ndarray) -> MilvusIndex:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise InvalidVectorsError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
        index = cls.create(client, name, int(vectors.shape[1]))
        index.add(ids, vectors)
        return index

    @classmethod
    def open(cls, client, name: str) -> MilvusIndex | None:
        """The existing collection ``name``, or None."""
        if not client.has_collection(name):
            return None
        fields = client.describe_collection(name)["fields"]
        dim = next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")
        return cls(client, name, dim)

    def drop(self) -> None:
        if self.client.has_collection(self.name):
            self.client.drop_collection(self.name)

    # -- the VectorIndex calls --------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        if self._count is None:
            res = self.client.query(self.name, filter="", output_fields=["count(*)"])
            self._count = int(res[0]["count(*)"])
        return self._count

    def __repr__(self) -> str:
        return f"MilvusIndex({self.name!r}, dim={self.dim})"

    def ids(self) -> np.ndarray:
        """All ids in the collection, sorted ascending."""
        out, last = [], -1
        while True:  # keyset pages: bounded memory per call, no offset limit
            rows = self.client.query(self.name, filter=f"id > {last}", output_fields=["id"], limit=_PAGE)
            if not rows:
                break
            page = sorted(int(r["id"]) for r in rows)
            out.extend(page)
            last = page[-1]
        return np.asarray(out, np.int64)

    def add(self, ids, vectors) -> None:
        x = unit_rows(vectors, self.dim)
        row_ids = np.asarray(ids, np.int64)
        if row_ids.ndim != 1 or row_ids.shape[0] != x.shape[0]:
            raise InvalidVectorsError(f"ids must be 1-D with {x.shape[0]} entries, got shape {row_ids.shape}")
        for start in range(0, len(row_ids), _INSERT_CHUNK):
            part = slice(start, start + _INSERT_CHUNK)
            self.client.insert(self.name, [{"id": int(i), "vector": v.tolist()} for i, v in zip(row_ids[part],
                                                                                                 x[part])])
        if self._count is not None:
            self._count += len(row_ids)

    def remove(self, ids) -> int:
        gone = np.unique(np.asarray(ids, np.int64))
        if not gone.size:
            return 0
        for start in range(0, gone.size, _INSERT_CHUNK):
            self.client.delete(self.name, ids=[int(i) for i in gone[start:start + _INSERT_CHUNK]])
        self._count = None  # ids that were not there do not count: ask the collection next time
        return int(gone.size)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: ``(scores, ids)``, both (m, min(k, len)); unfilled slots are id -1, score -inf."""
        q = unit_rows(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self), MAX_TOP_K)
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        labels = np.full((q.shape[0], k), -1, np.int64)
        if k == 0:
            return scores, labels
        hits = self.client.search(self.name, data=q.tolist(), limit=k, output_fields=["id"],
                                  search_params={"metric_type": "IP"})
        for row, found in enumerate(hits):
            for col, hit in enumerate(found[:k]):
                scores[row, col] = hit["distance"]
                labels[row, col] = hit["id"]
        return scores, labels

    def search_lists(self, queries, k: int) -> list[list[Neighbor]]:
        scores, labels = self.search(queries, k)
        return [[Neighbor(int(i), float(s)) for s, i in zip(rs, ri) if i >= 0] for rs, ri in zip(scores, labels)]


class MilvusStamps:
    """The stamp of each collection (what database state it mirrors), in the ``<prefix>_meta`` collection."""

    def __init__(self, client, prefix: str):
        self.client, self.name = client, f"{prefix}_meta"

    def _ensure(self) -> None:
        from pymilvus import DataType

        if self.client.has_collection(self.name):
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("value", DataType.VARCHAR, max_length=4096)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field in a collection
        params = self.client.prepare_index_params()
        params.add_index(field_name="unused", index_type="FLAT", metric_type="L2")
        self.client.create_collection(self.name, schema=schema, index_params=params, consistency_level="Strong")

    def read(self, collection: str) -> dict | None:
        if not self.client.has_collection(self.name):
            return None
        rows = self.client.query(self.name, filter=f"key == {json.dumps(collection)}", output_fields=["value"])
        return json.loads(rows[0]["value"]) if rows else None

    def write(self, collection: str, stamp: Mapping | None) -> None:
        self._ensure()
        if stamp is None:
            self.client.delete(self.name, filter=f"key == {json.dumps(collection)}")
            return
        self.client.upsert(self.name, [{"key": collection, "value": json.dumps(dict(stamp), sort_keys=True),
                                        "unused": [0.0, 0.0]}])


