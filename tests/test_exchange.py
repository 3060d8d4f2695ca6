"""export_anndata / import_embeddings: h5ad out to scanpy, other models' embeddings in."""

import re

import anndata
import numpy as np
import pandas as pd
import pytest

from hpa_embed.classify import predict_cells, read_predictions, write_predictions
from hpa_embed.cli import main
from hpa_embed.config import (
    IndexConfig,
    MapConfig,
    RunConfig,
)
from hpa_embed.embed import Embeddings, read_embeddings
from hpa_embed.evaluate import evaluate_predictions
from hpa_embed.exchange import _from_uns, export_anndata, import_embeddings
from hpa_embed.index import CellIndex, index_embeddings
from hpa_embed.io import DataError, HpaEmbedError
from hpa_embed.labels import HPA2021
from hpa_embed.pipeline import load_named_config, run_pipeline
from hpa_embed.store import CellStore


def tiny_config() -> RunConfig:
    """The shipped toy config with maps (no interactive map)."""
    tiny = load_named_config("tiny")
    return tiny.replace(map=MapConfig(enabled=True, interactive=False, n_neighbors=5))


def as_lists(values):
    return [None if v is None else [int(c) for c in v] for v in values]


def labels_text(values):
    return [None if v is None else "|".join(str(int(c)) for c in v) for v in values]


def assert_same_cells(actual: pd.DataFrame, expected: pd.DataFrame):
    lists = [name for name in ("image_labels", "true_labels") if name in expected]
    for name in lists:
        assert as_lists(actual[name]) == as_lists(expected[name]), name
    pd.testing.assert_frame_equal(actual.drop(columns=lists).reset_index(drop=True),
                                  expected.drop(columns=lists).reset_index(drop=True))


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_faiss_thread):
    """A finished tiny run, maps included (no interactive map)."""
    out = tmp_path_factory.mktemp("run") / "out"
    run_pipeline(tiny_config(), out, until_stage="map", workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    path = tmp_path_factory.mktemp("h5ad") / "cells.h5ad"
    export_anndata(run, path)
    return path


@pytest.fixture(scope="module")
def features(tiny_store_path):
    """Intensity statistics of every cell of the tiny store, float64 [N, 12]: another "model"."""
    store = CellStore.open(tiny_store_path)
    crops = store.get_crops(store.cells["row"].to_numpy()).astype(np.float64) / 255
    pixels = crops.reshape(len(crops), crops.shape[1], -1)
    return np.concatenate([pixels.mean(2), pixels.std(2), np.percentile(pixels, 90, axis=2)], axis=1)


# --------------------------------------------------------------------------- export


def test_export_of_a_run_reads_back(run, exported):
    adata = anndata.read_h5ad(exported)
    embedded = read_embeddings(run / "embeddings")
    cells = embedded.cells
    assert adata.X.dtype == np.float32 and np.array_equal(adata.X, embedded.X)
    assert adata.obs_names.tolist() == cells["cell_id"].tolist()
    assert adata.obs["image_id"].tolist() == cells["image_id"].tolist()
    assert adata.obs["split"].tolist() == cells["split"].tolist()
    assert adata.obs["row"].tolist() == cells["row"].tolist()
    for name in ("image_labels", "true_labels"):
        encoded = [None if pd.isna(v) else v for v in adata.obs[name]]
        assert encoded == labels_text(cells[name])
        assert adata.obsm[f"Y_{name}"].dtype == bool
        assert np.array_equal(adata.obsm[f"Y_{name}"], HPA2021.to_multi_hot(
            [[] if v is None else list(v) for v in cells[name]]))
    assert any("|" in v for v in adata.obs["image_labels"].dropna())  # some image has several classes

    for method in ("head", "knn"):
        predicted_cells, probabilities = read_predictions(run / "predictions" / method)
        assert predicted_cells["cell_id"].tolist() == cells["cell_id"].tolist()
        got = adata.obsm[f"probabilities_{method}"]
        assert got.dtype == np.float32 and got.shape == (len(cells), 19)
        assert np.array_equal(got, probabilities)
        top = [HPA2021.names[k] for k in probabilities.argmax(1)]
        assert adata.obs[f"predicted_{method}"].tolist() == top
        assert list(adata.uns[f"predicted_{method}_colors"]) == list(HPA2021.colours)
    assert np.array_equal(adata.obsm["X_umap"], np.load(run / "maps" / "coordinates.npy"))

    classes = adata.uns["classes"]
    assert list(classes["names"]) == list(HPA2021.names) and list(classes["ids"]) == list(range(19))
    assert RunConfig.from_dict(_from_uns(adata.uns["config"])) == tiny_config()
    assert adata.uns["embed"]["checkpoint"] == embedded.meta["checkpoint"]
    assert adata.uns["embed"]["split"] == "none"  # None, written as config.toml writes it


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # scanpy's own use of matplotlib
def test_scanpy_takes_the_export_as_it_is(exported):
    sc = pytest.importorskip("scanpy")
    adata = sc.read_h5ad(exported)
    sc.pp.neighbors(adata, n_neighbors=5, use_rep="X")
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    axes = sc.pl.umap(adata, color=["predicted_head", "split"], show=False)
    assert len(axes) == 2
    import matplotlib.pyplot as plt

    plt.close("all")


def test_export_choices(run, tmp_path):
    only_knn = export_anndata(run, method="knn")
    assert {key for key in only_knn.obsm if key.startswith("probabilities")} == {"probabilities_knn"}
    assert "predicted_head" not in only_knn.obs
    plain = export_anndata(run / "embeddings", tmp_path / "plain.h5ad")
    assert "X_umap" not in plain.obsm and "config" not in plain.uns
    assert anndata.read_h5ad(tmp_path / "plain.h5ad").n_obs == plain.n_obs
    with pytest.raises(DataError, match="predictions/fusion: no predictions by 'fusion'"):
        export_anndata(run, method="fusion")
    with pytest.raises(DataError, match="give the run folder"):
        export_anndata(run / "embeddings", method="head")
    with pytest.raises(DataError, match="neither a run folder"):
        export_anndata(tmp_path)


def test_strings_and_labels_survive_h5ad(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 3)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    cells = pd.DataFrame({
        "cell_id": ["a", "b", "c", "d"],
        "image_id": ["i1", "i1", "i2", "i2"],
        "cell_line": ["U2OS", None, "A-431", "U2OS"],
        "image_labels": [[0, 5], [18], None, [16]],
        "true_labels": [[0], [], None, [16, 2]],
        "split": ["train", "train", "test", "test"],
    })
    adata = export_anndata(Embeddings(X, cells, {"note": None}), tmp_path / "cells.h5ad")
    assert adata.obs["true_labels"].tolist()[:2] == ["0", ""] and pd.isna(adata.obs["true_labels"].iloc[2])
    back = import_embeddings(tmp_path / "cells.h5ad")
    assert np.array_equal(back.X, X)
    assert_same_cells(back.cells, cells)
    assert back.cells["cell_line"].tolist() == ["U2OS", None, "A-431", "U2OS"]
    assert back.meta["note"] == "none" and back.meta["imported"]["key"] == "X"


# --------------------------------------------------------------------------- import


def test_round_trip_gives_the_same_embeddings(run, exported, tmp_path):
    original = read_embeddings(run / "embeddings")
    imported = import_embeddings(exported, out=tmp_path / "embeddings")
    again = read_embeddings(tmp_path / "embeddings")
    for result in (imported, again):
        assert result.X.dtype == np.float32 and np.array_equal(result.X, original.X)
        assert_same_cells(result.cells, original.cells)
    assert again.meta["checkpoint"] == original.meta["checkpoint"]
    # the embed provenance travels: the head classifier still finds its checkpoint
    _, head = read_predictions(run / "predictions" / "head")
    np.testing.assert_allclose(predict_cells(tmp_path / "embeddings", "head"), head, atol=1e-6)


def test_external_features_go_through_every_stage(tiny_store_path, features, tmp_path, one_faiss_thread):
    store = CellStore.open(tiny_store_path)
    np.save(tmp_path / "features.npy", features)
    table = tmp_path / "cells.parquet"
    store.cells.to_parquet(table, index=False)
    imported = import_embeddings(tmp_path / "features.npy", cells=table, out=tmp_path / "embeddings")
    expected = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    assert imported.X.dtype == np.float32
    np.testing.assert_allclose(imported.X, expected, rtol=1e-6)
    assert_same_cells(imported.cells, store.cells)

    index = index_embeddings(tmp_path / "embeddings", tmp_path / "index", IndexConfig(kind="flat"),
                             progress=False)
    X, ids = imported.X, imported.cell_ids
    query = 7
    scores, found = CellIndex.load(tmp_path / "index").search_cell(ids[query], 5)
    similarity = X.astype(np.float64) @ X[query].astype(np.float64)
    similarity[query] = -np.inf
    brute = np.argsort(-similarity, kind="stable")[:5]
    assert found.tolist() == ids[brute].tolist()
    np.testing.assert_allclose(scores, similarity[brute], atol=1e-5)

    train = (imported.cells["split"] == "train").to_numpy()
    reference = Embeddings(imported.X[train], imported.cells[train].reset_index(drop=True), imported.meta)
    probabilities = predict_cells(tmp_path / "embeddings", "knn", reference=reference,
                                  label_mode="true_labels", n_neighbors=5)
    assert probabilities.shape == (len(X), 19) and np.isfinite(probabilities).all()
    with pytest.raises(HpaEmbedError, match="method 'head' needs the checkpoint"):
        predict_cells(tmp_path / "embeddings", "head")
    write_predictions(tmp_path / "predictions", imported, probabilities, "knn")
    summary = evaluate_predictions(tmp_path / "predictions", tmp_path / "evaluation", progress=False)
    assert 0 <= summary["scores"]["cell_map"] <= 1 and summary["cells"] > 0

    from hpa_embed.visualise import draw_cell_maps

    written = draw_cell_maps(tmp_path / "embeddings", store, tmp_path / "maps", index=index,
                             predictions=tmp_path / "predictions", interactive=False, progress=False)
    assert np.load(written["coordinates"]).shape == (len(X), 2)
    assert written["map_prediction"].is_file()


def test_h5ad_features_join_the_store_by_cell_id(tiny_store_path, features, tmp_path):
    store = CellStore.open(tiny_store_path)
    ids = store.cells["cell_id"].to_numpy(dtype=object)
    rng = np.random.default_rng(1)
    chosen = rng.permutation(len(ids))[: len(ids) // 2]  # half of the cells, shuffled
    adata = anndata.AnnData(obs=pd.DataFrame(index=pd.Index(ids[chosen].astype(str))))
    adata.obsm["features"] = features[chosen]
    adata.write_h5ad(tmp_path / "embeddings.h5ad")
    imported = import_embeddings(tmp_path / "embeddings.h5ad", cells=tiny_store_path, key="features")
    kept = np.sort(chosen)  # the store's order
    assert_same_cells(imported.cells, store.cells.iloc[kept])
    expected = features[kept] / np.linalg.norm(features[kept], axis=1, keepdims=True)
    np.testing.assert_allclose(imported.X, expected, rtol=1e-6)
    assert imported.meta["imported"]["cells"].endswith("cells.parquet")

    # ids in an obs column; the table from a CSV with "|"-joined labels
    renamed = anndata.AnnData(X=features[chosen].astype(np.float32),
                              obs=pd.DataFrame({"cell": ids[chosen].astype(str)},
                                               index=[f"r{i}" for i in range(len(chosen))]))
    renamed.write_h5ad(tmp_path / "named.h5ad")
    csv = store.cells.assign(image_labels=labels_text(store.cells["image_labels"]),
                             true_labels=labels_text(store.cells["true_labels"]))
    csv.to_csv(tmp_path / "cells.csv", index=False)
    again = import_embeddings(tmp_path / "named.h5ad", cells=tmp_path / "cells.csv", id_column="cell")
    assert again.cell_ids.tolist() == ids[kept].tolist()
    assert as_lists(again.cells["image_labels"]) == as_lists(store.cells["image_labels"].iloc[kept])


def test_bad_inputs_are_refused_naming_the_file(tiny_store_path, features, tmp_path):
    store = CellStore.open(tiny_store_path)
    ids = store.cells["cell_id"].astype(str).tolist()
    X = features[:3].astype(np.float32)

    def refused(path, message, **kwargs):
        with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + message):
            import_embeddings(path, **kwargs)

    duplicated = tmp_path / "duplicated.h5ad"
    anndata.AnnData(X=X, obs=pd.DataFrame({"cell_id": [ids[0], ids[1], ids[0]]},
                                          index=["a", "b", "c"])).write_h5ad(duplicated)
    refused(duplicated, "duplicate cell id", cells=tiny_store_path)
    unknown = tmp_path / "unknown.h5ad"
    anndata.AnnData(X=X, obs=pd.DataFrame(index=[ids[0], ids[1], "no-such-cell"])).write_h5ad(unknown)
    refused(unknown, "1 of 3 cell ids are not in .*'no-such-cell'", cells=tiny_store_path)
    nan = X.copy()
    nan[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    refused(tmp_path / "nan.npy", "NaN or infinite values, the first row 1", cells=store.cells.iloc[:3])
    np.save(tmp_path / "short.npy", X)
    refused(tmp_path / "short.npy", f"3 rows but {len(ids)} cells", cells=tiny_store_path)
    np.save(tmp_path / "flat.npy", X[0])
    refused(tmp_path / "flat.npy", "2-D array", cells=store.cells.iloc[:1])
    refused(tmp_path / "short.npy", "holds no cell ids")
    refused(unknown, "no obsm\\['features'\\]", key="features")
    refused(unknown, "no image_id column")
    zero = X.copy()
    zero[2] = 0
    np.save(tmp_path / "zero.npy", zero)
    refused(tmp_path / "zero.npy", "row 2 is all zeros", cells=store.cells.iloc[:3])
    refused(tmp_path / "missing.h5ad", "not found")


# --------------------------------------------------------------------------- the command line


def test_commands(run, tiny_store_path, features, tmp_path, capsys, one_faiss_thread):
    out = tmp_path / "cells.h5ad"
    assert main(["export-h5ad", str(run), "--out", str(out), "--method", "head"]) == 0
    assert "probabilities_head" in capsys.readouterr().out
    assert "probabilities_knn" not in anndata.read_h5ad(out).obsm

    ids = CellStore.open(tiny_store_path).cells["cell_id"].astype(str)
    adata = anndata.AnnData(obs=pd.DataFrame(index=pd.Index(ids.to_numpy())))
    adata.obsm["features"] = features
    adata.write_h5ad(tmp_path / "embeddings.h5ad")
    embeddings = str(tmp_path / "embeddings")
    assert main(["import-embeddings", str(tmp_path / "embeddings.h5ad"), "--out", embeddings,
                 "--cells", str(tiny_store_path), "--key", "features"]) == 0
    assert f"wrote {len(features)} embeddings of dimension 12" in capsys.readouterr().out
    cell = read_embeddings(embeddings).cell_ids[0]
    index = str(tmp_path / "index")
    assert main(["index", embeddings, "--out", index, "--kind", "flat"]) == 0
    assert main(["search", index, "--cell", cell, "-k", "3"]) == 0
    predictions = str(tmp_path / "predictions")
    assert main(["classify", embeddings, "--out", predictions, "--method", "knn", "--reference", embeddings,
                 "--label-mode", "true_labels", "-k", "3"]) == 0
    assert main(["evaluate", "--predictions", predictions]) == 0
    assert "cell_map" in capsys.readouterr().out

    assert main(["import-embeddings", str(tmp_path / "embeddings.h5ad"), "--out", embeddings,
                 "--key", "features"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "embeddings.h5ad" in err and "no image_id column" in err
