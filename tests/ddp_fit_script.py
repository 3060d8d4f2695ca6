"""Run by test_train.py under torchrun: the same fit as the single-process run in the test."""

import sys

from hpa_embed.config import DataConfig, LossConfig, ModelConfig, TrainConfig
from hpa_embed.train import fit

MODEL = ModelConfig(arch="resnet18", in_chans=4, crop_size=32, embedding_dim=16, dropout=0.0)
LOSS = LossConfig(classification="bce", metric=None)
DATA = DataConfig(label_mode="true_labels", batch_size=8, sampler="shuffle", augment=False)
# SGD, not Adam: Adam divides by the gradient scale, which amplifies float rounding in
# near-zero gradients into visible weight differences between the two runs.
TRAIN = TrainConfig(
    epochs=2, optimizer="sgd", lr=0.05, batchnorm="frozen", seed=5, device="cpu", channels_last=False,
    # from a zero bias the two runs agree within 1e-5; from the class priors (the default) the
    # same arithmetic drifts apart by rounding to about 1e-3 in two epochs at this learning rate
    classifier_bias="zero",
)

if __name__ == "__main__":
    fit(sys.argv[1], sys.argv[2], MODEL, LOSS, DATA, TRAIN, progress=False)
