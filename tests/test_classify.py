import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KNeighborsClassifier

from hpa_embed.classify import KNNClassifier
from hpa_embed.config import IndexConfig
from hpa_embed.index import CellIndex

FLAT = IndexConfig(kind="flat")


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def labelled(n, d=12, classes=5, seed=0):
    """Unit vectors near class centres, int labels with 10 % noise; no two points coincide."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    X = centres[y] + 0.8 * rng.standard_normal((n, d))
    noisy = rng.random(n) < 0.1
    y[noisy] = rng.integers(0, classes, noisy.sum())
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    X, y = labelled(800)
    return X[:600], y[:600], X[600:]


@pytest.mark.parametrize("weights", ["distance", "uniform"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_equals_scikit_learn(data, weights, metric):
    X, y, Q = data
    y_named = np.array(["nucleoli", "cytosol", "golgi", "er", "vesicles"])[y]  # any sortable labels
    ours = KNNClassifier(n_neighbors=7, weights=weights, index_config=IndexConfig(kind="flat", metric=metric))
    ours.fit(X, y_named)
    sk_metric = "cosine" if metric == "cosine" else "euclidean"
    theirs = KNeighborsClassifier(n_neighbors=7, weights=weights, algorithm="brute", metric=sk_metric)
    theirs.fit(X, y_named)
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    distances, indices = ours.kneighbors(Q)
    expected_distances, expected_indices = theirs.kneighbors(Q)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.predict_proba(Q), theirs.predict_proba(Q), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(ours.predict(Q), theirs.predict(Q))
    np.testing.assert_array_equal(ours.kneighbors(Q, 3, return_distance=False), expected_indices[:, :3])


def test_multilabel_matches_scikit_learn_multi_output(data):
    X, y, Q = data
    rng = np.random.default_rng(2)
    Y = np.zeros((len(X), 4), dtype=bool)
    Y[np.arange(len(X)), y % 4] = True
    Y |= rng.random(Y.shape) < 0.15
    ours = KNNClassifier(n_neighbors=9, index_config=FLAT).fit(X, Y)
    theirs = KNeighborsClassifier(n_neighbors=9, weights="distance", algorithm="brute", metric="cosine")
    theirs.fit(X, Y.astype(int))
    expected = np.stack([p[:, 1] for p in theirs.predict_proba(Q)], axis=1)  # P(class present)
    np.testing.assert_allclose(ours.predict_proba(Q), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(ours.predict(Q), theirs.predict(Q).astype(bool))
    assert ours.multilabel_ and ours.predict(Q).dtype == bool and ours.classes_.tolist() == [0, 1, 2, 3]


def test_multilabel_proba_hand_computed():
    # Reference cells on a circle; the query sits at angle 0.
    angles = np.array([0.1, -0.3, 0.6, 1.2, 2.5])
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    Y = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=bool)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    model = KNNClassifier(n_neighbors=3, weights="distance", index_config=FLAT).fit(X, Y)
    w = 1 / (1 - np.cos(angles[:3]))  # the three nearest: 0.1, -0.3, 0.6
    expected = np.array([w[0] + w[1], w[1] + w[2], w[0]]) / w.sum()
    np.testing.assert_allclose(model.predict_proba(query)[0], expected, rtol=1e-4)
    np.testing.assert_array_equal(model.predict(query)[0], expected > 0.5)
    uniform = KNNClassifier(n_neighbors=3, weights="uniform", index_config=FLAT).fit(X, Y)
    np.testing.assert_allclose(uniform.predict_proba(query)[0], [2 / 3, 2 / 3, 1 / 3])
    np.testing.assert_array_equal(uniform.predict(query)[0], [True, True, False])


def test_zero_distance_neighbour_takes_the_vote():
    X = np.array([[1, 0], [0.99, 0.141], [0.98, 0.199]], dtype=np.float32)
    model = KNNClassifier(n_neighbors=3, index_config=FLAT).fit(X, np.array([2, 1, 1]))
    # the query is the first reference cell itself: only it votes (scikit-learn's rule)
    np.testing.assert_allclose(model.predict_proba(X[:1]), [[0.0, 1.0]])


def test_not_fitted_and_bad_input(data):
    X, y, Q = data
    with pytest.raises(NotFittedError):
        KNNClassifier().predict(Q)
    with pytest.raises(NotFittedError):
        KNNClassifier().kneighbors(Q)
    with pytest.raises(ValueError, match="weights"):
        KNNClassifier(weights="gaussian").fit(X, y)
    with pytest.raises(ValueError, match="rows"):
        KNNClassifier().fit(X, y[:-1])
    with pytest.raises(ValueError, match="multi-hot"):
        KNNClassifier().fit(X, np.full((len(X), 3), 2))
    model = KNNClassifier(n_neighbors=5, index_config=FLAT).fit(X[:4], y[:4])
    with pytest.raises(ValueError, match="n_neighbors <= n_samples_fit"):
        model.kneighbors(Q)


def test_fit_on_an_existing_index_and_sklearn_contract(data):
    X, y, Q = data
    index = CellIndex.build(X, [f"cell-{i}" for i in range(len(X))], FLAT, progress=False)
    from_index = KNNClassifier(n_neighbors=5).fit(index, y)
    from_array = KNNClassifier(n_neighbors=5, index_config=FLAT).fit(X, y)
    assert from_index.index_ is index
    assert (from_index.n_samples_fit_, from_index.n_features_in_) == (len(X), 12)
    np.testing.assert_array_equal(from_index.predict_proba(Q), from_array.predict_proba(Q))
    params = from_index.get_params()
    assert params == {"n_neighbors": 5, "weights": "distance", "index_config": None, "threshold": 0.5}
    assert not hasattr(clone(from_index), "index_")
    X_all, y_all = labelled(800)
    assert 0.6 < from_array.score(X_all[600:], y_all[600:]) < 0.95  # learnable, but 10 % label noise


def test_ivf_index_agrees_with_exact(data):
    X, y, Q = data
    exact = KNNClassifier(n_neighbors=10, index_config=FLAT).fit(X, y)
    approximate = KNNClassifier(n_neighbors=10, index_config=IndexConfig(kind="ivf", nlist=8, nprobe=3))
    approximate.fit(X, y)
    assert approximate.index_.kind == "ivf"
    assert np.mean(approximate.predict(Q) == exact.predict(Q)) > 0.9


def test_head_probabilities_apply_the_trained_classifier(tmp_path):
    import torch

    from hpa_embed.classify import head_probabilities
    from hpa_embed.config import ModelConfig
    from hpa_embed.models import create_model, save_checkpoint

    config = ModelConfig(arch="resnet18", in_chans=3, crop_size=32, embedding_dim=8)
    model = create_model(config).eval()
    checkpoint = save_checkpoint(tmp_path / "m", model, config, extra={"loss": {"classification": "ce"}})
    X = torch.nn.functional.normalize(torch.randn(5, 8), dim=1).numpy()
    logits = model.classifier(torch.from_numpy(X)).detach()
    softmax = head_probabilities(checkpoint, X)
    np.testing.assert_allclose(softmax, torch.softmax(logits, 1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(softmax.sum(axis=1), 1, rtol=1e-5)
    sigmoid = head_probabilities(model, X)  # no training record: multi-label sigmoid
    np.testing.assert_allclose(sigmoid, torch.sigmoid(logits).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="8 dimensions"):
        head_probabilities(model, X[:, :4])


def test_image_scores_are_the_union_of_cells_and_fuse_back():
    from hpa_embed.classify import aggregate_images, fuse_scores

    P = np.array([[0.1, 0.9], [0.7, 0.2], [0.3, 0.3]], dtype=np.float32)
    images, image_P = aggregate_images(P, ["b", "a", "b"])
    assert list(images) == ["a", "b"]
    np.testing.assert_allclose(image_P, [[0.7, 0.2], [0.3, 0.9]])
    index = np.array([1, 0, 1])
    np.testing.assert_allclose(
        fuse_scores(P, image_P, index, weight=0.5), [[0.2, 0.9], [0.7, 0.2], [0.3, 0.6]], rtol=1e-6
    )
    np.testing.assert_allclose(
        fuse_scores(P, image_P, index, weight=0.5, method="geometric")[2],
        [0.3, np.sqrt(0.3 * 0.9)],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="weight"):
        fuse_scores(P, image_P, index, weight=2)


def test_knn_predictions_index_a_memory_mapped_reference_block_by_block(tmp_path, monkeypatch):
    import tracemalloc

    import pandas as pd

    from hpa_embed import classify, index
    from hpa_embed.classify import predict_cells
    from hpa_embed.embed import Embeddings, write_embeddings
    from hpa_embed.labels import HPA2021

    X, y = labelled(10_000, d=512, classes=4)
    split = np.where(np.arange(len(X)) % 3 == 0, "test", "train")
    cells = pd.DataFrame({"cell_id": [f"cell-{i}" for i in range(len(X))], "image_id": "image",
                          "image_labels": [[int(label)] for label in y], "split": split})
    write_embeddings(tmp_path / "reference", Embeddings(X, cells, {}))
    test = np.flatnonzero(split == "test")[:300]  # cells of another split: none is its own neighbour
    queries = Embeddings(X[test], cells.iloc[test], {})
    monkeypatch.setattr(index, "BLOCK_SIZE", 256)
    tracemalloc.start()  # numpy's allocations are traced, the memory map and FAISS's storage are not
    try:
        P = predict_cells(queries, "knn", reference=tmp_path / "reference", index_config=FLAT,
                          negative="model", reference_splits="train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 2, f"{peak / 2**20:.1f} MiB traced for a {X.nbytes / 2**20:.1f} MiB reference"
    train = split == "train"
    expected = KNNClassifier(index_config=FLAT).fit(X[train], HPA2021.to_multi_hot(y[train, None]))
    np.testing.assert_allclose(P, expected.predict_proba(X[test]), atol=1e-6)
    monkeypatch.setattr(classify, "BLOCK_SIZE", 64)  # queries in blocks: the same votes
    np.testing.assert_allclose(expected.predict_proba(X[test]), P, atol=1e-6)
