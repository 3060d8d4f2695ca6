"""Speed of the multi-label triplet miner and of the combined loss, against baselines.

Prints each measured figure beside its baseline and target:

- MultiLabelTripletMiner returning every semihard triplet of multi-hot labels vs
  pytorch-metric-learning's TripletMarginMiner on one int label per cell (its rarest label),
  same batch. Target: within 2x (the multi-label batch has several times more triplets).
- The miner with its default cap vs a per-anchor loop (vectorised inside each anchor) that
  enumerates every triplet and then subsamples. Target: faster.
- CombinedLoss forward + backward (BCE + triplet) vs BCE alone, reported: the metric part's
  cost per batch.

Run: .venv/bin/python benchmarks/bench_losses.py [--batches 256 512] [--threads 1] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import Row, machine, parse_args, write_rows
from pytorch_metric_learning import distances, miners

from hpa_embed.config import LossConfig
from hpa_embed.losses import CombinedLoss, MultiLabelTripletMiner, binary_cross_entropy_loss, primary_labels

QUICK = {"repeats": 3}


def timed(fn, repeats: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def hpa_like_labels(n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Multi-hot labels with HPA-like imbalance: 1-3 labels per cell, Zipf-like class frequencies."""
    freq = 1 / np.arange(1, k + 1) ** 0.8
    freq /= freq.sum()
    Y = np.zeros((n, k), dtype=bool)
    for row in range(n):
        Y[row, rng.choice(k, size=rng.integers(1, 4), replace=False, p=freq)] = True
    return torch.from_numpy(Y)


def loop_miner(E, Y, margin):
    """Baseline: one anchor at a time, semihard, cosine."""
    S = E @ E.T
    shares = (Y.float() @ Y.float().T) > 0
    out = []
    for a in range(len(E)):
        pos = torch.nonzero(shares[a]).flatten()
        pos = pos[pos != a]
        neg = torch.nonzero(~shares[a]).flatten()
        m = S[a, pos].unsqueeze(1) - S[a, neg].unsqueeze(0)
        p, n = torch.nonzero((m > 0) & (m <= margin), as_tuple=True)
        out.append((torch.full_like(p, a), pos[p], neg[n]))
    return [torch.cat(parts) for parts in zip(*out)]


def compare(n: int, dim: int, repeats: int, k: int = 19, margin: float = 0.1) -> list[Row]:
    """Time the miners and the combined loss on one batch of ``n`` cells; print the rows, return
    them as :class:`Row`."""
    cap = LossConfig().max_triplets
    cosine = distances.CosineSimilarity()
    uncapped = MultiLabelTripletMiner(margin, "semihard", max_triplets=10**12, distance=cosine)
    capped = MultiLabelTripletMiner(margin, "semihard", max_triplets=cap, distance=cosine)
    pml = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=cosine)
    torch.manual_seed(0)
    E = F.normalize(torch.randn(n, dim), dim=1)
    Y = hpa_like_labels(n, k, np.random.default_rng(0))
    y = primary_labels(Y)
    n_ours, n_loop = len(uncapped(E, Y)[0]), len(loop_miner(E, Y, margin)[0])
    # the two margin tests (s_an >= s_ap - margin vs s_ap - s_an <= margin) may differ by rounding
    assert abs(n_ours - n_loop) <= 1e-5 * n_loop, (n_ours, n_loop)
    t_all = timed(lambda: uncapped(E, Y), repeats)
    t_pml = timed(lambda: pml(E, y), repeats)
    t_cap = timed(lambda: capped(E, Y), repeats)

    def loop_then_subsample():
        found = loop_miner(E, Y, margin)
        keep = torch.randperm(len(found[0]))[:cap]
        return [part[keep] for part in found]

    t_loop = timed(loop_then_subsample, repeats)
    print(f"N={n}: {Y.sum(1).float().mean():.2f} labels per cell, {n_ours} semihard multi-label "
          f"triplets, {len(pml(E, y)[0])} single-label (primary label)")
    verdict = "met" if t_all <= 2 * t_pml else "MISSED"
    print(f"{'  all triplets: multi-label miner vs PML single-label (ms)':62s} {t_all * 1e3:10.1f} "
          f"{t_pml * 1e3:10.1f}  <= 2x: {verdict} ({t_all / t_pml:.2f}x)")
    verdict = "met" if t_cap < t_loop else "MISSED"
    print(f"{f'  capped at {cap}: miner vs per-anchor loop + subsample (ms)':62s} {t_cap * 1e3:10.1f} "
          f"{t_loop * 1e3:10.1f}  faster: {verdict} ({t_loop / t_cap:.1f}x)")

    logits = torch.randn(n, k)
    combined = CombinedLoss(LossConfig(classification="bce", miner="semihard", margin=margin), k)

    def step_combined():
        e, lg = E.clone().requires_grad_(), logits.clone().requires_grad_()
        combined((e, lg), Y)[0].backward()

    def step_bce():
        lg = logits.clone().requires_grad_()
        binary_cross_entropy_loss(lg, Y).backward()

    t_combined, t_bce = timed(step_combined, repeats), timed(step_bce, repeats)
    print(f"{'  combined loss fwd+bwd vs BCE alone (ms)':62s} {t_combined * 1e3:10.1f} "
          f"{t_bce * 1e3:10.1f}  (the metric part: {(t_combined - t_bce) * 1e3:.1f} ms per batch)")
    return [
        Row(f"multi-label miner, all semihard triplets (batch {n})", t_all * 1e3, "ms", t_pml * 1e3,
            "PML TripletMarginMiner, one label", "lower", "<= 2x PML's time", t_all <= 2 * t_pml),
        Row(f"multi-label miner, capped at {cap} (batch {n})", t_cap * 1e3, "ms", t_loop * 1e3,
            "per-anchor loop + subsample", "lower", "faster", t_cap < t_loop),
        Row(f"combined loss fwd+bwd, BCE + triplet (batch {n})", t_combined * 1e3, "ms", t_bce * 1e3,
            "BCE alone", "lower"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared box)")
    args = parse_args(parser, QUICK)
    torch.set_num_threads(args.threads)
    print(f"semihard mining, cosine, margin 0.1, 19 classes, embeddings of {args.dim}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}; {machine()}")
    print(f"{'measure':62s} {'measured':>10s} {'baseline':>10s}  target")
    write_rows(args.json, [row for n in args.batches for row in compare(n, args.dim, args.repeats)])


if __name__ == "__main__":
    main()
