"""Untrusted files: our formats load without running code, and a damaged one is refused by name.

Checkpoints, indexes, stores, embeddings, maps and configs are safetensors, FAISS, NumPy without pickle,
parquet, JSON and TOML. Each test below damages one file of a saved format (bytes flipped, the file cut
short, its JSON header edited) and expects :class:`~hpa_embed.io.HpaEmbedError` naming that file.
"""

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hpa_embed
from hpa_embed.io import HpaEmbedError

PACKAGE = Path(hpa_embed.__file__).parent
#: The one module allowed to unpickle: it loads the HPA's own segmentation models, from paths the user names.
HPACELLSEG = PACKAGE / "segment" / "hpacellseg.py"


# --------------------------------------------------------------------------- no pickle in the library


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name/Attribute chain, '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def unpickling_uses(source: str, name: str) -> list[str]:
    """Where Python ``source`` (of module ``name``) imports a pickling module or calls a loader that may
    unpickle: ``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=...)``, and others."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                modules.append(node.module)
            found += [(node.lineno, f"imports {module}") for module in modules
                      if module.split(".")[0] in UNPICKLING_MODULES]
        if not isinstance(node, ast.Call):
            continue
        called = _dotted(node.func)
        if called.split(".")[0] in UNPICKLING_MODULES:
            found.append((node.lineno, f"calls {called}"))
        elif called == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append((node.lineno, "calls torch.load without weights_only=True"))
        elif called in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (None, False):
            found.append((node.lineno, f"calls {called} with allow_pickle"))
        elif called.rsplit(".", 1)[-1] in ("read_pickle", "unsafe_load") or called in ("yaml.load",
                                                                                       "torch.jit.load"):
            found.append((node.lineno, f"calls {called}"))
    return [f"{name}:{line} {use}" for line, use in sorted(found)]


def test_the_library_reads_no_pickle_except_the_hpa_segmentation_models():
    uses = {path: unpickling_uses(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
            for path in sorted(PACKAGE.rglob("*.py"))}
    assert {str(path): found for path, found in uses.items() if found and path != HPACELLSEG} == {}
    # the one exception: torch.load(weights_only=False) of the hpacellseg weight files the user names
    assert [use.split(" calls ")[1] for use in uses[HPACELLSEG]] == ["torch.load without weights_only=True"]
    from hpa_embed.segment.hpacellseg import HPACellSegmenter

    doc = " ".join(HPACellSegmenter.__doc__.split())
    assert "weights_only=False" in doc and "runs code stored in the file" in doc
    assert "name only files you obtained from the HPA" in doc and "Nothing is ever downloaded" in doc


def test_the_scan_finds_what_it_looks_for():
    source = ("import pickle\nimport numpy as np\nimport torch\nfrom joblib import load\n"
              "np.load('a', allow_pickle=True)\nnp.load('a')\ntorch.load('b')\n"
              "torch.load('c', weights_only=True)\npickle.loads(b'')\npd.read_pickle('d')\n")
    assert [use.split(" ", 1)[1] for use in unpickling_uses(source, "sample.py")] == [
        "imports pickle", "imports joblib", "calls np.load with allow_pickle",
        "calls torch.load without weights_only=True", "calls pickle.loads", "calls pd.read_pickle"]


# --------------------------------------------------------------------------- damaging a saved file


def flip_bytes(path: Path, at: float = 0.5, count: int = 8) -> None:
    """Invert ``count`` bytes at fraction ``at`` of the file (the middle: the data of most formats)."""
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * at), len(data) - count)
    data[start:start + count] = bytes(byte ^ 0xFF for byte in data[start:start + count])
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(json.dumps(document), encoding="utf-8")


def break_json(path: Path) -> None:
    """A header cut short: no longer JSON."""
    truncate(path, 0.6)


def assert_refused(load: Callable[[], object], path: Path, match: str = "") -> None:
    """``load()`` raises the library's own error, whose message names ``path``."""
    with pytest.raises(HpaEmbedError) as caught:
        load()
    message = str(caught.value)
    assert str(path) in message, message
    assert re.search(match, message), message


def damaged_copy(source: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from hpa_embed.config import ModelConfig
    from hpa_embed.models import create_model, save_checkpoint

    config = ModelConfig(arch="resnet18", in_chans=4, crop_size=32, embedding_dim=8)
    model = create_model(config)
    state = {"epoch": 1, "optimizer": {"step": torch.tensor(3.0), "moments": torch.ones(64)}}
    return save_checkpoint(tmp_path_factory.mktemp("checkpoint") / "last", model, config, state=state)


def load_checkpoint_of(directory: Path) -> Callable[[], object]:
    from hpa_embed.models import load_checkpoint

    return lambda: load_checkpoint(directory)


def test_an_intact_checkpoint_lists_and_loads_its_files(checkpoint):
    from hpa_embed.models import load_checkpoint

    header = json.loads((checkpoint / "config.json").read_text())
    assert set(header["files"]) == {"model.safetensors", "trainer_state.safetensors"}
    assert all(set(entry) == {"sha256"} for entry in header["files"].values())
    load_checkpoint(checkpoint)


@pytest.mark.parametrize("name, damage, match", [
    ("model.safetensors", flip_bytes, "checksum mismatch"),
    ("model.safetensors", truncate, "corrupt or truncated"),
    ("trainer_state.safetensors", lambda path: flip_bytes(path, at=0.95), "checksum mismatch"),
    ("config.json", break_json, "not valid JSON"),
    ("config.json", lambda path: edit_json(path, lambda header: header["model"].update(embedding_dim=9)),
     "weights do not match"),
    ("config.json", lambda path: edit_json(path, lambda header: header["model"].update(arch="resnet1000")),
     "invalid model config"),
], ids=["weights flipped", "weights cut", "state flipped", "header cut", "header edited", "header nonsense"])
def test_a_damaged_checkpoint_is_refused(checkpoint, tmp_path, name, damage, match):
    copy = damaged_copy(checkpoint, tmp_path)
    damage(copy / name)
    failing = copy / ("model.safetensors" if "weights do not match" in match else name)
    assert_refused(load_checkpoint_of(copy), failing, match)


def test_a_cut_state_file_is_refused_alone_too(checkpoint, tmp_path):
    from hpa_embed.models import load_state

    copy = damaged_copy(checkpoint, tmp_path)
    truncate(copy / "trainer_state.safetensors")
    assert_refused(lambda: load_state(copy / "trainer_state.safetensors"), copy / "trainer_state.safetensors",
                   "corrupt or truncated")


# --------------------------------------------------------------------------- indexes


@pytest.fixture(scope="module")
def cell_index(tmp_path_factory) -> Path:
    from hpa_embed.config import IndexConfig
    from hpa_embed.index import CellIndex

    X = np.random.default_rng(0).standard_normal((300, 16), dtype=np.float32)
    cell_ids = [f"c{i}" for i in range(300)]
    index = CellIndex.build(X, cell_ids, IndexConfig(kind="ivf", nlist=4), progress=False)
    return index.save(tmp_path_factory.mktemp("index") / "index")


@pytest.mark.parametrize("name, damage, match", [
    ("index.faiss", flip_bytes, "checksum mismatch"),
    ("index.faiss", truncate, "checksum mismatch"),
    ("cell_ids.parquet", flip_bytes, "checksum mismatch"),
    ("trained.faiss", truncate, "checksum mismatch"),
    ("index.json", break_json, "not valid JSON"),
    ("index.json", lambda path: edit_json(path, lambda header: header.update(count=301)), "says 301"),
], ids=["index flipped", "index cut", "ids flipped", "trained cut", "header cut", "header edited"])
def test_a_damaged_index_is_refused(cell_index, tmp_path, name, damage, match):
    from hpa_embed.index import CellIndex

    CellIndex.load(cell_index)
    copy = damaged_copy(cell_index, tmp_path)
    damage(copy / name)
    failing = copy / ("index.faiss" if name == "index.json" and "says" in match else name)
    assert_refused(lambda: CellIndex.load(copy), failing, match)


# --------------------------------------------------------------------------- cell stores


@pytest.fixture(scope="module")
def cell_store(tmp_path_factory) -> Path:
    from hpa_embed.store import CellStore

    rng = np.random.default_rng(0)
    store = CellStore.create(tmp_path_factory.mktemp("store") / "store", crop_size=8, chunk_size=16)
    for start in (0, 20):  # the second append rewrites the partial chunk 1
        cells = pd.DataFrame({"cell_id": [f"f{i // 4}_{i}" for i in range(start, start + 20)],
                              "image_id": [f"f{i // 4}" for i in range(start, start + 20)],
                              "image_labels": [[i % 19] for i in range(start, start + 20)]})
        store.append(cells, rng.integers(0, 256, (20, 4, 8, 8), dtype=np.uint8))
    return store.path


def read_every_crop(path: Path) -> np.ndarray:
    from hpa_embed.store import CellStore

    store = CellStore.open(path)
    return store.get_crops(store.cells["row"].to_numpy())


def test_a_stores_table_holds_the_checksum_of_each_chunk(cell_store):
    import pyarrow.parquet as pq

    from hpa_embed.io import file_sha256

    recorded = json.loads(pq.read_schema(cell_store / "cells.parquet").metadata[b"hpa_embed.chunks"])
    assert recorded.keys() == {"chunk-000000.npy", "chunk-000001.npy", "chunk-000002.npy"}
    assert [entry["rows"] for entry in recorded.values()] == [16, 16, 8]
    crops = read_every_crop(cell_store)
    import hashlib

    assert recorded["chunk-000002.npy"]["sha256"] == hashlib.sha256(crops[32:]).hexdigest()
    assert recorded["chunk-000002.npy"]["sha256"] != file_sha256(cell_store / "crops" / "chunk-000002.npy")


@pytest.mark.parametrize("name, damage, match", [
    ("crops/chunk-000001.npy", lambda path: flip_bytes(path, at=0.7), "checksum mismatch"),
    ("crops/chunk-000001.npy", truncate, "unreadable crop chunk"),
    ("cells.parquet", truncate, "unreadable cell table"),
    ("cells.parquet", lambda path: flip_bytes(path, at=0.3), "unreadable cell table"),
    ("store.json", break_json, "not valid JSON"),
    ("store.json", lambda path: edit_json(path, lambda meta: meta.update(crop_size="8", channels=["uv"])),
     "crop_size '8' is not a positive integer; channels"),
    ("crops/chunk-000000.npy", lambda path: edit_json(path.parents[1] / "store.json",
                                                      lambda meta: meta.update(crop_size=16)),
     r"expected uint8 \[n, 4, 16, 16\] as store.json says"),
], ids=["crops flipped", "crops cut", "table cut", "table flipped", "header cut", "header nonsense",
        "header edited"])
def test_a_damaged_store_is_refused(cell_store, tmp_path, name, damage, match):
    read_every_crop(cell_store)
    copy = damaged_copy(cell_store, tmp_path)
    damage(copy / name)
    assert_refused(lambda: read_every_crop(copy), copy / name, match)


# --------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory) -> Path:
    from hpa_embed.embed import Embeddings, write_embeddings

    X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(10)], "image_id": ["f"] * 10})
    out = tmp_path_factory.mktemp("embeddings") / "emb"
    return write_embeddings(out, Embeddings(X, cells, {"split": None}))


def test_embeddings_read_back_with_their_own_metadata_only(embeddings_dir):
    from hpa_embed.embed import read_embeddings, write_embeddings

    embedded = read_embeddings(embeddings_dir)
    assert embedded.meta == {"split": None, "count": 10, "dimension": 4}
    write_embeddings(embeddings_dir.parent / "again", embedded)  # what was read can be written again


@pytest.mark.parametrize("name, damage, match", [
    ("embeddings.npy", lambda path: flip_bytes(path, at=0.8), "checksum mismatch"),
    ("embeddings.npy", truncate, "checksum mismatch"),
    ("cells.parquet", flip_bytes, "checksum mismatch"),
    ("embed.json", break_json, "not valid JSON"),
    ("embed.json", lambda path: edit_json(path, lambda meta: meta.update(count=11)), "says 11 embeddings"),
    ("embed.json", lambda path: edit_json(path, lambda meta: meta.pop("format")), "older hpa_embed"),
], ids=["array flipped", "array cut", "table flipped", "header cut", "header edited", "no header"])
def test_damaged_embeddings_are_refused(embeddings_dir, tmp_path, name, damage, match):
    from hpa_embed.embed import read_embeddings

    copy = damaged_copy(embeddings_dir, tmp_path)
    damage(copy / name)
    assert_refused(lambda: read_embeddings(copy), copy / name, match)
    assert_refused(lambda: read_embeddings(copy, mmap=True), copy / name, match)


# --------------------------------------------------------------------------- maps


def placed_projector():
    """A UMAPProjector placed by hand instead of fitted (UMAP's compilation takes long), saved as usual."""
    from hpa_embed.visualise import UMAPProjector

    class Placed(UMAPProjector):
        def fit_transform(self, X, y=None, *, index=None):
            self.index_, self.n_features_in_, self.n_epochs_ = index, X.shape[1], 1
            self.reference_embedding_ = self.embedding_ = X[:, :2] * 10
            self.reference_rows_ = np.arange(len(X), dtype=np.int64)
            return self.embedding_

    return Placed(n_neighbors=3)


@pytest.fixture(scope="module")
def map_folder(embeddings_dir, tmp_path_factory) -> Path:
    from hpa_embed.visualise import draw_cell_maps

    out = tmp_path_factory.mktemp("maps") / "maps"
    written = draw_cell_maps(embeddings_dir, None, out, projector=placed_projector(), interactive=False,
                             progress=False)
    assert written["description"] == out / "maps.json"
    return out


def read_maps(folder: Path):
    from hpa_embed.visualise import UMAPProjector, read_cell_maps

    coordinates, cells = read_cell_maps(folder)
    projector = UMAPProjector.load(folder / "projector")
    return coordinates, cells, projector


def test_a_map_folder_reads_back(map_folder, embeddings_dir):
    from hpa_embed.embed import read_embeddings

    coordinates, cells, projector = read_maps(map_folder)
    embedded = read_embeddings(embeddings_dir)
    np.testing.assert_array_equal(coordinates, embedded.X[:, :2] * 10)
    assert cells["cell_id"].tolist() == embedded.cells["cell_id"].tolist()
    np.testing.assert_array_equal(projector.reference_embedding_, coordinates)


@pytest.mark.parametrize("name, damage, match", [
    ("coordinates.npy", lambda path: flip_bytes(path, at=0.9), "checksum mismatch"),
    ("cells.parquet", truncate, "checksum mismatch"),
    ("maps.json", break_json, "not valid JSON"),
    ("maps.json", lambda path: edit_json(path, lambda meta: meta.update(cells=3)), "says 3 cells"),
    ("projector/reference_embedding.npy", lambda path: flip_bytes(path, at=0.9), "checksum mismatch"),
    ("projector/reference_rows.npy", truncate, "checksum mismatch"),
    ("projector/index/index.faiss", flip_bytes, "checksum mismatch"),
    ("projector/projector.json", break_json, "not valid JSON"),
    ("projector/projector.json", lambda path: edit_json(path, lambda meta: meta.update(n_reference=9)),
     "says 9 reference points"),
    ("projector/projector.json", lambda path: edit_json(path, lambda meta: meta["params"].update(
        n_neighbors="many")), "invalid projector description"),
    ("projector/projector.json", lambda path: edit_json(path, lambda meta: meta["params"].update(
        run="os.system")), "invalid projector description"),
], ids=["coordinates flipped", "cells cut", "header cut", "header edited", "reference flipped",
        "rows cut", "index flipped", "projector header cut", "projector header edited",
        "projector parameter nonsense", "projector parameter unknown"])
def test_a_damaged_map_folder_is_refused(map_folder, tmp_path, name, damage, match):
    copy = damaged_copy(map_folder, tmp_path)
    damage(copy / name)
    assert_refused(lambda: read_maps(copy), copy / name, match)


# --------------------------------------------------------------------------- run configs


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    from hpa_embed.config import write_config_file
    from hpa_embed.pipeline import load_named_config

    return write_config_file(tmp_path_factory.mktemp("config") / "config.toml", load_named_config("tiny"))


def replace_text(old: str, new: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return damage


@pytest.mark.parametrize("damage, match", [
    (lambda path: flip_bytes(path, at=0.3, count=3), "not valid TOML"),
    (lambda path: path.write_bytes(path.read_bytes()[:path.read_bytes().index(b'"resnet18"') + 4]),
     "not valid TOML"),
    (replace_text('arch = "resnet18"', 'arch = "resnet18"\nrun = "__import__(\'os\').system(\'x\')"'),
     "run"),
    (replace_text("epochs = 1", 'epochs = "1; rm -rf /"'), "epochs"),
], ids=["flipped", "cut", "unknown key", "wrong type"])
def test_a_damaged_run_config_is_refused(config_file, tmp_path, damage, match):
    import shutil

    from hpa_embed.config import read_config_file

    read_config_file(config_file)
    copy = Path(shutil.copy(config_file, tmp_path / "config.toml"))
    damage(copy)
    assert_refused(lambda: read_config_file(copy), copy, match)


# --------------------------------------------------------------------------- pages that show strings


EVIL = "</script><script>window.__pwned=1</script>"


def test_the_interactive_map_escapes_class_names_and_image_ids(tmp_path):
    from hpa_embed.labels import ClassScheme
    from hpa_embed.visualise import write_cell_map

    scheme = ClassScheme("hostile", (f"{EVIL} zero", "one & <b>two</b>"), ("#ff0000", "#00ff00"))
    n = 6
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(n)],
                          "image_id": [EVIL if i % 2 else "plain" for i in range(n)],
                          "true_labels": [[i % 2] for i in range(n)], "prediction": [0] * n})
    xy = np.random.default_rng(0).normal(size=(n, 2))
    crops = np.zeros((n, 4, 8, 8), dtype=np.uint8)
    index = write_cell_map(tmp_path / "map", xy, cells, crops, scheme=scheme, percentile=None)
    text = index.read_text(encoding="utf-8")
    assert "window.__pwned" in text and "<script>window" not in text and "<b>" not in text
    assert text.count("</script>") == 2  # the data block and the page's own code
    data = json.loads(re.search(r'<script type="application/json" id="cellmap-data">(.*?)</script>', text,
                                re.S).group(1))
    assert data["class_names"] == list(scheme.names)
    assert EVIL in data["columns"]["image"]["values"]
    class_mode = next(mode for mode in data["modes"] if mode["key"] == "class")
    assert f"{EVIL} zero" in json.dumps(class_mode)
