from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hpa-real"


@pytest.fixture(scope="session")
def hpa_real() -> Path:
    """The real HPA fixtures beside the checkout (../shared/data/hpa-real)."""
    if not SHARED.is_dir():
        pytest.skip(f"real HPA fixtures not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A synthetic data set of 24 ``tiny`` fields (Kaggle layout + truth)."""
    from hpa_embed.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("tiny") / "data", 24, "tiny", seed=7, workers=1,
                            progress=False)


@pytest.fixture(scope="session")
def tiny_store_path(tiny_dataset, tmp_path_factory) -> Path:
    """A CellStore of 32 px crops of ``tiny_dataset`` cut along the true masks, with truth."""
    from hpa_embed.crops import CropConfig, build_store

    out = tmp_path_factory.mktemp("store") / "store"
    build_store(tiny_dataset / "train", tiny_dataset / "truth", out, labels=tiny_dataset / "train.csv",
                truth=tiny_dataset, config=CropConfig(crop_size=32), workers=1)
    return out
