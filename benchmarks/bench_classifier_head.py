"""Why the classifier multiplies the unit embedding by sqrt(D): learning speed on a toy task.

A ResNet-18 (4 channels, 32 px crops) learns a 19-class multi-label toy task (class k = a
bright square at position k of the green channel, 1-2 classes per cell) with BCE + triplet
loss for a few AdamW steps, with three classifiers on the same embedding head:

- ``sqrt(D) * e`` (ClassifierHead, what the model uses),
- ``e`` (a plain linear layer on the unit embedding, baseline),
- ``z`` (a linear layer on the pre-normalisation feature, baseline).

Prints macro average precision on held-out cells. Target: the scaled head within 0.05 of the
pre-normalisation head and well above the unscaled one.

Run: .venv/bin/python benchmarks/bench_classifier_head.py [--steps 40] [--threads 2] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import Row, parse_args, write_rows
from sklearn.metrics import average_precision_score

from hpa_embed.config import LossConfig, ModelConfig
from hpa_embed.losses import CombinedLoss
from hpa_embed.models import ModelOutput, create_model

K = 19
QUICK = {"threads": 1}  # 40 steps as the full run; one thread: steadier on a shared machine


def toy_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops float [n, 4, 32, 32] in [0, 1] and multi-hot labels bool [n, K]."""
    Y = torch.zeros(n, K, dtype=torch.bool)
    x = torch.rand(n, 4, 32, 32, generator=generator) * 0.2
    for i in range(n):
        n_labels = int(torch.randint(1, 3, (1,), generator=generator))
        for k in torch.randperm(K, generator=generator)[:n_labels].tolist():
            Y[i, k] = True
            row, col = divmod(k, 5)
            x[i, 1, row * 6 : row * 6 + 6, col * 6 : col * 6 + 6] += 0.8
    return x, Y


def train_and_score(variant: str, steps: int) -> float:
    torch.manual_seed(0)
    model = create_model(ModelConfig(arch="resnet18", in_chans=4, embedding_dim=32, crop_size=32))
    loss_fn = CombinedLoss(LossConfig(classification="bce", miner="semihard"), K)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def forward(x):
        head = model.head
        z = head.dropout(head.norm(head.linear(model.backbone(x))))
        e = F.normalize(z, dim=1)
        if variant == "scaled":
            logits = model.classifier(e)
        elif variant == "unscaled":
            logits = model.classifier.linear(e)
        else:
            logits = model.classifier.linear(z)
        return ModelOutput(e, logits)

    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, Y = toy_batch(64, generator)
        total, _ = loss_fn(forward(model.preprocess(x)), Y)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    model.eval()
    x, Y = toy_batch(256, generator)
    with torch.inference_mode():
        logits = forward(model.preprocess(x)).logits
    return float(average_precision_score(Y.numpy(), logits.numpy(), average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parse_args(parser, QUICK)
    torch.set_num_threads(args.threads)
    scores = {variant: train_and_score(variant, args.steps) for variant in ("scaled", "unscaled", "prenorm")}
    print(f"toy 19-class multi-label task, ResNet-18, {args.steps} AdamW steps of 64 cells, macro AP")
    print(f"{'classifier input':42s} {'measured':>9s} {'baseline':>9s}  target")
    print(f"{'sqrt(D) * e  vs  z (pre-normalisation)':42s} {scores['scaled']:9.3f} {scores['prenorm']:9.3f}  "
          f"within 0.05: {'met' if scores['scaled'] >= scores['prenorm'] - 0.05 else 'MISSED'}")
    print(f"{'sqrt(D) * e  vs  e (unscaled)':42s} {scores['scaled']:9.3f} {scores['unscaled']:9.3f}  "
          f"higher: {'met' if scores['scaled'] > scores['unscaled'] else 'MISSED'}")
    name = f"toy task macro AP, classifier on sqrt(D) * e ({args.steps} steps)"
    write_rows(args.json, [
        Row(name, scores["scaled"], "", scores["prenorm"], "classifier on z (pre-normalisation)", "higher",
            "within 0.05", scores["scaled"] >= scores["prenorm"] - 0.05),
        Row(name, scores["scaled"], "", scores["unscaled"], "classifier on e (unscaled)", "higher", "higher",
            scores["scaled"] > scores["unscaled"]),
    ])


if __name__ == "__main__":
    main()
