"""VectorIndex: search against a numpy oracle, removal, persistence and corrupt-cache handling.

Tiny seeded data; ids are deliberately not 0..n-1 (1000 + 7*i) so a position/id mix-up cannot pass.
"""
from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

from indexer.vector_index import (
    FLAT_MAX_ELEMENTS,
    DuplicateIdError,
    InvalidVectorsError,
    Neighbor,
    UnknownIdError,
    UntrainedIndexError,
    VectorIndex,
    choose_kind,
    default_nlist,
    default_nprobe,
)
from tests.helpers import float32_dot_tolerance

DIM = 32
STAMP = {"embedder": "dlib", "dim": DIM, "rows": 600, "max_id": 5193}


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def row_ids(n: int) -> np.ndarray:
    return (1000 + 7 * np.arange(n)).astype(np.int64)


def photos(centres: np.ndarray, n: int, seed: int, noise: float = 0.6) -> np.ndarray:
    """Noisy normalised samples around identity centres, like several face embeddings of each person
    (noise 0.6: two photos of one person have cosine ~0.74, as with FaceNet; two people ~0)."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def oracle(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


def stored(index: VectorIndex, ids: np.ndarray) -> np.ndarray:
    """The float32 vectors the index multiplies (it normalises what it is given once more)."""
    return np.stack([index.reconstruct(int(i)) for i in ids])


def assert_ranks_cannot_swap(x: np.ndarray, q: np.ndarray, k: int) -> None:
    """FAISS and numpy sum the same float32 products in different orders (and differently on each CPU), so two
    scores closer than :func:`tests.helpers.float32_dot_tolerance` may come out in either order. Exact label
    equality with the oracle is only meaningful when the exact top-(k + 1) scores are further apart than that;
    the seeded data is checked here rather than assumed."""
    exact = np.sort(q.astype(np.float64) @ x.T.astype(np.float64), axis=1)[:, ::-1][:, :k + 1]
    assert -np.diff(exact, axis=1).max() > float32_dot_tolerance(x.shape[1]), "near-tie: choose other seeds"


def small_index(kind: str, n: int = 600, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    x, ids = unit(n, seed=seed), row_ids(n)
    extra = {"nlist": 8, "nprobe": 8} if kind == "ivf" else {}  # probe every list: exact, so checks are crisp
    return VectorIndex.build(ids, x, kind=kind, **extra), x, ids


# -- search ---------------------------------------------------------------------------------------------------
@pytest.mark.numeric
def test_flat_search_equals_numpy_top_k():
    index, x, ids = small_index("flat")
    q = unit(25, seed=9)
    scores, labels = index.search(q, 10)
    want_scores, want_ids = oracle(stored(index, ids), ids, q, 10)
    assert scores.dtype == np.float32 and labels.dtype == np.int64 and labels.shape == (25, 10)
    assert_ranks_cannot_swap(stored(index, ids), q, 10)
    np.testing.assert_array_equal(labels, want_ids)
    np.testing.assert_allclose(scores, oracle(x, ids, q, 10)[0], atol=1e-5)


@pytest.mark.numeric
def test_ivf_agrees_with_oracle_when_probing_every_list():
    index, x, ids = small_index("ivf")
    assert (index.nlist, index.nprobe) == (8, 8)
    q = unit(25, seed=9)
    _, labels = index.search(q, 5)
    assert_ranks_cannot_swap(stored(index, ids), q, 5)
    np.testing.assert_array_equal(labels, oracle(stored(index, ids), ids, q, 5)[1])


@pytest.mark.numeric
def test_inputs_are_normalised_so_scale_does_not_matter():
    x, ids = unit(50), row_ids(50)
    index = VectorIndex.build(ids, (3.0 * x).astype(np.float64))  # float64 accepted and cast
    scores, labels = index.search(7.5 * x[:5], 1)
    np.testing.assert_array_equal(labels[:, 0], ids[:5])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(index.reconstruct(int(ids[3])), x[3], atol=1e-6)


def test_k_larger_than_index_returns_only_real_hits():
    index, x, ids = small_index("flat", n=5)
    scores, labels = index.search(unit(3, seed=4), 10)
    assert labels.shape == (3, 5) and (labels >= 0).all()
    lists = index.search_lists(unit(3, seed=4), 10)
    assert [len(hits) for hits in lists] == [5, 5, 5]
    assert all(isinstance(h, Neighbor) and h.id in set(ids.tolist()) for h in lists[0])
    assert [h.score for h in lists[0]] == sorted((h.score for h in lists[0]), reverse=True)


def test_empty_index_searches_to_empty_rows():
    index = VectorIndex(DIM)
    scores, labels = index.search(unit(2), 3)
    assert scores.shape == labels.shape == (2, 0)
    assert index.search_lists(unit(2), 3) == [[], []]


def test_build_from_an_empty_gallery():
    index = VectorIndex.build(np.empty(0, np.int64), np.empty((0, DIM), np.float32))
    assert (index.kind, index.dim, len(index)) == ("flat", DIM, 0) and index.ids().size == 0
    assert index.search_lists(unit(1), 5) == [[]]
    assert index.remove(row_ids(3)) == 0


def test_unfilled_ivf_slots_are_minus_one_in_arrays_and_dropped_in_lists():
    index, _, _ = small_index("ivf", n=400)
    index.nprobe = 1  # one list of ~50 vectors cannot fill k=200
    q = unit(4, seed=5)
    scores, labels = index.search(q, 200)
    assert (labels == -1).any()
    assert np.isneginf(scores[labels == -1]).all()
    lists = index.search_lists(q, 200)
    for hits, row in zip(lists, labels):
        assert [h.id for h in hits] == [int(i) for i in row if i >= 0]


# -- validation -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, vectors, error", [
    (np.array([1, 2]), unit(3), InvalidVectorsError),                      # length mismatch
    (np.array([1, 2]), unit(2, dim=DIM + 1), InvalidVectorsError),         # wrong dim
    (np.array([1, 2]), unit(2).astype(np.int32), InvalidVectorsError),     # not floating point
    (np.array([1, 2]), np.vstack([unit(1), np.full((1, DIM), np.nan)]), InvalidVectorsError),
    (np.array([1, 2]), np.vstack([unit(1), np.zeros((1, DIM))]), InvalidVectorsError),
    (np.array([-1, 2]), unit(2), InvalidVectorsError),                     # -1 is faiss's "no result"
    (np.array([1.0, 2.0]), unit(2), InvalidVectorsError),                  # float ids
    (np.array([5, 5]), unit(2), DuplicateIdError),                         # repeated within the batch
    (np.array([1000, 3]), unit(2), DuplicateIdError),                      # 1000 is already there
])
def test_add_rejects_bad_input_and_leaves_index_unchanged(ids, vectors, error):
    index, _, _ = small_index("flat", n=10)
    with pytest.raises(error):
        index.add(ids, vectors)
    assert len(index) == 10 and index.ids().tolist() == row_ids(10).tolist()


def test_ivf_must_be_trained_before_adding():
    index = VectorIndex(DIM, "ivf", nlist=4)
    with pytest.raises(UntrainedIndexError):
        index.add(row_ids(3), unit(3))
    index.train(unit(200, seed=1))
    index.add(row_ids(3), unit(3))
    assert len(index) == 3


def test_constructor_rejects_unknown_kind_and_missing_nlist():
    with pytest.raises(ValueError, match="known: flat, ivf"):
        VectorIndex(DIM, "hnsw")
    with pytest.raises(ValueError, match="nlist"):
        VectorIndex(DIM, "ivf")


# -- ids, reconstruct, remove ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.numeric
def test_reconstruct_returns_the_vector_stored_under_each_id(kind):
    index, x, ids = small_index(kind, n=200)
    assert index.kind == kind and index.dim == DIM and len(index) == 200
    np.testing.assert_array_equal(index.ids(), ids)
    for i in (0, 57, 199):
        np.testing.assert_allclose(index.reconstruct(int(ids[i])), x[i], atol=1e-6)
    with pytest.raises(UnknownIdError):
        index.reconstruct(1001)  # between two real ids


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_removed_ids_are_never_returned(kind):
    index, x, ids = small_index(kind)
    gone = np.arange(0, 600, 3)
    assert index.remove(np.concatenate([ids[gone], [3, 999_999]])) == gone.size  # unknown ids are ignored
    assert index.remove(ids[gone]) == 0
    assert len(index) == 400
    kept = np.setdiff1d(np.arange(600), gone)
    np.testing.assert_array_equal(index.ids(), ids[kept])
    _, labels = index.search(x[gone], len(index))
    assert not np.isin(labels, ids[gone]).any()
    _, top = index.search(x[kept], 1)  # survivors still find themselves, under the right id
    np.testing.assert_array_equal(top[:, 0], ids[kept])
    with pytest.raises(UnknownIdError):
        index.reconstruct(int(ids[0]))
    index.add(ids[gone[:5]], x[gone[:5]])  # a removed id can come back
    assert index.search(x[gone[:5]], 1)[1][:, 0].tolist() == ids[gone[:5]].tolist()


# -- persistence ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.numeric
def test_save_load_roundtrip_gives_identical_results(tmp_path, kind):
    index, x, ids = small_index(kind)
    if kind == "ivf":
        index.nprobe = 3
    path = tmp_path / f"{kind}.faiss"
    index.save(path, STAMP)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = VectorIndex.load(path, dict(STAMP), dim=DIM)
    assert loaded is not None and loaded.kind == kind and len(loaded) == 600
    assert (loaded.nlist, loaded.nprobe) == (index.nlist, index.nprobe)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    q = unit(30, seed=11)
    for got, want in zip(loaded.search(q, 7), index.search(q, 7)):
        np.testing.assert_array_equal(got, want)
    assert loaded.remove(ids[:10]) == 10  # still fully functional after loading
    loaded.add(ids[:10], x[:10])


def test_load_returns_none_for_missing_stale_or_other_dim(tmp_path, caplog):
    index, _, _ = small_index("flat", n=20)
    path = tmp_path / "dlib.faiss"
    caplog.set_level(logging.INFO, logger="indexer.vector_index")
    assert VectorIndex.load(path, STAMP) is None
    assert "no index file" in caplog.text
    index.save(path, STAMP)
    assert VectorIndex.load(path, {**STAMP, "rows": 601}) is None
    assert "stale" in caplog.text
    assert VectorIndex.load(path, STAMP, dim=128) is None
    assert VectorIndex.load(path, STAMP) is not None


def test_failed_save_keeps_the_previous_file(tmp_path):
    index, _, _ = small_index("flat", n=20)
    path = tmp_path / "dlib.faiss"
    index.save(path, STAMP)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        index.save(path, {"not json": object()})
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def _corruptions(good: bytes):
    rng = np.random.default_rng(3)
    flipped = bytearray(good)
    flipped[-100] ^= 0x01  # one bit inside the vectors
    header_len = int.from_bytes(good[8:16], "little")
    bad_header = good[:16] + b"{" * header_len + good[16 + header_len:]
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "prefix only": good[:10],
        "random bytes": rng.bytes(len(good)),
        "zero bytes": bytes(len(good)),
        "bit flip": bytes(flipped),
        "garbled header": bad_header,
        "huge header length": good[:8] + (2**62).to_bytes(8, "little") + good[16:],
    }


def test_corrupt_files_load_as_none_without_raising(tmp_path, caplog):
    index, _, _ = small_index("ivf", n=300)
    path = tmp_path / "good.faiss"
    index.save(path, STAMP)
    caplog.set_level(logging.WARNING, logger="indexer.vector_index")
    for name, blob in _corruptions(path.read_bytes()).items():
        bad = tmp_path / "bad.faiss"
        bad.write_bytes(blob)
        assert VectorIndex.load(bad, STAMP) is None, name
    assert caplog.text.count("ignoring it") == 8
    assert VectorIndex.load(tmp_path, STAMP) is None  # a directory is unreadable, not an exception


def test_plain_faiss_file_and_forged_header_are_rejected(tmp_path):
    index, _, _ = small_index("flat", n=20)
    raw = tmp_path / "raw.faiss"
    faiss.write_index(index.faiss_index, str(raw))  # right payload, no header
    assert VectorIndex.load(raw, STAMP) is None
    path = tmp_path / "forged.faiss"
    index.save(path, STAMP)
    blob = path.read_bytes()
    length = int.from_bytes(blob[8:16], "little")
    header = json.loads(blob[16:16 + length])
    header["kind"] = "ivf"  # header lies about the payload: the checksum still matches, the type does not
    new = json.dumps(header).encode()
    path.write_bytes(blob[:8] + len(new).to_bytes(8, "little") + new + blob[16 + length:])
    assert VectorIndex.load(path, STAMP) is None


# -- sizing and recall ----------------------------------------------------------------------------------------
def test_choose_kind_and_ivf_sizing(monkeypatch):
    assert choose_kind(0) == choose_kind(99_999, 512) == choose_kind(399_999, 128) == "flat"
    assert choose_kind(100_000, 512) == choose_kind(25_000, 2048) == choose_kind(10**7, 128) == "ivf"
    assert FLAT_MAX_ELEMENTS == 100_000 * 512
    assert default_nlist(1_000_000) == 4000 and default_nlist(20_000) == 512 and default_nlist(10) == 1
    assert default_nprobe(4000) == 32 and default_nprobe(8) == 8
    assert VectorIndex.build(row_ids(30), unit(30)).kind == "flat"
    monkeypatch.setattr("indexer.vector_index.FLAT_MAX_ELEMENTS", 100 * 64)  # build passes dim through
    assert VectorIndex.build(row_ids(100), unit(100, dim=63)).kind == "flat"
    assert VectorIndex.build(row_ids(100), unit(100, dim=64)).kind == "ivf"


@pytest.mark.numeric
def test_default_ivf_recall_at_1_for_new_photos_of_enrolled_people():
    dim, n = 128, 20_000
    centres = unit(2_000, dim, seed=1)  # 2000 people, ~10 photos each; isotropic: harder than real embeddings
    x, q, ids = photos(centres, n, seed=2), photos(centres, 400, seed=3), row_ids(n)
    index = VectorIndex.build(ids, x, kind="ivf")
    assert (index.nlist, index.nprobe) == (512, 32)
    _, labels = index.search(q, 1)
    recall = float(np.mean(labels[:, 0] == oracle(x, ids, q, 1)[1][:, 0]))
    assert recall >= 0.98, recall
