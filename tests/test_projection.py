import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.manifold import trustworthiness

from hpa_embed.config import IndexConfig
from hpa_embed.index import CellIndex
from hpa_embed.io import DataError
from hpa_embed.visualise.projection import UMAPProjector, knn_graph

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def blobs(n_per=200, d=32, seed=0, centres_seed=0):
    """3 well-separated Gaussian blobs, each varying mostly along 3 directions of its own."""
    centres_rng = np.random.default_rng(centres_seed)
    centres = 4.0 * centres_rng.standard_normal((3, d))
    directions = centres_rng.standard_normal((3, 3, d))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    X = centres[y] + np.einsum("nt,ntd->nd", rng.standard_normal((len(y), 3)), directions[y])
    X += 0.2 * rng.standard_normal(X.shape)
    return X.astype(np.float32), y


def ids(n):
    return np.arange(n).astype(str).astype(object)


def brute_force_knn(X, k):
    """Exact cosine kNN by numpy, the point itself first: (indices, 1 - cosine)."""
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    similarity = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(similarity, np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    distances = 1 - np.take_along_axis(similarity, order, axis=1)
    distances[:, 0] = 0
    return order, distances


def nearest_centre(points, embedding, y):
    """Each point's nearest blob centre on the map (blob centre = mean of its fitted cells)."""
    centres = np.stack([embedding[y == label].mean(axis=0) for label in range(3)])
    return np.linalg.norm(points[:, None] - centres[None], axis=2).argmin(axis=1)


@pytest.fixture(scope="module")
def data():
    return blobs()


@pytest.fixture(scope="module")
def fitted(data):
    X, _ = data
    return UMAPProjector(random_state=0).fit(X)


def test_not_fitted_raises(tmp_path, data):
    projector = UMAPProjector()
    with pytest.raises(NotFittedError):
        projector.transform(data[0])
    with pytest.raises(NotFittedError):
        projector.save(tmp_path / "p")


def test_estimator_contract(fitted, data):
    X, _ = data
    params = fitted.get_params()
    assert params == {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "n_epochs": None,
                      "sample_size": None, "random_state": 0, "index_config": None}
    assert clone(fitted).get_params() == params and not hasattr(clone(fitted), "embedding_")
    assert fitted.embedding_.shape == (len(X), 2) and fitted.embedding_.dtype == np.float32
    assert fitted.n_features_in_ == X.shape[1]
    assert fitted.n_epochs_ == 500  # umap-learn's default below 10,000 points
    np.testing.assert_array_equal(fitted.reference_rows_, np.arange(len(X)))
    assert fitted.index_.kind == "flat" and len(fitted.index_) == len(X)
    assert fitted.umap_params() == {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "n_epochs": None,
                                    "random_state": 0}


def test_fit_returns_self_and_fit_transform_is_embedding(data, monkeypatch):
    X, _ = data
    projector = UMAPProjector(n_epochs=20)
    assert projector.fit(X) is projector
    np.testing.assert_array_equal(UMAPProjector(n_epochs=20).fit_transform(X), projector.embedding_)


def test_blobs_stay_separated(fitted, data):
    X, y = data
    assert trustworthiness(X, fitted.embedding_, n_neighbors=10, metric="cosine") > 0.9
    # every cell is nearest to its own blob's centre on the map
    np.testing.assert_array_equal(nearest_centre(fitted.embedding_, fitted.embedding_, y), y)


def test_precomputed_knn_is_faiss_graph(data, monkeypatch):
    import umap

    X, _ = data
    seen = {}

    class SpyUMAP(umap.UMAP):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(umap, "UMAP", SpyUMAP)
    UMAPProjector(n_neighbors=10, n_epochs=10).fit(X)
    indices, distances = seen["precomputed_knn"]
    expected_indices, expected_distances = brute_force_knn(X, 10)
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(X)))  # umap-learn: itself first
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-5)
    assert {key: seen[key] for key in ("n_neighbors", "min_dist", "metric", "n_epochs", "random_state")} == \
        {"n_neighbors": 10, "min_dist": 0.1, "metric": "cosine", "n_epochs": 10, "random_state": 0}


def test_fit_with_index_equals_fit_without(fitted, data):
    X, _ = data
    index = CellIndex.build(X, ids(len(X)), IndexConfig(kind="flat"), progress=False)
    projector = UMAPProjector(random_state=0).fit(X, index=index)
    assert projector.index_ is index
    np.testing.assert_allclose(projector.embedding_, fitted.embedding_, atol=1e-5)


def test_index_must_hold_x_rows(data):
    X, _ = data
    shuffled = CellIndex.build(X[::-1], ids(len(X)), IndexConfig(kind="flat"), progress=False)
    with pytest.raises(ValueError, match="rows must be X's rows"):
        UMAPProjector(n_epochs=5).fit(X, index=shuffled)
    smaller = CellIndex.build(X[:-1], ids(len(X) - 1), IndexConfig(kind="flat"), progress=False)
    with pytest.raises(ValueError, match="rows must be X's rows"):
        UMAPProjector(n_epochs=5).fit(X, index=smaller)
    l2 = CellIndex.build(X, ids(len(X)), IndexConfig(kind="flat", metric="l2"), progress=False)
    with pytest.raises(ValueError, match="metric"):
        UMAPProjector(n_epochs=5).fit(X, index=l2)


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": "manhattan"}, "metric"),
    ({"index_config": IndexConfig(metric="l2")}, "index_config.metric"),
    ({"n_neighbors": 1}, "n_neighbors"),
    ({"sample_size": 10}, "sample_size"),
])
def test_bad_parameters_refused(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        UMAPProjector(**kwargs).fit(data[0])


def test_transform_places_fitted_points_near_their_coordinates(fitted, data):
    X, y = data
    placed = fitted.transform(X)
    assert placed.shape == (len(X), 2) and placed.dtype == np.float32
    extent = np.ptp(fitted.embedding_, axis=0).max()
    displacement = np.linalg.norm(placed - fitted.embedding_, axis=1)
    assert np.median(displacement) < 0.05 * extent
    np.testing.assert_array_equal(nearest_centre(placed, fitted.embedding_, y), y)


def test_transform_new_points_land_in_their_blob(fitted, data):
    X_new, y_new = blobs(n_per=30, seed=5)  # same blobs, new draws
    placed = fitted.transform(X_new)
    np.testing.assert_array_equal(nearest_centre(placed, fitted.embedding_, data[1]), y_new)
    with pytest.raises(ValueError, match="features"):
        fitted.transform(X_new[:, :5])


def test_save_load_round_trip(fitted, data, tmp_path):
    X_new, _ = blobs(n_per=30, seed=5)
    path = fitted.save(tmp_path / "projector")
    assert not list(path.rglob("*.pkl")) and (path / "projector.json").is_file()
    loaded = UMAPProjector.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.n_features_in_ == fitted.n_features_in_ and loaded.n_epochs_ == fitted.n_epochs_
    np.testing.assert_array_equal(loaded.reference_embedding_, fitted.reference_embedding_)
    np.testing.assert_array_equal(loaded.transform(X_new), fitted.transform(X_new))
    fitted.save(path)  # a projector directory is replaced
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError):
        fitted.save(tmp_path / "other")
    np.save(path / "reference_embedding.npy", np.zeros((len(X_new), 2), dtype=np.float32))
    with pytest.raises(DataError, match="checksum"):
        UMAPProjector.load(path)


def test_sample_fit_places_the_rest(data):
    X, y = data
    projector = UMAPProjector(sample_size=150, n_epochs=100, random_state=1).fit(X)
    rows = projector.reference_rows_
    assert projector.embedding_.shape == (len(X), 2) and len(rows) == 150 == len(projector.index_)
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(projector.embedding_[rows], projector.reference_embedding_)
    rest = np.setdiff1d(np.arange(len(X)), rows)
    np.testing.assert_array_equal(projector.embedding_[rest], projector.transform(X[rest]))
    np.testing.assert_array_equal(nearest_centre(projector.embedding_, projector.embedding_, y), y)


def test_knn_graph_self_first_despite_duplicates():
    X, _ = blobs(n_per=20)
    X = np.vstack([X, X[:5]])  # rows 60..64 duplicate rows 0..4
    index = CellIndex.build(X, ids(len(X)), IndexConfig(kind="flat"), progress=False)
    indices, distances = knn_graph(index, X, 6)
    assert indices.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(X)))
    np.testing.assert_array_equal(distances[:, 0], 0)
    assert set(indices[60:, 1]) == set(range(5))  # the twin comes next, at distance 0
    np.testing.assert_allclose(distances[60:, 1], 0, atol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= -1e-6)
    with pytest.raises(ValueError, match="rows must be X's rows"):
        knn_graph(index, X[:-1], 6)


def test_knn_graph_euclidean_distances_are_not_squared():
    X, _ = blobs(n_per=20)
    index = CellIndex.build(X, ids(len(X)), IndexConfig(kind="flat", metric="l2"), progress=False)
    indices, distances = knn_graph(index, X, 4)
    expected = np.linalg.norm(X[indices] - X[:, None], axis=2)
    np.testing.assert_allclose(distances, expected, rtol=1e-3, atol=1e-3)


def test_ivf_index_and_sample_path(data):
    """The large-set path (an IVF index on a sample, the rest placed) at a small size."""
    X, y = data
    config = IndexConfig(kind="ivf", nlist=4, nprobe=4)
    projector = UMAPProjector(sample_size=300, n_epochs=50, index_config=config).fit(X)
    assert projector.index_.kind == "ivf" and len(projector.index_) == 300
    np.testing.assert_array_equal(nearest_centre(projector.embedding_, projector.embedding_, y), y)


def test_sample_fit_reads_a_memory_mapped_x_block_by_block(tmp_path, monkeypatch):
    import tracemalloc

    from hpa_embed.visualise import projection

    X, y = blobs(n_per=5000, d=256)
    mapped = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=X.shape)
    mapped[:] = X
    mapped.flush()
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    monkeypatch.setattr(projection, "BLOCK_SIZE", 1024)
    projector = UMAPProjector(sample_size=150, n_epochs=50, random_state=1)
    clone(projector).fit(X[:1000])  # numba compiles on first use: not the data's memory
    tracemalloc.start()  # numpy's allocations are traced, the memory map is not
    try:
        embedding = projector.fit_transform(mapped)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 4, f"{peak / 2**20:.1f} MiB traced for a {X.nbytes / 2**20:.1f} MiB X"
    rest = np.setdiff1d(np.arange(len(X)), projector.reference_rows_)
    np.testing.assert_array_equal(embedding[rest], projector.transform(X[rest]))
    assert np.mean(nearest_centre(embedding, embedding, y) == y) > 0.99
