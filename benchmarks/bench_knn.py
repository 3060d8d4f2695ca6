"""KNNClassifier vs scikit-learn's KNeighborsClassifier (brute force, cosine), same data.

Data: embedding-like unit vectors (``clusters`` Gaussian clusters on the sphere in D=128, as in
bench_index.py); a cell's class is its cluster's class (cluster % 19), with ``--noise`` of the
labels redrawn at random. Both classifiers use n_neighbors=10 and 1/distance weights.

- scikit-learn: ``KNeighborsClassifier(algorithm="brute", metric="cosine", weights="distance")``.
- ours, exact: ``KNNClassifier(index_config=IndexConfig(kind="flat"))``. Target: >= 5x faster,
  identical predictions.
- ours, IVF: ``IndexConfig(kind="ivf")`` with growing nprobe; the smallest nprobe whose
  predictions agree with scikit-learn's on >= 99 % of the queries is reported. Target: >= 20x.

Speed-ups compare ``predict`` (the search and the vote); ``fit`` times (index build, IVF
training) are printed beside them.

    .venv/bin/python benchmarks/bench_knn.py [--refs 100000] [--queries 20000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np
from bench_index import embedding_like
from common import Row, machine, parse_args, write_rows
from sklearn.neighbors import KNeighborsClassifier

from hpa_embed.classify import KNNClassifier
from hpa_embed.config import IndexConfig

K = 10
CLASSES = 19
NPROBES = (1, 2, 4, 8, 16, 32, 64)
TARGET_EXACT = 5.0
TARGET_IVF = 20.0
TARGET_AGREEMENT = 0.99
QUICK = {"queries": 5_000}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def row(name: str, measured: str, target: str = "") -> None:
    print(f"  {name:<30}{measured:<52}{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.12)
    parser.add_argument("--noise", type=float, default=0.1, help="fraction of labels redrawn at random")
    args = parse_args(parser, QUICK)

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster_class = rng.integers(0, CLASSES, args.clusters)

    def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        X, cluster = embedding_like(n, centres, args.spread, seed)
        y = cluster_class[cluster]
        noisy = np.random.default_rng(seed + 100).random(n) < args.noise
        y[noisy] = np.random.default_rng(seed + 200).integers(0, CLASSES, noisy.sum())
        return X, y

    X, y = draw(args.refs, 1)
    Q, y_true = draw(args.queries, 2)
    print(f"{args.refs:,} reference cells, {args.queries:,} queries, D = {args.dim}, {CLASSES} classes over "
          f"{args.clusters} clusters (spread {args.spread}, label noise {args.noise:.0%}), k = {K}")
    print(f"[{machine()}, faiss {faiss.omp_get_max_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}]")
    print(f"  {'':<30}{'measured':<52}target")

    sklearn_model, sklearn_fit_s = timed(lambda: KNeighborsClassifier(
        n_neighbors=K, weights="distance", algorithm="brute", metric="cosine").fit(X, y))
    sklearn_pred, sklearn_s = timed(lambda: sklearn_model.predict(Q))
    row("scikit-learn brute cosine", f"predict {sklearn_s:.1f} s (fit {sklearn_fit_s:.1f} s), "
        f"accuracy {np.mean(sklearn_pred == y_true):.3f}", "baseline")

    exact, exact_fit_s = timed(lambda: KNNClassifier(K, index_config=IndexConfig(kind="flat")).fit(X, y))
    exact_pred, exact_s = timed(lambda: exact.predict(Q))
    row("ours, exact (flat)",
        f"predict {exact_s:.1f} s = {sklearn_s / exact_s:.1f}x (fit {exact_fit_s:.1f} s)",
        f">= {TARGET_EXACT:.0f}x")
    proba_diff = np.abs(exact.predict_proba(Q[:2000]) - sklearn_model.predict_proba(Q[:2000])).max()
    exact_agreement = np.mean(exact_pred == sklearn_pred)
    row("  agreement with scikit-learn", f"{exact_agreement:.2%} of predictions, "
        f"max |proba diff| {proba_diff:.1e}", "identical")
    size, baseline = f"{args.refs // 1000:,}k refs, {args.queries // 1000:,}k queries", "scikit-learn brute"
    figures = [
        Row(f"kNN predict, exact (flat) ({size})", exact_s, "s", sklearn_s, baseline, "lower",
            f">= {TARGET_EXACT:g}x faster", sklearn_s / exact_s >= TARGET_EXACT),
        Row(f"kNN exact, predictions equal to scikit-learn's ({size})", exact_agreement, "", 1.0, baseline,
            "higher", "identical", exact_agreement == 1.0),
    ]

    ivf, ivf_fit_s = timed(lambda: KNNClassifier(K, index_config=IndexConfig(kind="ivf")).fit(X, y))
    chosen = None
    for nprobe in NPROBES:
        ivf.index_.nprobe = nprobe
        ivf_pred, ivf_s = timed(lambda: ivf.predict(Q))
        agreement = np.mean(ivf_pred == sklearn_pred)
        row(f"ours, IVF nlist={ivf.index_.nlist} nprobe={nprobe}",
            f"predict {ivf_s:.2f} s = {sklearn_s / ivf_s:.1f}x, agreement {agreement:.2%}")
        if agreement >= TARGET_AGREEMENT:
            chosen = (nprobe, ivf_s, agreement)
            break
    if chosen is None:
        row("ours, IVF", f"agreement < {TARGET_AGREEMENT:.0%} up to nprobe={NPROBES[-1]}", "FAILED")
        figures.append(Row(f"kNN IVF, predictions equal to scikit-learn's ({size})", agreement, "",
                           TARGET_AGREEMENT, "target", "higher",
                           f">= {TARGET_AGREEMENT:.0%} at nprobe <= {NPROBES[-1]}", False))
    else:
        nprobe, ivf_s, agreement = chosen
        row(f"ours, IVF chosen nprobe={nprobe}",
            f"predict {ivf_s:.2f} s = {sklearn_s / ivf_s:.1f}x (fit {ivf_fit_s:.1f} s), "
            f"agreement {agreement:.2%}", f">= {TARGET_IVF:.0f}x, >= {TARGET_AGREEMENT:.0%}")
        row("  fit + predict", f"{sklearn_s / (ivf_fit_s + ivf_s):.1f}x scikit-learn's predict alone")
        figures += [
            Row(f"kNN predict, IVF nprobe {nprobe} ({size})", ivf_s, "s", sklearn_s, baseline, "lower",
                f">= {TARGET_IVF:g}x faster", sklearn_s / ivf_s >= TARGET_IVF),
            Row(f"kNN IVF, predictions equal to scikit-learn's ({size})", agreement, "", TARGET_AGREEMENT,
                "target", "higher", f">= {TARGET_AGREEMENT:.0%}", agreement >= TARGET_AGREEMENT),
        ]
    write_rows(args.json, figures)


if __name__ == "__main__":
    main()
