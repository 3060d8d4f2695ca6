import json
import shutil

import numpy as np
import pandas as pd
import pytest

from hpa_embed.config import IndexConfig, read_config_file, write_config_file
from hpa_embed.index import (
    CellIndex,
    index_embeddings,
    neighbours_table,
    resolve_kind,
    resolve_nlist,
)
from hpa_embed.index_shards import merge_shards
from hpa_embed.io import DataError, read_header, write_header

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def clustered(n, d=16, clusters=20, spread=0.3, seed=0):
    """Unit vectors around random cluster centres (embedding-like, no exact ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    X = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def ids_for(n, prefix="cell"):
    return np.array([f"{prefix}-{i}" for i in range(n)], dtype=object)


def brute_force(X, Q, k, metric="cosine"):
    """Exact neighbours by numpy: (scores, rows), best first."""
    if metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        scores = Q.astype(np.float64) @ X.T.astype(np.float64)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = ((Q[:, None, :].astype(np.float64) - X[None].astype(np.float64)) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def data():
    X = clustered(2000)
    return X, ids_for(len(X)), clustered(50, seed=1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_flat_search_equals_brute_force(data, metric):
    X, ids, Q = data
    X = X * np.linspace(0.5, 2, len(X), dtype=np.float32)[:, None]  # not normalised: cosine must normalise
    index = CellIndex.build(X, ids, IndexConfig(kind="flat", metric=metric), progress=False)
    assert index.kind == "flat" and len(index) == len(X)
    scores, rows = index.search_rows(Q, 10)
    expected_scores, expected_rows = brute_force(X, Q, 10, metric)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
    _, cell_ids = index.search(Q, 10)
    np.testing.assert_array_equal(cell_ids, ids[expected_rows])
    assert scores.dtype == np.float32 and cell_ids.dtype == object


def test_auto_kind_and_nlist():
    config = IndexConfig(flat_threshold=1000)
    assert resolve_kind(config, 999) == "flat" and resolve_kind(config, 1000) == "ivf"
    with pytest.raises(ValueError, match="n_total"):
        resolve_kind(config, None)
    assert resolve_nlist(IndexConfig(), 1_000_000, 1_000_000) == 4000
    assert resolve_nlist(IndexConfig(), 1_000_000, 39 * 100) == 100  # capped by the training sample
    assert resolve_nlist(IndexConfig(nlist=7), 50, 50) == 7
    with pytest.raises(ValueError):
        IndexConfig(kind="hnsw")
    with pytest.raises(ValueError):
        IndexConfig(nprobe=0)


def test_index_config_round_trips_through_toml(tmp_path):
    config = IndexConfig(kind="ivfpq", nlist=None, nprobe=8, pq_m=8, metric="l2")
    write_config_file(tmp_path / "run.toml", {"index": config})
    assert read_config_file(tmp_path / "run.toml").index == config


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ivf_with_all_probes_equals_exact(data, kind):
    X, ids, Q = data
    config = IndexConfig(kind=kind, nlist=8, nprobe=8, pq_m=8)
    index = CellIndex.build(X, ids, config, progress=False)
    assert (index.kind, index.nlist, index.nprobe) == (kind, 8, 8)
    scores, rows = index.search_rows(Q, 10)
    expected_scores, expected_rows = brute_force(X, Q, 10)
    if kind == "ivf":
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    else:  # product quantisation approximates the vectors: most true neighbours still come back
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, expected_rows)])
        assert recall > 0.6


def test_fewer_probes_still_finds_most_neighbours(data):
    X, ids, Q = data
    index = CellIndex.build(X, ids, IndexConfig(kind="ivf", nlist=16, nprobe=1), progress=False)
    exact = brute_force(X, Q, 10)[1]
    recall = {}
    for nprobe in (1, 4, 16):
        index.nprobe = nprobe
        rows = index.search_rows(Q, 10)[1]
        recall[nprobe] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
    assert 0.3 < recall[1] <= recall[4] <= recall[16] == 1.0
    assert index.config.nprobe == 16


def test_missing_neighbours_when_k_exceeds_n(data):
    X, ids, Q = data
    for kind, missing in (("flat", -np.inf), ("ivf", -np.inf)):
        index = CellIndex.build(X[:5], ids[:5], IndexConfig(kind=kind, nlist=1), progress=False)
        scores, cell_ids = index.search(Q[:2], 8)
        assert cell_ids.shape == (2, 8)
        assert all(c is None for c in cell_ids[:, 5:].ravel())
        assert all(c is not None for c in cell_ids[:, :5].ravel())
        assert np.all(scores[:, 5:] == missing) and np.isfinite(scores[:, :5]).all()
        _, rows = index.search_rows(Q[:2], 8)
        assert np.all(rows[:, 5:] == -1)
    l2 = CellIndex.build(X[:5], ids[:5], IndexConfig(kind="flat", metric="l2"), progress=False)
    assert np.all(l2.search(Q[:1], 7)[0][:, 5:] == np.inf)
    empty = CellIndex.train_empty(X, IndexConfig(kind="flat"))
    scores, cell_ids = empty.search(Q[:3], 2)
    assert cell_ids.shape == (3, 2) and all(c is None for c in cell_ids.ravel())


def test_add_and_duplicate_ids(data):
    X, ids, Q = data
    index = CellIndex.build(X[:1000], ids[:1000], IndexConfig(kind="flat"), progress=False)
    index.add(X[1000:], ids[1000:])
    assert len(index) == len(X) and "cell-1999" in index
    np.testing.assert_array_equal(index.search_rows(Q, 5)[1], brute_force(X, Q, 5)[1])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(X[:2], ["new", "cell-3"])
    with pytest.raises(ValueError, match="duplicate"):
        index.add(X[:2], ["twice", "twice"])
    with pytest.raises(ValueError, match="duplicate"):
        CellIndex.build(X[:3], ["a", "b", "a"], IndexConfig(kind="flat"))
    with pytest.raises(ValueError, match="columns"):
        index.add(X[:2, :8], ["x", "y"])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 16), np.nan, np.float32), ["nan"])
    assert len(index) == len(X)  # refused adds changed nothing
    assert index.rows_of(["cell-5", "cell-1500"]).tolist() == [5, 1500]
    with pytest.raises(KeyError, match="nope"):
        index.rows_of("nope")


def test_search_cell_excludes_itself(data):
    X, ids, _ = data
    for config in (IndexConfig(kind="flat"), IndexConfig(kind="ivf", nlist=8, nprobe=8)):
        index = CellIndex.build(X, ids, config, progress=False)
        scores, cell_ids = index.search_cell("cell-7", 5)
        expected_scores, expected_rows = brute_force(X, X[7:8], 6)
        assert cell_ids.shape == (5,) and "cell-7" not in cell_ids
        np.testing.assert_array_equal(cell_ids, ids[expected_rows[0, 1:]])
        np.testing.assert_allclose(scores, expected_scores[0, 1:], atol=1e-5)
        many_scores, many = index.search_cell(["cell-7", "cell-8"], 5)
        np.testing.assert_array_equal(many[0], cell_ids)
        assert many.shape == (2, 5) and "cell-8" not in many[1]
        np.testing.assert_allclose(index.reconstruct("cell-9"), X[9], atol=1e-6)


def test_search_rows_exclude_drops_last_when_self_absent(data):
    X, ids, Q = data
    index = CellIndex.build(X, ids, IndexConfig(kind="flat"), progress=False)
    _, plain = index.search_rows(Q[:2], 4)
    _, rows = index.search_rows(Q[:2], 3, exclude_rows=np.array([plain[0, 1], 10**6]))
    np.testing.assert_array_equal(rows[0], plain[0, [0, 2, 3]])  # excluded row removed
    np.testing.assert_array_equal(rows[1], plain[1, :3])  # absent: the extra one is dropped


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_save_load_round_trip(tmp_path, data, kind):
    X, ids, Q = data
    index = CellIndex.build(X, ids, IndexConfig(kind=kind, nlist=8, nprobe=3, pq_m=8), progress=False)
    before = index.search(Q, 7)
    index.save(tmp_path / "idx")
    loaded = CellIndex.load(tmp_path / "idx")
    after = loaded.search(Q, 7)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert (loaded.kind, loaded.nprobe, len(loaded)) == (kind, index.nprobe, len(X))
    assert loaded.config == index.config
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (meta["count"], meta["dimension"], meta["metric"], meta["version"]) == (len(X), 16, "cosine", 1)
    table = pd.read_parquet(tmp_path / "idx" / "cell_ids.parquet")
    assert table["faiss_id"].tolist() == list(range(len(X))) and table["cell_id"].tolist() == ids.tolist()
    loaded.add(Q[:1], ["query-0"])  # a loaded in-memory index grows
    loaded.save(tmp_path / "idx")  # and replaces its own directory
    assert len(CellIndex.load(tmp_path / "idx")) == len(X) + 1
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary left behind


def test_index_format_round_trips_plain_pieces(tmp_path, data):
    """The format layer writes and reads the pieces of an index without CellIndex."""
    import subprocess
    import sys

    import faiss

    from hpa_embed.index_format import extract_ivf, faiss_metric, load_index_files, save_index_files

    X, ids, _ = data
    config = IndexConfig(kind="flat", metric="l2")
    flat = faiss.IndexFlat(X.shape[1], faiss_metric("l2"))
    flat.add(X[:20])
    assert save_index_files(tmp_path / "idx", flat, ids[:20], config, "flat", id_offset=0) == tmp_path / "idx"
    files = load_index_files(tmp_path / "idx")
    assert (files.faiss_index.ntotal, files.config, files.kind, files.id_offset) == (20, config, "flat", 0)
    assert files.trained is None and not files.on_disk and extract_ivf(files.faiss_index) is None
    assert files.cell_ids.tolist() == ids[:20].tolist()
    assert len(CellIndex.load(tmp_path / "idx")) == 20
    code = "import sys, hpa_embed.index_format; sys.exit('hpa_embed.index' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # the lower layer stands alone


def test_save_refuses_to_replace_other_directories(tmp_path, data):
    X, ids, _ = data
    index = CellIndex.build(X[:10], ids[:10], IndexConfig(kind="flat"), progress=False)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a CellIndex directory"):
        index.save(tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "keep me"


def test_corrupt_or_mismatched_files_are_refused(tmp_path, data):
    X, ids, _ = data
    CellIndex.build(X, ids, IndexConfig(kind="ivf", nlist=8), progress=False).save(tmp_path / "good")

    def broken(name, change):
        target = tmp_path / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(tmp_path / "good", target)
        change(target)
        return target

    def flip_byte(path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    cases = {
        "index.faiss": lambda d: flip_byte(d / "index.faiss"),
        "cell_ids.parquet": lambda d: (d / "cell_ids.parquet").unlink(),
        "index.json": lambda d: (d / "index.json").write_text("{not json"),
        "trained.faiss": lambda d: flip_byte(d / "trained.faiss"),
    }
    for name, change in cases.items():
        with pytest.raises(DataError) as error:
            CellIndex.load(broken("bad", change))
        assert name in str(error.value)

    def mismatch(d):  # consistent checksums, wrong count: the description must be checked too
        meta = json.loads((d / "index.json").read_text())
        meta["count"] = 5
        (d / "index.json").write_text(json.dumps(meta))

    with pytest.raises(DataError, match="index.faiss"):
        CellIndex.load(broken("bad", mismatch))

    def other_ids(d):
        table = pd.DataFrame({"faiss_id": np.arange(len(X)), "cell_id": ["same"] * len(X)})
        table.to_parquet(d / "cell_ids.parquet")
        meta = json.loads((d / "index.json").read_text())
        meta["files"]["cell_ids.parquet"].pop("sha256")
        (d / "index.json").write_text(json.dumps(meta))

    with pytest.raises(DataError, match="cell_ids.parquet"):
        CellIndex.load(broken("bad", other_ids))
    with pytest.raises(DataError, match="index.json"):
        CellIndex.load(tmp_path / "nowhere")


def test_read_header_refuses_each_bad_file(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"0123456789")
    (tmp_path / "big.bin").write_bytes(b"x" * 100)
    header = write_header(tmp_path / "h.json", "test.format", 2, {"answer": 42}, files=["data.bin"],
                          large_files=["big.bin"])
    assert header["files"] == {
        "data.bin": {"sha256": "84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882"},
        "big.bin": {"bytes": 100},
    }
    good = json.loads((tmp_path / "h.json").read_text())
    assert good == header and good["answer"] == 42 and good["library_version"]
    assert read_header(tmp_path / "h.json", "test.format", {1, 2}) == header

    def refused(problem, *, text=None, change=None, versions=(1, 2), name="h.json"):
        (tmp_path / "h.json").write_text(json.dumps(good) if text is None else text)
        (tmp_path / "data.bin").write_bytes(b"0123456789")
        (tmp_path / "big.bin").write_bytes(b"x" * 100)
        if change:
            change()
        with pytest.raises(DataError, match=problem) as error:
            read_header(tmp_path / "h.json", "test.format", versions, what="test file")
        assert error.value.path == tmp_path / name

    with pytest.raises(DataError, match="not found"):
        read_header(tmp_path / "nowhere.json", "test.format", {2})
    refused("not valid JSON", text="{not json")
    refused("expected a JSON object", text="[1, 2]")
    refused("not a test file .*format 'other'", text=json.dumps({**good, "format": "other"}))
    refused("format version 2 is not supported .*reads 1", versions={1})
    refused("format version True is not supported", text=json.dumps({**good, "version": True}))
    refused("missing", change=(tmp_path / "data.bin").unlink, name="data.bin")
    refused("checksum mismatch", change=lambda: (tmp_path / "data.bin").write_bytes(b"0123456780"),
            name="data.bin")
    refused("size 99 bytes, expected 100", change=lambda: (tmp_path / "big.bin").write_bytes(b"x" * 99),
            name="big.bin")
    with pytest.raises(ValueError, match="reserved"):
        write_header(tmp_path / "h.json", "test.format", 1, {"version": 3})


def test_build_from_blocks_equals_build(data):
    X, ids, Q = data
    config = IndexConfig(kind="ivf", nlist=8, nprobe=4)
    whole = CellIndex.build(X, ids, config, progress=False)
    blocks = ((X[i : i + 300], ids[i : i + 300]) for i in range(0, len(X), 300))
    by_blocks = CellIndex.build_from_blocks(blocks, config, n_total=len(X), train_X=X, progress=False)
    np.testing.assert_array_equal(whole.search_rows(Q, 10)[1], by_blocks.search_rows(Q, 10)[1])
    np.testing.assert_array_equal(by_blocks.cell_ids, ids)
    flat = CellIndex.build_from_blocks(
        iter([(X[:10], ids[:10]), (X[10:20], ids[10:20])]),
        IndexConfig(kind="auto"),
        n_total=20,
        progress=False,
    )
    assert flat.kind == "flat" and len(flat) == 20


def test_shards_merge_to_the_single_index(tmp_path, data):
    X, ids, Q = data
    config = IndexConfig(kind="ivf", nlist=8, nprobe=3)
    CellIndex.train_empty(X, config).save(tmp_path / "trained")
    single = CellIndex.load(tmp_path / "trained")
    single.add(X, ids)
    bounds = [(0, 300), (300, 1250), (1250, 2000)]  # unequal sizes on purpose
    paths = []
    for number, (start, stop) in enumerate(bounds):
        shard = CellIndex.load(tmp_path / "trained").new_shard(id_offset=start)
        shard.add(X[start:stop], ids[start:stop])
        np.testing.assert_allclose(shard.reconstruct(ids[start + 1]), X[start + 1], atol=1e-6)
        paths.append(shard.save(tmp_path / f"shard-{number}"))
    merged = merge_shards(paths[::-1], tmp_path / "merged")  # any order: sorted by id offset
    assert merged.is_on_disk and len(merged) == len(X) and (tmp_path / "merged" / "index.ivfdata").is_file()
    for got, expected in zip(merged.search(Q, 10), single.search(Q, 10)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        merged.search_cell("cell-1999", 4)[1], single.search_cell("cell-1999", 4)[1]
    )
    with pytest.raises(ValueError, match="read-only"):
        merged.add(Q[:1], ["new"])
    # the merged directory can move and be copied
    (tmp_path / "merged").rename(tmp_path / "moved")
    moved = CellIndex.load(tmp_path / "moved")
    np.testing.assert_array_equal(moved.search(Q, 10)[1], single.search(Q, 10)[1])
    moved.save(tmp_path / "copy")
    np.testing.assert_array_equal(CellIndex.load(tmp_path / "copy").search(Q, 10)[1], single.search(Q, 10)[1])


def test_merge_refuses_gaps_and_foreign_shards(tmp_path, data):
    X, ids, _ = data
    config = IndexConfig(kind="ivf", nlist=8)
    trained = CellIndex.train_empty(X, config)
    first = trained.new_shard(0)
    first.add(X[:100], ids[:100])
    gap = trained.new_shard(150)
    gap.add(X[150:200], ids[150:200])
    with pytest.raises(DataError, match="contiguous"):
        merge_shards([first.save(tmp_path / "a"), gap.save(tmp_path / "b")], tmp_path / "m")
    other = CellIndex.train_empty(X[::-1].copy(), IndexConfig(kind="ivf", nlist=8, seed=3)).new_shard(100)
    other.add(X[100:200], ids[100:200])
    with pytest.raises(DataError, match="trained differently"):
        merge_shards([tmp_path / "a", other.save(tmp_path / "c")], tmp_path / "m")
    with pytest.raises(ValueError, match="IVF"):
        CellIndex.train_empty(X, IndexConfig(kind="flat")).new_shard(0)
    assert not (tmp_path / "m").exists()


def test_index_embeddings_directory(tmp_path, data):
    from hpa_embed.embed import Embeddings, write_embeddings

    X, ids, Q = data
    cells = pd.DataFrame({"cell_id": ids, "image_id": ["img"] * len(X)})
    write_embeddings(tmp_path / "emb", Embeddings(X, cells, {}))
    index = index_embeddings(
        tmp_path / "emb", tmp_path / "idx", IndexConfig(kind="flat"), block_size=512, progress=False
    )
    assert len(CellIndex.load(tmp_path / "idx")) == len(X)
    np.testing.assert_array_equal(index.search(Q, 5)[1], ids[brute_force(X, Q, 5)[1]])


def test_neighbours_table(data):
    X, ids, _ = data
    index = CellIndex.build(X[:3], ids[:3], IndexConfig(kind="flat"), progress=False)
    scores, cell_ids = index.search_cell(["cell-0", "cell-2"], 3)  # only 2 others exist: one missing each
    table = neighbours_table(["cell-0", "cell-2"], scores, cell_ids)
    assert table.columns.tolist() == ["query", "rank", "cell_id", "score"]
    assert table["query"].tolist() == ["cell-0", "cell-0", "cell-2", "cell-2"]
    assert table["rank"].tolist() == [1, 2, 1, 2]
    assert set(table["cell_id"][:2]) == {"cell-1", "cell-2"}
    assert set(table["cell_id"][2:]) == {"cell-0", "cell-1"}
    np.testing.assert_allclose(table["score"][:2], scores[0, :2])


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_threads_searching_one_index_get_the_sequential_results(data, kind):
    from concurrent.futures import ThreadPoolExecutor

    X, ids, Q = data
    config = IndexConfig(kind=kind, nlist=16, nprobe=4, pq_m=4)

    def fresh():  # nothing built lazily yet: the threads race to build the id map and direct map
        return CellIndex.build(X, ids, config, progress=False)

    queries = [ids[i : i + 5].tolist() for i in range(0, 400, 5)]
    sequential = fresh()
    expected = [sequential.search_cell(q, 7) for q in queries] + [sequential.search(Q, 7)]
    for _ in range(3):
        index = fresh()
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(lambda q, index=index: index.search_cell(q, 7), queries))
        found.append(index.search(Q, 7))
        for (scores, cells), (want_scores, want_cells) in zip(found, expected):
            np.testing.assert_array_equal(cells, want_cells)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
