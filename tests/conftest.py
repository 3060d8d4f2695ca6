from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hpa-real"


@pytest.fixture(scope="session")
def hpa_real() -> Path:
    """The real HPA fixtures beside the checkout (../shared/data/hpa-real)."""
    if not SHARED.is_dir():
        pytest.skip(f"real HPA fixtures not found at {SHARED}")
    return SHARED
