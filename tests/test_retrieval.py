import numpy as np
import pytest

from hpa_embed.config import IndexConfig
from hpa_embed.index import CellIndex
from hpa_embed.retrieval import retrieval_metrics

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def brute_force_metrics(Q, query_labels, R, ref_labels, leave_self_out):
    """Precision@1, R-precision and MAP@R by sorting every reference, one query at a time."""
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    Rn = R / np.linalg.norm(R, axis=1, keepdims=True)
    p_at_1, r_precision, map_at_r = [], [], []
    for i, (query, label) in enumerate(zip(Qn, query_labels)):
        order = np.argsort(-(Rn @ query), kind="stable")
        if leave_self_out:
            order = order[order != i]
        if np.ndim(label) == 0:
            relevant = ref_labels[order] == label
        else:
            relevant = (ref_labels[order] & label).any(axis=1)  # shares a class
        n_relevant = int(relevant.sum())
        if n_relevant == 0:
            continue  # a query with nothing to find is left out, as pytorch-metric-learning does
        top = relevant[:n_relevant]
        p_at_1.append(float(relevant[0]))
        r_precision.append(top.mean())
        hits = np.flatnonzero(top)
        map_at_r.append(sum((j + 1) / (position + 1) for j, position in enumerate(hits)) / n_relevant)
    return {
        "precision_at_1": np.mean(p_at_1),
        "r_precision": np.mean(r_precision),
        "mean_average_precision_at_r": np.mean(map_at_r),
    }


def noisy_clusters(n, classes=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.standard_normal((classes, d))[y] + 1.2 * rng.standard_normal((n, d))
    return X.astype(np.float32), y


def assert_metrics_equal(got, expected):
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-9), name


def test_hand_computed_tiny_case():
    # 1-D directions: angles on a circle; the query at angle 0.
    angles = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    R = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ref_labels = np.array([0, 1, 0, 1, 1])
    Q = np.array([[1.0, 0.0]], dtype=np.float32)
    got = retrieval_metrics(Q, np.array([0]), R, ref_labels)
    # ranking: labels 0, 1, 0, 1, 1; R = 2 (two label-0 references): top-2 = [hit, miss]
    assert got["precision_at_1"] == 1.0
    assert got["r_precision"] == 0.5
    assert got["mean_average_precision_at_r"] == pytest.approx((1 / 1) / 2)


def test_single_label_against_brute_force():
    X, y = noisy_clusters(300)
    Q, yq = noisy_clusters(60, seed=1)
    Q[:] = X[:60] + 0.5 * Q  # queries near the references, same classes
    yq = y[:60]
    assert_metrics_equal(retrieval_metrics(Q, yq, X, y), brute_force_metrics(Q, yq, X, y, False))


def test_leave_one_out_against_brute_force():
    X, y = noisy_clusters(250, seed=3)
    expected = brute_force_metrics(X, y, X, y, True)
    assert_metrics_equal(retrieval_metrics(X, y), expected)
    # the same through a prebuilt index whose first rows are the queries
    index = CellIndex.build(X, [str(i) for i in range(len(X))], IndexConfig(kind="flat"), progress=False)
    got = retrieval_metrics(X[:100], y[:100], ref_labels=y, index=index, ref_includes_query=True)
    assert_metrics_equal(got, brute_force_metrics(X[:100], y[:100], X, y, True))


def test_multilabel_shares_a_label_against_brute_force():
    X, y = noisy_clusters(200, classes=5, seed=4)
    rng = np.random.default_rng(5)
    Y = np.zeros((len(X), 5), dtype=bool)
    Y[np.arange(len(X)), y] = True
    Y |= rng.random(Y.shape) < 0.1
    Y[:3] = False  # cells with no class: they match nothing and are left out
    expected = brute_force_metrics(X, Y, X, Y, True)
    assert_metrics_equal(retrieval_metrics(X, Y), expected)
    Q = X[:50] + 0.3 * rng.standard_normal((50, X.shape[1])).astype(np.float32)
    assert_metrics_equal(
        retrieval_metrics(Q, Y[:50], X[50:], Y[50:]), brute_force_metrics(Q, Y[:50], X[50:], Y[50:], False)
    )


def test_bad_arguments():
    X, y = noisy_clusters(20)
    with pytest.raises(ValueError, match="ref_labels"):
        retrieval_metrics(X, y, X)
    with pytest.raises(ValueError, match="differ"):
        retrieval_metrics(X, y, X, np.eye(20, 3, dtype=bool))
    index = CellIndex.build(X, [str(i) for i in range(20)], IndexConfig(kind="flat"), progress=False)
    with pytest.raises(ValueError, match="reference labels"):
        retrieval_metrics(X, y, ref_labels=y[:5], index=index)
