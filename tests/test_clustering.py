"""Face clustering (issue 15): gallery/library/clustering.py and the metrics of gallery/benchmark/clustering.py."""
from __future__ import annotations

import numpy as np
import pytest

from gallery.benchmark.clustering import scores, synthetic_faces
from gallery.library import clustering as C
from gallery.library.clustering import ClusterParams, cluster, knn_graph, stable_ids
from tests.helpers import float32_dot_tolerance


def unit(v):
    v = np.asarray(v, np.float64)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def blobs(people=8, photos=6, singletons=5, dim=32, noise=0.05, seed=0):
    """``people`` tight groups of ``photos`` unit vectors plus ``singletons`` lone vectors; labels, -1 for lone."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((people + singletons, dim)))
    owner = np.concatenate([np.repeat(np.arange(people), photos), people + np.arange(singletons)])
    x = unit(centres[owner] + noise * rng.standard_normal((len(owner), dim)))
    return x, owner


# -- knn_graph ---------------------------------------------------------------------------------------------------

def test_knn_graph_is_the_exact_neighbours_without_self():
    x = unit(np.random.default_rng(1).standard_normal((60, 16)))
    sims, nbrs = knn_graph(x, 5)
    assert sims.shape == nbrs.shape == (60, 5) and sims.dtype == np.float32 and nbrs.dtype == np.int64
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    want = np.argsort(-full, axis=1)[:, :5]
    assert not (nbrs == np.arange(60)[:, None]).any()
    np.testing.assert_array_equal(nbrs, want)
    tol = float32_dot_tolerance(16)
    assert np.abs(sims - np.take_along_axis(full, want, 1)).max() <= tol
    assert (np.diff(sims, axis=1) <= tol).all()


def test_knn_graph_pads_when_k_exceeds_the_others():
    x = unit(np.random.default_rng(2).standard_normal((4, 8)))
    sims, nbrs = knn_graph(x, 6)
    assert nbrs.shape == (4, 6)
    assert (nbrs[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()
    for i in range(4):
        assert sorted(nbrs[i, :3].tolist()) == [j for j in range(4) if j != i]


def test_knn_graph_approximate_index_for_large_n(monkeypatch):
    monkeypatch.setattr(C, "EXACT_KNN_MAX", 100)
    x, _ = blobs(people=60, photos=10, singletons=0, dim=24, noise=0.3, seed=3)
    sims, nbrs = knn_graph(x, 5)
    assert not (nbrs == np.arange(len(x))[:, None]).any()
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    exact = np.argsort(-full, axis=1)[:, :5]
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(nbrs.tolist(), exact.tolist())])
    assert recall >= 0.9


# -- cluster -----------------------------------------------------------------------------------------------------

BLOB_PARAMS = {
    "knn-average": ClusterParams(threshold=0.8, k=10),
    "chinese-whispers": ClusterParams(threshold=0.8, k=10),
    "chinese-whispers-dlib": ClusterParams(threshold=0.8),
    "dbscan": ClusterParams(threshold=0.8, min_samples=2),
    "hdbscan": ClusterParams(min_samples=2),
    "agglomerative-average": ClusterParams(threshold=0.8),
    "agglomerative-complete": ClusterParams(threshold=0.8),
}


@pytest.mark.parametrize("method", C.METHODS)
def test_every_method_recovers_separated_people(method):
    if method == "chinese-whispers-dlib":
        pytest.importorskip("dlib")
    x, owner = blobs()
    labels = cluster(x, method, BLOB_PARAMS[method])
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    s = scores(labels, owner)
    assert sorted(set(labels[labels >= 0].tolist())) == list(range(8))
    assert s.bcubed_recall == 1.0
    if method == "hdbscan":  # HDBSCAN keeps some far-off points in the clusters it selects
        assert s.bcubed_precision >= 0.9
        return
    assert s.bcubed_precision == 1.0
    assert (labels[owner >= 8] == -1).all()  # a person seen once is left unclustered


def test_labels_are_ordered_by_size_then_first_member():
    rng = np.random.default_rng(4)
    c = unit(rng.standard_normal((3, 16)))
    sizes = [2, 5, 2]
    owner = np.repeat(np.arange(3), sizes)
    x = unit(c[owner] + 0.01 * rng.standard_normal((len(owner), 16)))
    labels = cluster(x, "knn-average", ClusterParams(threshold=0.9, k=5))
    assert labels.tolist() == [1, 1, 0, 0, 0, 0, 0, 2, 2]
    assert (cluster(x, "knn-average", ClusterParams(threshold=0.9, k=5, min_size=3)) == [-1, -1] + [0] * 5 + [-1, -1]
            ).all()


def test_knn_average_on_the_full_graph_is_exact_average_linkage():
    """With every pair an edge and no size penalty, the mutual-best rounds give scipy's average-linkage cut."""
    from scipy.cluster.hierarchy import fcluster, linkage

    x, _ = blobs(people=12, photos=5, singletons=10, dim=16, noise=0.15, seed=5)
    for threshold in (0.55, 0.7, 0.85):
        p = ClusterParams(threshold=threshold, k=len(x) - 1, min_size=1, size_penalty=0.0)
        ours = cluster(x, "knn-average", p)
        tree = linkage(x.astype(np.float64), method="average", metric="cosine")
        want = fcluster(tree, 1.0 - threshold, "distance")
        s = scores(ours, want)
        assert s.bcubed_precision == 1.0 and s.bcubed_recall == 1.0, threshold
        assert 1 < len(set(ours.tolist())) < len(x)


def test_size_penalty_keeps_two_lone_faces_apart():
    a = unit([1.0, 0.0, 0.0])
    b = unit([0.95, np.sqrt(1 - 0.95 ** 2), 0.0])  # cosine 0.95 with a
    x = np.stack([a, b])
    assert cluster(x, "knn-average", ClusterParams(threshold=0.93, size_penalty=0.0)).tolist() == [0, 0]
    assert cluster(x, "knn-average", ClusterParams(threshold=0.93, size_penalty=0.01)).tolist() == [0, 0]
    assert cluster(x, "knn-average", ClusterParams(threshold=0.93, size_penalty=0.03)).tolist() == [-1, -1]


def test_cluster_is_deterministic_and_order_free():
    x, owner = synthetic_faces(3000, np.array([1, 1, 1, 2, 3, 5, 8, 20]), inter=0.83, intra=0.95, seed=6)
    p = ClusterParams.for_model("dlib")
    first = cluster(x, params=p)
    np.testing.assert_array_equal(first, cluster(x, params=p))
    perm = np.random.default_rng(7).permutation(len(x))
    again = np.empty_like(first)
    again[perm] = cluster(x[perm], params=p)
    np.testing.assert_array_equal(again < 0, first < 0)
    alone = np.flatnonzero(first < 0)
    truth = first.copy()
    truth[alone] = first.max() + 1 + np.arange(len(alone))  # as scores() counts them: one singleton each
    assert scores(again, truth).bcubed_f == 1.0
    assert scores(first, owner).bcubed_precision > 0.9


def test_chinese_whispers_joins_a_chain_average_linkage_does_not():
    """Label propagation follows a chain of close neighbours; average linkage looks at the whole cluster."""
    angles = np.arange(12) * 0.25  # neighbours at cosine 0.969, the ends far apart
    x = unit(np.stack([np.cos(angles), np.sin(angles), np.zeros(12)], 1))
    cw = cluster(x, "chinese-whispers", ClusterParams(threshold=0.95, k=4))
    avg = cluster(x, "knn-average", ClusterParams(threshold=0.95, k=4))
    assert len(set(cw.tolist())) == 1
    assert len(set(avg[avg >= 0].tolist())) > 1


def test_edge_cases():
    assert cluster(np.zeros((0, 8), np.float32)).shape == (0,)
    assert cluster(unit(np.ones((1, 8)))).tolist() == [-1]
    with pytest.raises(ValueError, match="unknown clustering method 'kmeans'"):
        cluster(unit(np.ones((3, 8))), "kmeans")
    with pytest.raises(ValueError, match=r"expected an \(n, d\) array"):
        cluster(np.ones(8, np.float32))
    assert ClusterParams.for_model("facenet").threshold != ClusterParams.for_model("dlib").threshold


# -- stable ids --------------------------------------------------------------------------------------------------

def test_stable_ids_rerun_keeps_every_id():
    faces = np.array([10, 11, 12, 13, 14])
    old = {10: 7, 11: 7, 12: 3, 13: 3}
    assert stable_ids(old, faces, np.array([0, 0, 1, 1, -1]), next_id=8) == old


def test_stable_ids_new_faces_join_and_new_clusters_get_fresh_ids():
    faces = np.array([10, 11, 12, 13, 20, 21, 22])
    old = {10: 7, 11: 7, 12: 3, 13: 3}
    labels = np.array([1, 1, 0, 0, 0, 2, 2])  # face 20 joins old cluster 3; 21 and 22 are a new person
    assert stable_ids(old, faces, labels, next_id=8) == {10: 7, 11: 7, 12: 3, 13: 3, 20: 3, 21: 8, 22: 8}


def test_stable_ids_split_and_merge():
    faces = np.arange(8)
    old = {0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 5, 6: 6}
    # old 1 splits into {0, 1} (keeps 1) and {2} (fresh 9); old 2 and 5 merge (2 has the majority); new face 7
    # joins old 6
    labels = np.array([0, 0, 2, 1, 1, 1, 3, 3])
    got = stable_ids(old, faces, labels, next_id=9)
    assert got == {0: 1, 1: 1, 2: 9, 3: 2, 4: 2, 5: 2, 6: 6, 7: 6}


def test_stable_ids_ties_go_to_the_smaller_old_id():
    faces = np.arange(4)
    old = {0: 5, 1: 5, 2: 4, 3: 4}
    got = stable_ids(old, faces, np.array([0, 0, 0, 0]), next_id=6)
    assert set(got.values()) == {4}
    # two new clusters want the same old id: the larger overlap wins, the other gets a fresh id
    got = stable_ids({0: 4, 1: 4, 2: 4}, np.arange(3), np.array([0, 0, 1]), next_id=6)
    assert got == {0: 4, 1: 4, 2: 6}


# -- metrics -----------------------------------------------------------------------------------------------------

def test_scores_by_hand():
    s = scores(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1]))
    assert s.bcubed_precision == pytest.approx(11 / 15)
    assert s.bcubed_recall == pytest.approx(11 / 15)
    assert s.pairwise_precision == pytest.approx(0.5) and s.pairwise_recall == pytest.approx(0.5)
    assert s.unclustered == 0 and s.clusters == 2


def test_scores_count_unclustered_faces_as_singletons():
    truth = np.array([0, 0, 1, 2])
    s = scores(np.array([-1, -1, -1, -1]), truth)
    assert s.bcubed_precision == 1.0 and s.bcubed_recall == pytest.approx((0.5 + 0.5 + 1 + 1) / 4)
    assert s.unclustered == 1.0 and s.clusters == 0 and s.pairwise_recall == 0.0
    perfect = scores(np.array([0, 0, -1, -1]), truth)
    assert perfect.bcubed_f == 1.0 and perfect.pairwise_f == 1.0


# -- real faces --------------------------------------------------------------------------------------------------

def test_default_clusters_real_lfw_faces(lfw_dir, tmp_path, one_torch_thread):
    """~300 LFW DevTest photos (people never used for tuning): 40 people with 4+ photos and 40 seen once."""
    pytest.importorskip("dlib")
    from gallery.benchmark.open_set import lfw_photos, read_people_file
    from gallery.benchmark.photo_vectors import photo_vectors
    from gallery.config import Settings
    from gallery.recognize.scoring import flip_average
    from gallery.store import Gallery

    root = lfw_dir / "lfw-deepfunneled"
    people = lfw_photos(root, read_people_file(lfw_dir / "peopleDevTest.txt"))
    many = [p for p in sorted(people) if len(people[p]) >= 4][:40]
    once = [p for p in sorted(people) if len(people[p]) == 1][:40]
    keys = [k for p in many for k in people[p][:7]] + [people[p][0] for p in once]
    assert 250 <= len(keys) <= 320
    gallery = Gallery(Settings(home=tmp_path / "home", device="cpu", progress=False))
    pv = photo_vectors(gallery.detector, gallery.embedder("dlib"), root, keys, progress=False)
    x = flip_average(pv.vectors, pv.flipped)
    truth = np.array([sorted(many + once).index(k.split("/")[0]) for k in keys])
    labels = cluster(x)
    s = scores(labels, truth)
    assert s.bcubed_precision >= 0.95 and s.bcubed_f >= 0.85, s
    assert (labels[-40:] == -1).mean() >= 0.8  # most people seen once stay unclustered
