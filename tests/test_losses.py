"""Classification losses, class weights, MIL pooling and loss, the multi-label miner and the
combined loss, checked against hand-computed values and brute-force enumeration."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners

from hpa_embed.config import LossConfig
from hpa_embed.losses import (
    CombinedLoss,
    MultiLabelTripletMiner,
    binary_cross_entropy_loss,
    class_weights_from_counts,
    cross_entropy_loss,
    mil_bce_loss,
    pool_bags,
    primary_labels,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from hpa_embed.models import ModelOutput


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# --------------------------------------------------------------------------- class weights


def test_inverse_frequency_weights_by_hand():
    # counts (1, 3, 0, 6): a zero count counts as 1; 1/n = (1, 1/3, 1, 1/6), sum 2.5, scaled to sum 4
    weights = class_weights_from_counts([1, 3, 0, 6], "inverse_frequency")
    np.testing.assert_allclose(weights, [1.6, 1.6 / 3, 1.6, 1.6 / 6], rtol=1e-6)
    assert weights.dtype == np.float32


def test_effective_number_weights_by_hand():
    # beta = 0.5: (1 - b) / (1 - b^n) = 0.5/0.5, 0.5/0.875, 0.5/0.984375 for n = 1, 3, 6
    raw = np.array([1.0, 0.5 / 0.875, 0.5 / 0.984375])
    weights = class_weights_from_counts([1, 3, 6], "effective_number", beta=0.5)
    np.testing.assert_allclose(weights, raw * 3 / raw.sum(), rtol=1e-6)
    # beta = 0 is uniform
    np.testing.assert_allclose(class_weights_from_counts([1, 30, 600], "effective_number", beta=0.0), 1)
    np.testing.assert_allclose(class_weights_from_counts([1, 30], "none"), [1, 1])


def test_class_weight_errors():
    with pytest.raises(ValueError, match="unknown class-weight method"):
        class_weights_from_counts([1, 2], "sqrt")
    with pytest.raises(ValueError, match="non-negative"):
        class_weights_from_counts([1, -2])


# --------------------------------------------------------------------------- classification


def test_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    l0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    l1 = -math.log(1 / (math.e + 2))
    assert cross_entropy_loss(logits, y).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    weights = [2.0, 1.0, 0.5]
    expected = (2.0 * l0 + 0.5 * l1) / 2.5
    assert cross_entropy_loss(logits, y, weights).item() == pytest.approx(expected, rel=1e-6)


def test_bce_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    Y = torch.tensor([[True, False], [True, True]])
    terms = [
        -math.log(sigmoid(0.0)), -math.log(1 - sigmoid(2.0)),
        -math.log(sigmoid(-1.0)), -math.log(sigmoid(0.5)),
    ]
    assert binary_cross_entropy_loss(logits, Y).item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    weighted = (3 * terms[0] + 0.5 * terms[1] + 3 * terms[2] + 0.5 * terms[3]) / 4
    assert binary_cross_entropy_loss(logits, Y, [3.0, 0.5]).item() == pytest.approx(weighted, rel=1e-6)


def test_sigmoid_focal_by_hand_and_equals_bce_at_gamma_zero():
    torch.manual_seed(0)
    logits, Y = torch.randn(6, 5), torch.rand(6, 5) < 0.4
    torch.testing.assert_close(sigmoid_focal_loss(logits, Y, gamma=0.0), binary_cross_entropy_loss(logits, Y))
    unit_weights = sigmoid_focal_loss(logits, Y, gamma=0.0, class_weights=[1.0] * 5)
    torch.testing.assert_close(unit_weights, binary_cross_entropy_loss(logits, Y))
    # one positive with logit 1 and one negative with logit 1, gamma 2, weights (2, 1)
    p = sigmoid(1.0)
    positive = 2 * (1 - p) ** 2 * -math.log(p)
    negative = 1 * p**2 * -math.log(1 - p)
    value = sigmoid_focal_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[1, 0]]), 2.0, [2.0, 1.0])
    assert value.item() == pytest.approx((positive + negative) / 2, rel=1e-6)


def test_softmax_focal_by_hand_and_equals_ce_at_gamma_zero():
    torch.manual_seed(0)
    logits, y = torch.randn(7, 4), torch.randint(0, 4, (7,))
    weights = [0.5, 1.0, 2.0, 1.5]
    torch.testing.assert_close(softmax_focal_loss(logits, y, 0.0), cross_entropy_loss(logits, y))
    torch.testing.assert_close(
        softmax_focal_loss(logits, y, 0.0, weights), cross_entropy_loss(logits, y, weights)
    )
    p = math.exp(1) / (math.exp(1) + 1)
    value = softmax_focal_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), gamma=2.0)
    assert value.item() == pytest.approx((1 - p) ** 2 * -math.log(p), rel=1e-6)


# --------------------------------------------------------------------------- multiple instances


def test_lse_pooling_by_hand():
    logits = torch.tensor([[0.0, 1.0], [math.log(3), -2.0], [5.0, 0.5]], dtype=torch.float64)
    pooled, bag = pool_bags(logits, torch.tensor([4, 4, 1]), "lse", r=1.0)
    assert bag.tolist() == [1, 1, 0]  # bags in increasing order of their code
    # bag 4, class 0: log((e^0 + e^ln3) / 2) = log 2
    expected = [[5.0, 0.5], [math.log(2), math.log((math.e + math.exp(-2)) / 2)]]
    torch.testing.assert_close(pooled, torch.tensor(expected, dtype=torch.float64))
    pooled, _ = pool_bags(logits, torch.tensor([4, 4, 1]), "lse", r=2.0)
    assert pooled[1, 0].item() == pytest.approx(0.5 * math.log((1 + 9) / 2))


def test_pooling_limits_max_and_mean_against_brute_force():
    x = 10 * torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    groups = torch.tensor([0, 1, 2] * 4)
    brute_max = torch.stack([x[groups == k].amax(0) for k in range(3)])
    brute_mean = torch.stack([x[groups == k].mean(0) for k in range(3)])
    torch.testing.assert_close(pool_bags(x, groups, "max")[0], brute_max)
    torch.testing.assert_close(pool_bags(x, groups, "mean")[0], brute_mean)
    # float32: r -> inf gives the max (exp(r x) would overflow), r -> 0 the mean (exp(r x) would
    # round to 1); in between LSE grows with r
    torch.testing.assert_close(pool_bags(x, groups, "lse", 1e4)[0], brute_max, atol=1e-3, rtol=0)
    torch.testing.assert_close(pool_bags(x, groups, "lse", 1e-6)[0], brute_mean, atol=1e-3, rtol=0)
    steps = [brute_mean] + [pool_bags(x, groups, "lse", r)[0] for r in (0.1, 1.0, 10.0)] + [brute_max]
    for low, high in zip(steps, steps[1:]):
        assert (low <= high + 1e-5).all()
    x64 = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: pool_bags(v, groups[:6], "lse", 3.0)[0], (x64,))
    with pytest.raises(ValueError, match="pooling='attention'"):
        pool_bags(x, groups, "attention")


def brute_force_mil(logits, Y, groups, pool):
    """Per bag and class: pool its cells' logits, BCE against 'any cell has the class'; the mean."""
    terms = []
    for code in sorted(set(groups.tolist())):
        cells = [i for i in range(len(groups)) if groups[i] == code]
        for k in range(logits.shape[1]):
            p = sigmoid(pool([logits[i, k].item() for i in cells]))
            positive = any(bool(Y[i, k]) for i in cells)
            terms.append(-math.log(p) if positive else -math.log(1 - p))
    return sum(terms) / len(terms)


POOLS = {
    "lse": lambda v: math.log(sum(math.exp(2.5 * x) for x in v) / len(v)) / 2.5,
    "max": max,
    "mean": lambda v: sum(v) / len(v),
}


@pytest.fixture(scope="module")
def bags_batch():
    logits = torch.randn(7, 4, generator=torch.Generator().manual_seed(5))
    # the cells of a bag carry different labels: the bag's label is their union
    Y = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0],
                      [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    groups = torch.tensor([2, 0, 2, 5, 0, 2, 9])
    return logits, Y, groups


@pytest.mark.parametrize("pooling", ["lse", "max", "mean"])
def test_mil_loss_matches_per_bag_bce(bags_batch, pooling):
    logits, Y, groups = bags_batch
    got = mil_bce_loss(logits, Y, groups, pooling, r=2.5)
    assert got.item() == pytest.approx(brute_force_mil(logits, Y, groups, POOLS[pooling]), rel=1e-5)


def test_combined_loss_adds_the_weighted_mil_term(bags_batch):
    logits, Y, groups = bags_batch
    E = F.normalize(torch.randn(7, 3, generator=torch.Generator().manual_seed(6)), dim=1)
    config = LossConfig(classification="bce", metric=None, mil_weight=0.5, mil_pooling="max")
    logits = logits.clone().requires_grad_()
    total, parts = CombinedLoss(config, num_classes=4)(ModelOutput(E, logits), Y, groups)
    assert parts["mil"].item() == pytest.approx(brute_force_mil(logits, Y, groups, max), rel=1e-5)
    assert total.item() == pytest.approx(parts["cls"].item() + 0.5 * parts["mil"].item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(logits.grad).all()
    # class weights weigh the bag term's columns as they weigh the cell term's
    weighted = LossConfig(metric=None, mil_weight=1.0, class_weights="inverse_frequency")
    counts = [3, 1, 2, 2]
    _, parts = CombinedLoss(weighted, 4, class_counts=counts)(ModelOutput(E, logits), Y, groups)
    expected = mil_bce_loss(logits, Y, groups, "lse", 5.0, class_weights_from_counts(counts))
    torch.testing.assert_close(parts["mil"], expected.detach())
    # off by default: no groups needed, the part is 0
    _, parts = CombinedLoss(LossConfig(metric=None), 4)(ModelOutput(E, logits), Y)
    assert parts["mil"].item() == 0
    with pytest.raises(ValueError, match="needs groups"):
        CombinedLoss(config, 4)(ModelOutput(E, logits), Y)
    with pytest.raises(ValueError, match="needs multi-hot targets"):
        CombinedLoss(config, 4)(ModelOutput(E, logits), torch.arange(7) % 4, groups)
    # MIL alone is a loss
    LossConfig(classification=None, metric=None, mil_weight=1.0)


# --------------------------------------------------------------------------- multi-label miner


def brute_force_triplets(E, Y, margin, kind, inverted):
    """Every (a, p, n) by enumeration, with TripletMarginMiner's selection rules."""
    Y = Y.bool()
    mat = E @ E.T if inverted else torch.cdist(E, E)
    found = set()
    for a, p, n in itertools.product(range(len(E)), repeat=3):
        if a == p or not (Y[a] & Y[p]).any() or (Y[a] & Y[n]).any():
            continue
        m = (mat[a, p] - mat[a, n]).item() if inverted else (mat[a, n] - mat[a, p]).item()
        if m <= margin and (kind != "hard" or m <= 0) and (kind != "semihard" or m > 0):
            found.add((a, p, n))
    return found


@pytest.fixture(scope="module")
def multi_label_batch():
    generator = torch.Generator().manual_seed(3)
    E = F.normalize(torch.randn(14, 6, generator=generator), dim=1)
    Y = torch.rand(14, 5, generator=generator) < 0.3
    Y[0] = False  # a cell without labels: only ever a negative
    Y[1] = Y[2] = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)
    return E, Y


@pytest.mark.parametrize("kind", ["all", "hard", "semihard"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_multilabel_miner_matches_brute_force(multi_label_batch, kind, distance):
    E, Y = multi_label_batch
    inverted = distance == "cosine"
    dist = distances.CosineSimilarity() if inverted else distances.LpDistance(p=2)
    # a small block forces several anchor chunks
    miner = MultiLabelTripletMiner(margin=0.3, type_of_triplets=kind, distance=dist)
    a, p, n = miner(E, Y)
    assert a.dtype == torch.long
    got = list(zip(a.tolist(), p.tolist(), n.tolist()))
    expected = brute_force_triplets(E, Y, 0.3, kind, inverted)
    assert len(got) == len(set(got)) and set(got) == expected and len(expected) > 0
    assert 0 not in a.tolist() and 0 not in p.tolist()
    assert miner.num_triplets == len(expected)


@pytest.mark.parametrize("fraction", [0.05, 0.9])  # total >> cap (draws) and total ~ cap (permutation)
def test_multilabel_miner_caps_with_a_random_subset(multi_label_batch, fraction):
    E, Y = multi_label_batch
    full = brute_force_triplets(E, Y, 0.3, "all", True)
    cap = int(len(full) * fraction)
    miner = MultiLabelTripletMiner(
        margin=0.3, max_triplets=cap, distance=distances.CosineSimilarity(),
        generator=torch.Generator().manual_seed(0),
    )
    got = list(zip(*(t.tolist() for t in miner(E, Y))))
    assert len(got) == len(set(got)) == cap and set(got) <= full
    # uniform: over repeated draws, early and late triplets (in (a, p, n) order) are picked
    # equally often, about cap / total of the time
    picks = dict.fromkeys(sorted(full), 0)
    for _ in range(100):
        for triplet in zip(*(t.tolist() for t in miner(E, Y))):
            picks[triplet] += 1
    rate = np.array(list(picks.values())) / 100
    half = len(rate) // 2
    assert rate[:half].mean() == pytest.approx(cap / len(full), rel=0.15)
    assert rate[half:].mean() == pytest.approx(cap / len(full), rel=0.15)


def test_multilabel_miner_with_reference_set(multi_label_batch):
    E, Y = multi_label_batch
    miner = MultiLabelTripletMiner(margin=10.0, distance=distances.LpDistance())
    a, p, n = miner(E[:4], Y[:4], E[4:], Y[4:])
    shares = (Y[:4].float() @ Y[4:].float().T) > 0
    expected = {
        (i, j, k)
        for i, j, k in itertools.product(range(4), range(10), range(10))
        if shares[i, j] and not shares[i, k]
    }
    assert set(zip(a.tolist(), p.tolist(), n.tolist())) == expected
    with pytest.raises(ValueError, match="multi-hot"):
        miner(E, torch.zeros(len(E), dtype=torch.long))


# --------------------------------------------------------------------------- combined loss


def test_combined_loss_components_and_weights(multi_label_batch):
    E, Y = multi_label_batch
    logits = torch.randn(len(E), 5, generator=torch.Generator().manual_seed(4))
    config = LossConfig(classification="bce", w_cls=2.0, w_metric=0.5, margin=0.3, miner="all")
    total, parts = CombinedLoss(config, num_classes=5)(ModelOutput(E, logits), Y)
    # the triplet loss by hand: mean of relu(s_an - s_ap + margin) over the non-zero terms
    S = E @ E.T
    triplets = brute_force_triplets(E, Y, 0.3, "all", True)
    terms = [max(0.0, (S[a, n] - S[a, p]).item() + 0.3) for a, p, n in triplets]
    nonzero = [t for t in terms if t > 0]
    assert parts["triplets"] == len(triplets)
    assert parts["metric"].item() == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-5)
    assert parts["cls"].item() == pytest.approx(binary_cross_entropy_loss(logits, Y).item(), rel=1e-6)
    assert total.item() == pytest.approx(2.0 * parts["cls"].item() + 0.5 * parts["metric"].item(), rel=1e-6)
    assert parts["total"].item() == pytest.approx(total.item())
    assert not parts["cls"].requires_grad


def test_combined_loss_single_label_goes_to_pml_directly():
    torch.manual_seed(0)
    E, logits = F.normalize(torch.randn(16, 6), dim=1), torch.randn(16, 4)
    y = torch.arange(16) % 4
    config = LossConfig(classification="ce", miner="semihard", margin=0.2, distance="euclidean")
    total, parts = CombinedLoss(config, num_classes=4)(ModelOutput(E, logits), y)
    distance = distances.LpDistance(p=2)
    mined = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=distance)(E, y)
    expected = losses.TripletMarginLoss(margin=0.2, distance=distance)(E, y, mined)
    assert parts["triplets"] == len(mined[0]) > 0
    torch.testing.assert_close(parts["metric"], expected)
    torch.testing.assert_close(parts["cls"], F.cross_entropy(logits, y))
    # multi-similarity pairs become triplets; no miner: every valid triplet (16 anchors * 3 * 12)
    _, parts = CombinedLoss(LossConfig(classification="ce", miner="multi_similarity"), 4)((E, logits), y)
    assert parts["triplets"] > 0
    _, parts = CombinedLoss(LossConfig(classification="focal", miner=None), 4)((E, logits), y)
    assert parts["triplets"] == 16 * 3 * 12


def test_no_valid_triplet_gives_zero_metric_loss():
    E = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    logits = torch.randn(6, 3, requires_grad=True)
    same_class = torch.zeros(6, dtype=torch.long)
    all_share = torch.zeros(6, 3, dtype=torch.bool)
    all_share[:, 1] = True
    for miner in ("semihard", None):
        config = LossConfig(classification="bce", miner=miner)
        for target in (same_class, all_share):
            total, parts = CombinedLoss(config, num_classes=3)(ModelOutput(E, logits), target)
            assert parts["metric"].item() == 0 and parts["triplets"] == 0
            assert torch.isfinite(total)
            total.backward()
            assert torch.isfinite(E.grad).all() and torch.isfinite(logits.grad).all()


def test_primary_label_mining_and_class_weights():
    Y = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    counts = [10, 5, 1]
    assert primary_labels(Y, counts).tolist() == [1, 0, 2, 2]
    assert primary_labels(Y.numpy()).tolist() == [0, 0, 1, 2]  # column sums (2, 2, 2): ties -> lower id
    E, logits = F.normalize(torch.randn(4, 4), dim=1), torch.randn(4, 3)
    config = LossConfig(multilabel_mining=False, miner="all", class_weights="inverse_frequency")
    loss = CombinedLoss(config, num_classes=3, class_counts=counts)
    _, parts = loss(ModelOutput(E, logits), Y)
    y = torch.tensor([1, 0, 2, 2])
    distance = distances.CosineSimilarity()
    mined = miners.TripletMarginMiner(margin=config.margin, type_of_triplets="all", distance=distance)(E, y)
    assert parts["triplets"] == len(mined[0])
    weights = class_weights_from_counts(counts, "inverse_frequency")
    torch.testing.assert_close(parts["cls"], binary_cross_entropy_loss(logits, Y, weights))
    with pytest.raises(ValueError, match="needs class_counts"):
        CombinedLoss(LossConfig(class_weights="effective_number"), num_classes=3)
    with pytest.raises(ValueError, match="no label"):
        primary_labels(np.zeros((2, 3), bool))


def test_combined_loss_targets_and_refusals():
    output = ModelOutput(F.normalize(torch.randn(4, 4), dim=1), torch.randn(4, 3))
    # ce with multi-hot targets is the cross-entropy against the label distribution Y / |Y|
    Y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    _, parts = CombinedLoss(LossConfig(classification="ce", metric=None), 3)(output, Y)
    log_p = torch.log_softmax(output.logits, dim=1)
    by_hand = -(Y.float() / Y.float().sum(1, keepdim=True) * log_p).sum(1).mean()
    torch.testing.assert_close(parts["cls"], by_hand)
    with pytest.raises(ValueError, match=r"expected int labels \[4\] or multi-hot labels \[4, 3\]"):
        CombinedLoss(LossConfig(), 3)(output, torch.ones(4, 5))
    with pytest.raises(ValueError, match="multi_similarity"):
        CombinedLoss(LossConfig(miner="multi_similarity"), 3)(output, torch.ones(4, 3, dtype=torch.bool))


@pytest.mark.parametrize(
    "overrides",
    [
        {"classification": "softmax"},
        {"classification": None, "metric": None},
        {"margin": -0.1},
        {"beta": 1.0},
        {"miner": "easy"},
        {"mil_weight": -1.0},
        {"mil_pooling": "attention"},
        {"lse_r": 0.0},
    ],
)
def test_loss_config_rejects_bad_values(overrides):
    with pytest.raises(ValueError):
        LossConfig(**overrides)
