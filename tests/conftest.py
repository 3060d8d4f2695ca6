import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Fuzzing stays bounded in CI; HYPOTHESIS_PROFILE=thorough searches longer.
settings.register_profile("ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hpa-real"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def chromium():
    """Headless Debian chromium driven by Playwright (its own browser download needs a network)."""
    if not CHROMIUM.exists():
        pytest.skip(f"the browser tests drive Debian's chromium at {CHROMIUM}, which is not installed "
                    "(apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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

    return generate_dataset(
        tmp_path_factory.mktemp("tiny") / "data", 24, "tiny", seed=7, workers=1, progress=False
    )


@pytest.fixture(scope="session")
def tiny_store_path(tiny_dataset, tmp_path_factory) -> Path:
    """A CellStore of 32 px crops of ``tiny_dataset`` cut along the true masks, with truth."""
    from hpa_embed.config import CropConfig
    from hpa_embed.crops import build_store

    out = tmp_path_factory.mktemp("store") / "store"
    build_store(
        tiny_dataset / "train",
        tiny_dataset / "truth",
        out,
        labels=tiny_dataset / "train.csv",
        truth=tiny_dataset,
        config=CropConfig(crop_size=32),
        workers=1,
    )
    return out


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS on one thread: tiny searches otherwise spin-wait in OpenMP on a busy shared CPU."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def run_torchrun(script: str, *args, processes: int = 2) -> None:
    """Run ``tests/<script>`` under ``torchrun`` with ``processes`` CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            str(Path(__file__).with_name(script)),
            *map(str, args),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise AssertionError(f"torchrun {script} exited with {done.returncode}:\n{done.stderr[-4000:]}")
