"""Shared set-up for the benchmarks: a CellStore of synthetic cells."""

from __future__ import annotations

import os
from pathlib import Path


def synthetic_store(directory: Path, crop_size: int = 128, images: int = 40, preset: str = "small") -> Path:
    """Generate ``images`` synthetic fields and crop their true cells into ``<directory>/store``."""
    from hpa_embed.config import CropConfig
    from hpa_embed.crops import build_store
    from hpa_embed.synthetic import generate_dataset

    data = generate_dataset(directory / "data", images, preset, seed=11, progress=False)
    store = directory / "store"
    build_store(
        data / "train",
        data / "truth",
        store,
        labels=data / "train.csv",
        truth=data,
        config=CropConfig(crop_size=crop_size),
    )
    return store


def machine() -> str:
    """CPU count and load average, printed beside timings taken on a shared machine."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"
