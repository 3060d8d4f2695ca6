"""Shared set-up for the benchmarks: a CellStore of synthetic cells, the machine's load, and the
rows every benchmark reports (``--json PATH``) for ``run_all.py``'s one table."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
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


@dataclasses.dataclass
class Row:
    """One figure of a benchmark beside the baseline or target it is compared with.

    ``reference`` is a baseline measured in the same run (``reference_label`` names it, e.g.
    "umap-learn") or a target (``reference_label`` "target"). ``better`` is "higher", "lower" or
    "" (neither: no ratio). ``ratio`` is how many times better than the reference the value is
    (value / reference where higher is better, reference / value where lower is), so > 1 is
    better. ``target`` states the target in words ("" for a figure that is only reported) and
    ``met`` whether the value meets it (None: no target, or not measured). ``note``: why a row
    has no value (not run, failed).
    """

    name: str
    value: float | None
    unit: str = ""
    reference: float | None = None
    reference_label: str = ""
    better: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        # numpy scalars in, plain JSON-able Python values out
        self.value = None if self.value is None else float(self.value)
        self.reference = None if self.reference is None else float(self.reference)
        self.met = None if self.met is None else bool(self.met)
        if self.better not in ("higher", "lower", ""):
            raise ValueError(f"better must be 'higher', 'lower' or '', not {self.better!r}")

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.reference is None or not self.better:
            return None
        numerator, denominator = (self.value, self.reference) if self.better == "higher" else \
            (self.reference, self.value)
        return numerator / denominator if denominator else None

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio}

    @classmethod
    def from_dict(cls, values: dict) -> Row:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def parse_args(parser: argparse.ArgumentParser, quick: dict, argv: list[str] | None = None):
    """Add ``--quick`` (the defaults replaced by ``quick``: sizes that run in about a minute on
    2 cores; options given explicitly still win) and ``--json PATH``, then parse ``argv``."""
    shown = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {shown}")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the figures, with their baselines and targets, as JSON rows")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)


def write_rows(path: Path | None, rows: list[Row]) -> None:
    """Write a benchmark's rows to ``path`` as JSON (nothing when ``path`` is None)."""
    if path is None:
        return
    report = {"script": Path(sys.argv[0]).name, "argv": sys.argv[1:], "machine": machine(),
              "rows": [row.as_dict() for row in rows]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)
