import numpy as np
import pandas as pd
import pytest
import torch

from hpa_embed.config import ConfigError, DataConfig
from hpa_embed.data import (
    BalancedBatchSampler,
    BalancedImageBatchSampler,
    CellDataset,
    ImageBatchSampler,
    ShuffledBatchSampler,
    augment_batch,
    cell_targets,
    make_batch_sampler,
    make_loader,
)
from hpa_embed.labels import RGB_CHANNELS
from hpa_embed.store import CellStore


def test_dataset_reads_batches_and_selects_channels(tiny_store_path):
    store = CellStore.open(tiny_store_path)
    positions, Y = cell_targets(store.cells, "image_labels", splits="train")
    rows = store.cells["row"].to_numpy()[positions]
    dataset = CellDataset(store, rows, Y)
    crops, targets, groups = dataset.__getitems__([3, 0, 3])
    assert crops.dtype == torch.uint8 and crops.shape == (3, 4, 32, 32)
    np.testing.assert_array_equal(crops.numpy(), store.get_crops(rows[[3, 0, 3]]))
    assert targets.dtype == torch.float32 and torch.equal(targets[0], torch.from_numpy(Y[3]).float())
    assert groups.tolist() == [3, 0, 3]  # default: every cell its own group
    rgb = CellDataset(store, rows, Y, channels=RGB_CHANNELS)
    np.testing.assert_array_equal(rgb[5][0].numpy(), store.get_crops(rows[[5]])[0, :3])
    with pytest.raises(ValueError, match="targets"):
        CellDataset(store, rows, Y[:-1])


def test_dataset_groups_are_image_codes(tiny_store_path):
    store = CellStore.open(tiny_store_path)
    positions, Y = cell_targets(store.cells, "image_labels", splits="train")
    image_ids = store.cells["image_id"].to_numpy()[positions]
    dataset = CellDataset(store, store.cells["row"].to_numpy()[positions], Y, groups=image_ids)
    codes = dataset.groups.numpy()
    assert dataset.groups.dtype == torch.int64 and codes.min() == 0 and codes.max() == len(set(image_ids)) - 1
    # same code <=> same image
    np.testing.assert_array_equal(codes[:, None] == codes[None], image_ids[:, None] == image_ids[None])
    _, _, groups = dataset.__getitems__([5, 1])
    assert groups.tolist() == codes[[5, 1]].tolist()
    assert dataset[2][2] == codes[2]
    with pytest.raises(ValueError, match="groups"):
        CellDataset(store, store.cells["row"].to_numpy()[positions], Y, groups=image_ids[:-1])


def test_loader_yields_sampler_batches(tiny_store_path):
    store = CellStore.open(tiny_store_path)
    positions, y = cell_targets(store.cells, "single_label", splits="train")
    rows = store.cells["row"].to_numpy()[positions]
    dataset = CellDataset(store, rows, y)
    sampler = ShuffledBatchSampler(len(dataset), 8, seed=3)
    batches = list(make_loader(dataset, sampler))
    assert len(batches) == len(dataset) // 8
    order = np.concatenate(list(sampler))
    np.testing.assert_array_equal(torch.cat([t for _, t, _ in batches]).numpy(), y[order])


def test_augmentation_only_moves_pixels_and_scales_all_channels_alike():
    x = torch.rand(16, 4, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0), intensity_jitter=0.2)
    for before, after in zip(x, out):
        ratio = after.sum(dim=(1, 2)) / before.sum(dim=(1, 2))
        # one brightness factor per cell, shared by the channels, within the jitter range
        assert torch.allclose(ratio, ratio[0].expand(4), rtol=1e-5)
        assert 0.8 - 1e-6 <= ratio[0] <= 1.2 + 1e-6
        # orientation changes permute pixels: sorted values are the scaled originals
        assert torch.allclose(
            after.flatten(1).sort().values, (before * ratio[0]).flatten(1).sort().values, atol=1e-6
        )
    still = augment_batch(x, torch.Generator().manual_seed(0), intensity_jitter=0.0)
    # flips and 90-degree turns cover the 8 orientations; each output is one of them
    for before, after in zip(x, still):
        views = [torch.rot90(v, k, (-2, -1)) for v in (before, before.flip(-1)) for k in range(4)]
        assert any(torch.equal(after, view) for view in views)
    again = augment_batch(x, torch.Generator().manual_seed(0), intensity_jitter=0.2)
    assert torch.equal(out, again)


def test_balanced_sampler_batches_are_class_balanced_and_seeded():
    labels = np.repeat(np.arange(6), [3, 10, 10, 10, 10, 10])
    sampler = BalancedBatchSampler(labels, m=2, batch_size=8, num_batches=5, seed=1)
    batches = list(sampler)
    assert len(batches) == 5
    for batch in batches:
        counts = np.bincount(labels[batch], minlength=6)
        assert sorted(counts[counts > 0]) == [2, 2, 2, 2]
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    halves = [list(BalancedBatchSampler(labels, 2, 8, 5, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == batches
    with pytest.raises(ValueError, match="needs 4 classes"):
        BalancedBatchSampler(np.repeat([0, 1], 5), m=2, batch_size=8, num_batches=1)


def test_shuffled_sampler_pads_last_batch_across_ranks():
    full = list(ShuffledBatchSampler(10, 4, shuffle=False, drop_last=False))
    assert full == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    ranks = [
        list(ShuffledBatchSampler(10, 4, shuffle=False, drop_last=False, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert ranks[0][-1] == [8, 9] and ranks[1][-1] == [0, 1]
    assert sorted(set(sum(ranks[0] + ranks[1], []))) == list(range(10))


def test_make_batch_sampler_keeps_the_batch_and_draws_more_per_class_when_classes_are_few(caplog):
    labels = np.repeat(np.arange(3), 20)  # 3 classes; a batch of 12 with m=2 would need 6
    data = DataConfig(batch_size=12, m_per_class=2, batches_per_epoch=4)
    sampler = make_batch_sampler(data, labels, seed=5)
    assert "drawing 4 cells of 3 classes per batch instead" in caplog.text
    batches = list(sampler)
    assert len(batches) == 4
    for batch in batches:
        assert len(batch) == 12 and sorted(np.bincount(labels[batch])) == [4, 4, 4]
    # 1 class cannot fill a balanced batch of 12 with any m below 12 ... but m = 12 works
    one = make_batch_sampler(DataConfig(batch_size=12, m_per_class=2), np.zeros(30, dtype=int))
    assert all(len(batch) == 12 for batch in one)
    with pytest.raises(ConfigError, match="cannot be drawn from 0 classes"):
        make_batch_sampler(DataConfig(batch_size=12, m_per_class=2), np.zeros(0, dtype=int))


def test_make_batch_sampler_shuffle_and_seed():
    labels = np.repeat(np.arange(5), 8)
    data = DataConfig(sampler="shuffle", batch_size=8)
    assert list(make_batch_sampler(data, labels, seed=2)) == list(ShuffledBatchSampler(40, 8, seed=2))
    balanced = DataConfig(batch_size=8, m_per_class=2)
    first, again = (list(make_batch_sampler(balanced, labels, seed=2)) for _ in range(2))
    assert first == again


def image_groups(seed=0, n_images=40, most=9) -> np.ndarray:
    """Image codes of cells: 1 .. most cells per image, cells of an image not contiguous."""
    rng = np.random.RandomState(seed)
    return rng.permutation(np.repeat(np.arange(n_images) * 3 + 7, rng.randint(1, most + 1, n_images)))


def images_of(batch, groups) -> set:
    return set(groups[batch].tolist())


def test_image_sampler_keeps_images_whole_and_covers_each_once():
    groups = image_groups()
    sampler = ImageBatchSampler(groups, batch_size=16, seed=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    seen = []
    for batch in batches:
        assert 2 <= len(batch) <= 16 and len(set(batch)) == len(batch)
        for image in images_of(batch, groups):  # every cell of each image in the batch
            assert set(np.flatnonzero(groups == image)) <= set(batch)
        seen.extend(images_of(batch, groups))
    # each image once per epoch (a one-cell image left alone in a batch may wait)
    assert len(seen) == len(set(seen)) and len(set(groups)) - len(seen) <= 1
    assert sorted(np.concatenate(batches)) == sorted(np.flatnonzero(np.isin(groups, seen)))
    # best-fit decreasing leaves little room: about as few batches as the cells need
    assert len(batches) <= np.ceil(len(groups) / 16) + 2


def test_image_sampler_is_seeded_and_cuts_images_larger_than_a_batch():
    groups = image_groups(most=12)
    first = list(ImageBatchSampler(groups, 8, seed=1))
    assert list(ImageBatchSampler(groups, 8, seed=1)) == first
    assert list(ImageBatchSampler(groups, 8, seed=2)) != first
    sampler = ImageBatchSampler(groups, 8, seed=1)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and len(second) == len(first)
    big = [image for image in set(groups) if (groups == image).sum() > 8]
    assert big
    drawn = {image: [] for image in big}
    for epoch in (first, second):
        for batch in epoch:
            assert len(batch) <= 8
            for image in images_of(batch, groups) & set(big):
                # cut to a batch of its cells, alone in the batch
                assert images_of(batch, groups) == {image} and len(batch) == 8
                drawn[image].append(sorted(batch))
    assert any(a != b for a, b in drawn.values())  # a different random batch of it each epoch


def test_image_sampler_num_batches_continues_with_another_pass():
    groups = image_groups()
    one_pass = len(ImageBatchSampler(groups, 16))
    sampler = ImageBatchSampler(groups, 16, num_batches=one_pass + 3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == one_pass + 3
    assert len(list(ImageBatchSampler(groups, 16, num_batches=2))) == 2
    for batch in batches:
        for image in images_of(batch, groups):
            assert set(np.flatnonzero(groups == image)) <= set(batch)


@pytest.mark.parametrize("sizes", [range(1, 9), range(5, 8)], ids=["1-8 cells", "5-7 cells"])
def test_image_sampler_gives_ranks_disjoint_whole_images(sizes):
    # no image larger than a rank's batch of 8; with 5-7 cells no two fit together
    rng = np.random.RandomState(3)
    groups = rng.permutation(np.repeat(np.arange(60), rng.choice(sizes, 60)))
    ranks = [list(ImageBatchSampler(groups, 16, seed=2, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0  # the same number of steps on every rank
    per_rank = []
    for batches in ranks:
        images = []
        for batch in batches:
            assert 0 < len(batch) <= 8
            for image in images_of(batch, groups):
                assert set(np.flatnonzero(groups == image)) <= set(batch)
            images.extend(images_of(batch, groups))
        assert len(images) == len(set(images))
        per_rank.append(set(images))
    assert not per_rank[0] & per_rank[1]
    # at most one leftover batch per pass (and a lone one-cell image) are left out
    assert len(set(groups) - per_rank[0] - per_rank[1]) <= 8 + 1


def test_make_batch_sampler_images():
    groups = image_groups()
    labels = np.zeros(len(groups), dtype=int)
    data = DataConfig(label_mode="image_labels", sampler="images", batch_size=16, batches_per_epoch=5)
    sampler = make_batch_sampler(data, labels, groups, seed=3, rank=1, world_size=2)
    assert isinstance(sampler, ImageBatchSampler) and len(sampler) == 5
    assert list(sampler) == list(ImageBatchSampler(groups, 16, 5, seed=3, rank=1, world_size=2))
    with pytest.raises(ValueError, match="needs each cell's image: pass groups"):
        make_batch_sampler(data, labels)


def rare_and_common_images(seed=0):
    """Cell labels and image codes: 60 images of 2-9 cells of class 0, one image of 3 cells of class 5."""
    groups = image_groups(seed, n_images=60)
    return np.r_[np.zeros(len(groups), int), [5, 5, 5]], np.r_[groups, [1000, 1000, 1000]]


def test_balanced_image_sampler_fills_batches_with_whole_images_of_each_class():
    labels, groups = rare_and_common_images()
    sampler = BalancedImageBatchSampler(labels, groups, 16, num_batches=400, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 400
    with_rare = 0
    for batch in batches:
        assert len(batch) == 16 and len(set(batch)) == 16  # full, no cell twice
        cut = [image for image in images_of(batch, groups)
               if not set(np.flatnonzero(groups == image)) <= set(batch)]
        assert len(cut) <= 1  # whole images, but for the last one cut to fit
        with_rare += 1000 in images_of(batch, groups)
    # a draw picks class 5 with probability 1/2, so a batch of k >= 2 images misses the rare image
    # with probability <= 1/4; drawn by image (1 of 61) it would be in about 5 % of the batches
    assert with_rare / len(batches) > 0.7
    assert list(BalancedImageBatchSampler(labels, groups, 16, 400, seed=1)) == batches
    assert list(BalancedImageBatchSampler(labels, groups, 16, 400, seed=2)) != batches


def test_balanced_image_sampler_keeps_the_drawn_cell_of_a_cut_image():
    # one class per image, images of 12 cells, batches of 8: every batch is one image cut to 8
    groups = np.repeat(np.arange(4), 12)
    labels = groups.copy()
    for batch in BalancedImageBatchSampler(labels, groups, 8, num_batches=50, seed=0):
        assert len(batch) == 8 and len(images_of(batch, groups)) == 1
    with pytest.raises(ConfigError, match="a batch of 8 cells cannot be drawn from 5 cells"):
        BalancedImageBatchSampler(np.zeros(5, int), np.arange(5), 8, 1)


def test_balanced_image_sampler_gives_each_rank_its_own_whole_images():
    labels, groups = rare_and_common_images(seed=2)
    ranks = [list(BalancedImageBatchSampler(labels, groups, 16, 20, seed=3, rank=r, world_size=2))
             for r in (0, 1)]
    assert ranks[0] != ranks[1]
    for part0, part1 in zip(*ranks, strict=True):  # the same number of steps on every rank
        assert len(part0) == len(part1) == 8
        for part in (part0, part1):  # each rank's cells hold its images (the cut one aside)
            cut = [image for image in images_of(part, groups)
                   if not set(np.flatnonzero(groups == image)) <= set(part)]
            assert len(cut) <= 1


def test_make_batch_sampler_balanced_images():
    labels, groups = rare_and_common_images()
    data = DataConfig(label_mode="image_labels", sampler="balanced_images", batch_size=16)
    sampler = make_batch_sampler(data, labels, groups, seed=3)
    assert isinstance(sampler, BalancedImageBatchSampler) and len(sampler) == len(labels) // 16
    assert list(sampler) == list(BalancedImageBatchSampler(labels, groups, 16, len(labels) // 16, seed=3))
    with pytest.raises(ValueError, match="sampler='balanced_images' needs each cell's image"):
        make_batch_sampler(data, labels)


def weak_label_table() -> pd.DataFrame:
    return pd.DataFrame({
        "cell_id": [f"c{i}" for i in range(6)],
        "image_id": ["a", "a", "b", "c", "c", "d"],
        "row": np.arange(6),
        "image_labels": [[3], [3], [0, 16], [18], [18], []],
        "true_labels": [[3], [18], [16], None, [18], None],
        "split": ["train", "train", "val", "train", "train", "test"],
    })


def test_cell_targets_single_label():
    rows, y = cell_targets(weak_label_table(), "single_label")
    assert rows.tolist() == [0, 1, 3, 4] and y.tolist() == [3, 3, 18, 18] and y.dtype == np.int64


def test_cell_targets_image_labels():
    rows, Y = cell_targets(weak_label_table(), "image_labels")
    assert rows.tolist() == [0, 1, 2, 3, 4] and Y.shape == (5, 19) and Y.dtype == bool
    assert [np.flatnonzero(r).tolist() for r in Y] == [[3], [3], [0, 16], [18], [18]]
    rows, Y = cell_targets(weak_label_table(), "image_labels", splits="val")
    assert rows.tolist() == [2]


def test_cell_targets_true_labels_and_refusal():
    rows, Y = cell_targets(weak_label_table(), "true_labels")
    assert rows.tolist() == [0, 1, 2, 4]
    assert [np.flatnonzero(r).tolist() for r in Y] == [[3], [18], [16], [18]]
    no_truth = weak_label_table().assign(true_labels=None)
    with pytest.raises(ConfigError, match="carry no 'true_labels'"):
        cell_targets(no_truth, "true_labels")
    with pytest.raises(ConfigError, match="label_mode='cells'"):
        cell_targets(no_truth, "cells")
