"""Run every benchmark, one after another, and print one table of their figures.

    .venv/bin/python benchmarks/run_all.py                  # quick sizes (make bench)
    .venv/bin/python benchmarks/run_all.py --only umap,knn  # a subset
    .venv/bin/python benchmarks/run_all.py --full           # full sizes and the long benchmarks

Each benchmark runs as its own process (``bench_<name>.py --quick --json PATH``; with ``--full``
at its default sizes), never two at once. Its figures come back as rows (``common.Row``): the
value, the baseline measured in the same run or the target it is compared with, the ratio (> 1:
better than the reference) and whether the target is met. The long benchmarks (the quality table,
the calibration, the oracle diagnosis, the realism analysis, UMAP of 1M points) run only with
``--full``; without it the table lists them as not run, with the command that runs them. A
benchmark that fails gets a row saying so, with the last line it wrote to stderr, and the others
still run.

The table goes to stdout and to ``bench-output/summary.md``, the rows to
``bench-output/summary.json``, each benchmark's output to ``bench-output/logs/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from common import Row, machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def recipes_rows(stdout: str) -> list[Row]:
    """Rows from bench_recipes.py's printed quality table and its verdict lines."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["predicted_masks"])
    columns = lines[header].split()
    mAP = {}
    for line in lines[header + 1:]:  # "name with spaces  0.217  0.301  NaN ..." up to the first other line
        tokens = line.split()
        try:
            values = [float(token) for token in tokens[-len(columns):]]
        except ValueError:
            break
        if len(tokens) <= len(columns):
            break
        mAP[" ".join(tokens[:-len(columns)])] = values[columns.index("predicted_masks")]
    best = re.search(r"best weak recipe (\S+): ([+-][\d.]+) over seed-ce .*?, ([\d.]+) of the oracle", stdout)
    name = "competition mAP (predicted masks), best weak recipe"
    rows = []
    if best:
        recipe, gain, share = best[1], float(best[2]), float(best[3])
        rows += [Row(f"{name} ({recipe})", mAP[recipe], "", mAP["seed-ce"], "seed-ce", "higher",
                     ">= seed-ce + 0.10", gain >= 0.10),
                 Row(f"{name} ({recipe})", mAP[recipe], "", mAP["oracle"], "oracle", "higher",
                     ">= 0.85x oracle", share >= 0.85)]
    if "knn" in mAP and "balanced" in mAP:
        rows.append(Row("competition mAP (predicted masks), kNN", mAP["knn"], "", mAP["balanced"],
                        "linear head (balanced)", "higher", "within 0.02 of the head",
                        abs(mAP["knn"] - mAP["balanced"]) <= 0.02))
    below = re.search(r"recipes not above the intensity-statistics model: (.*)", stdout)
    if below and "intensity statistics" in mAP:
        names = [] if below[1].strip() == "none" else below[1].split(", ")
        learned = [v for k, v in mAP.items() if k != "intensity statistics"]
        rows.append(Row("competition mAP (predicted masks), weakest learned recipe", min(learned), "",
                        mAP["intensity statistics"], "intensity statistics", "higher",
                        "every learned recipe above it", not names, note=", ".join(names)))
    return rows


def table_rows(stdout: str, header: str, reference: str, targets: bool) -> list[Row]:
    """Rows from a printed ``name  value  [target]`` table (bench_calibration.py,
    bench_diagnose.py) that starts after the line starting with ``header``; each compared with
    the row whose name starts with ``reference``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    parsed = []
    for line in lines[start + 1:]:
        match = re.match(r"(.*?)\s+(-?\d+\.\d+)(?:\s{3}(.*))?$", line)
        if match:
            parsed.append((match[1], float(match[2]), (match[3] or "").strip() if targets else ""))
    base = next(value for name, value, _ in parsed if name.startswith(reference))
    return [Row(f"cell mAP, {name}", value, "", None if name.startswith(reference) else base,
                "" if name.startswith(reference) else reference, "higher",
                "" if target in ("", "-") else target)
            for name, value, target in parsed]


def log_only(stdout: str) -> list[Row]:
    """For an analysis without a figure to compare (bench_realism.py): one row pointing at its output."""
    return [Row("analysis (no baseline or target)", None, note="ran; its tables are in bench-output/logs/")]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One script under benchmarks/ and how the runner calls it."""

    script: str
    long: bool = False  # only with --full
    full_args: tuple[str, ...] = ()  # added to the script's defaults with --full
    not_run: tuple[str, ...] = ()  # figures only --full measures: listed as not run without it
    parse: Callable[[str], list[Row]] | None = None  # rows from stdout, for a script without --json

    @property
    def name(self) -> str:
        return self.script.removeprefix("bench_").removesuffix(".py")


BENCHMARKS = (
    Benchmark("bench_synthetic.py"),
    Benchmark("bench_segment.py", full_args=("--overlay", "bench-output/real_field_masks.png")),
    Benchmark("bench_store.py"),
    Benchmark("bench_scale.py"),
    Benchmark("bench_metric.py"),
    Benchmark("bench_losses.py"),
    Benchmark("bench_models.py"),
    Benchmark("bench_classifier_head.py"),
    Benchmark("bench_train.py"),
    Benchmark("bench_embed.py"),
    Benchmark("bench_index.py"),
    Benchmark("bench_knn.py"),
    Benchmark("bench_memory.py"),
    Benchmark("bench_umap.py", full_args=("--million",),
              not_run=("UMAP map of 1M points, and the comparison at 100k",)),
    Benchmark("bench_cellmap.py"),
    Benchmark("bench_calibration.py", long=True,
              not_run=("cell mAP of the seed recipe, weak labels and oracle vs intensity statistics",),
              parse=lambda out: table_rows(out, "method", "linear model on intensity statistics", True)),
    Benchmark("bench_diagnose.py", long=True,
              not_run=("oracle cell mAP of each training variant vs intensity statistics",),
              parse=lambda out: table_rows(out, "variant", "intensity statistics", False)),
    Benchmark("bench_recipes.py", long=True,
              not_run=("quality table: best weak recipe vs seed-ce and oracle, kNN vs head",),
              parse=recipes_rows),
    Benchmark("bench_realism.py", long=True,
              not_run=("realism of the synthetic protein channel (an analysis, no target)",), parse=log_only),
)


def python() -> str:
    """The interpreter as a reader would type it (relative to the repository where it lies there)."""
    path = Path(sys.executable)
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return "python"


def command(bench: Benchmark, full: bool) -> list[str]:
    return [python(), f"benchmarks/{bench.script}", *(bench.full_args if full else ("--quick",))]


def last_line(path: Path) -> str:
    """The last non-empty line of a log (progress bars' carriage returns count as line ends)."""
    lines = [line.strip() for line in re.split(r"[\r\n]", path.read_text(errors="replace")) if line.strip()]
    return lines[-1] if lines else ""


def run(bench: Benchmark, full: bool, logs: Path) -> dict:
    """Run one benchmark; its result: command, exit status, seconds and rows."""
    argv = command(bench, full)
    out, err, rows_path = (logs / f"{bench.name}.{ext}" for ext in ("out", "err", "json"))
    rows_path.unlink(missing_ok=True)
    if bench.parse is None:
        argv += ["--json", str(rows_path)]
    started = time.perf_counter()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        returncode = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, stdout=stdout,
                                    stderr=stderr).returncode
    seconds = time.perf_counter() - started
    result = {"name": bench.name, "command": " ".join(argv), "returncode": returncode, "seconds": seconds}
    try:
        if bench.parse is not None:
            rows = bench.parse(out.read_text()) if returncode == 0 else []
        else:
            rows = [Row.from_dict(r) for r in json.loads(rows_path.read_text())["rows"]]
    except (OSError, ValueError, KeyError, StopIteration) as error:
        rows = [] if returncode else [Row("figures", None, note=f"ran, but its figures could not be read "
                                                                  f"({error!r}); see {out}")]
    if not rows:
        rows = [Row("figures", None, note=f"failed (exit status {returncode}): {last_line(err)}")]
    result["rows"] = rows
    return result


def not_run(bench: Benchmark) -> dict:
    """The rows of the figures only ``--full`` measures, each naming the command that does."""
    full = " ".join(command(bench, True))
    return {"name": bench.name, "command": None, "returncode": None, "seconds": 0.0,
            "rows": [Row(figure, None, note=f"not run in this run (run: `{full}`)")
                     for figure in bench.not_run]}


def fmt(value: float, unit: str) -> str:
    """A value with its unit, to about four significant digits."""
    if unit == "yes/no":
        return "yes" if value else "no"
    size = abs(value)
    if unit and value.is_integer() and size < 1000:  # a count
        text = f"{value:.0f}"
    elif math.isnan(value):
        text = "nan"
    elif size >= 1000:
        text = f"{value:,.0f}"
    elif size >= 100:
        text = f"{value:.1f}"
    elif size >= 10:
        text = f"{value:.2f}"
    elif size >= 1 or size == 0:
        text = f"{value:.3f}"
    elif size >= 1e-4:
        text = f"{value:.4f}"
    else:
        text = f"{value:.1e}"
    return f"{text} {unit}" if unit else text


def table(results: list[dict]) -> str:
    """The markdown table of every row, columns padded so that it reads in a terminal too."""
    header = ("benchmark", "figure", "value", "compared with", "ratio", "target", "met")
    lines = []
    for result in results:
        for row in result["rows"]:
            value = row.note if row.value is None else fmt(row.value, row.unit) + (
                f" ({row.note})" if row.note else "")
            reference = ("" if row.reference is None
                         else f"{fmt(row.reference, row.unit)} ({row.reference_label})")
            ratio = ("" if row.ratio is None
                     else f"{row.ratio:.0f}x" if row.ratio >= 100 else f"{row.ratio:#.3g}x")
            met = {True: "yes", False: "**NO**", None: "?" if row.target and row.value is not None else ""}
            lines.append((result["name"], row.name, value, reference, ratio, row.target or "-", met[row.met]))
    lines = [tuple(cell.replace("|", "\\|") for cell in line) for line in lines]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    def join(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"
    return "\n".join([join(header), join(["-" * width for width in widths]), *map(join, lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="every benchmark at its default (full) size, the long ones included (hours)")
    parser.add_argument("--only", help="comma-separated names: " + ",".join(b.name for b in BENCHMARKS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-output", help="where the summary goes")
    args = parser.parse_args(argv)
    selected = list(BENCHMARKS)
    if args.only:
        names = [name.strip().removeprefix("bench_").removesuffix(".py") for name in args.only.split(",")]
        unknown = sorted(set(names) - {b.name for b in BENCHMARKS})
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"known: {', '.join(b.name for b in BENCHMARKS)}")
        selected = [b for b in BENCHMARKS if b.name in names]
    logs = args.out.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    mode = "full sizes" if args.full else "quick sizes (--quick)"
    before = machine()
    print(f"{len(selected)} benchmarks, {mode}, one at a time; {before}", file=sys.stderr)
    started, results = time.perf_counter(), []
    runnable = [b for b in selected if args.full or not b.long]
    for bench in selected:
        if bench.long and not args.full:
            results.append(not_run(bench))
            continue
        step = runnable.index(bench) + 1
        print(f"[{step}/{len(runnable)}] {' '.join(command(bench, args.full))} ...", file=sys.stderr,
              flush=True)
        result = run(bench, args.full, logs)
        if bench.not_run and not args.full:
            result["rows"] += not_run(bench)["rows"]
        failed = any(row.note.startswith("failed") for row in result["rows"])
        print(f"[{step}/{len(runnable)}] {bench.name}: {result['seconds']:.0f} s, "
              f"{'FAILED' if failed else 'ok'} ({len(result['rows'])} rows)", file=sys.stderr, flush=True)
        results.append(result)
    total = time.perf_counter() - started

    ran = ", ".join(f"{r['name']} {r['seconds']:.0f} s" for r in results if r["command"])
    summary = "\n".join([
        f"Benchmarks at {mode}, {datetime.now():%Y-%m-%d %H:%M}, total {total / 60:.1f} min "
        f"({ran}).",
        f"Machine: {before} at the start, {machine()} at the end (a load above the CPU count means "
        "other jobs shared the CPUs and slowed the timings).",
        "ratio: how many times better than the reference the value is (> 1: better); "
        "met: whether the target is met.",
        "",
        table(results),
    ])
    print(summary)
    (args.out / "summary.md").write_text(summary + "\n")
    report = {"mode": "full" if args.full else "quick", "machine_start": before, "machine_end": machine(),
              "total_seconds": total,
              "benchmarks": [{**r, "rows": [row.as_dict() for row in r["rows"]]} for r in results]}
    (args.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"total {total / 60:.1f} min; table in {args.out / 'summary.md'}, "
          f"rows in {args.out / 'summary.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
