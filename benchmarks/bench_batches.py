"""What the composition of a training batch costs `dim-negative` and `mil` on the quality table's data.

`mil`'s bags need batches of whole images, and `mil` trails `dim-negative`, which trains on the
same targets on class-balanced batches of single cells. The variants below change only the
batches: how many images a batch draws its cells from, and whether the classes are balanced.

========================  ========================================================  ========
variant                   batches of 64 cells                                       classes
========================  ========================================================  ========
``dim-negative``          cells drawn by class (``sampler = "balanced"``)           balanced
``dim-negative-shuffle``  random cells: about 64 images a batch                     no
``dim-negative-16x4``     16 random images, at most 4 random cells of each          no
``dim-negative-images``   whole images, each once an epoch: about 4 images a batch  no
``mil``                   whole images, each once an epoch, plus the bag term       no
``mil-balanced_images``   whole images drawn class-balanced, plus the bag term      balanced
========================  ========================================================  ========

It runs bench_recipes.py with these recipes added (its options pass through); in the same
``--out`` (by default the quality table's) it reuses the table's data and its runs of
``dim-negative`` and ``mil``:

    .venv/bin/python benchmarks/bench_batches.py       # 6 recipes, about 30 min with the data
"""

from __future__ import annotations

import dataclasses
import sys

import bench_recipes
import numpy as np

import hpa_embed.train
from hpa_embed.data import ImageBatchSampler, make_batch_sampler
from hpa_embed.recipes import RECIPES, Recipe, recipe_config

IMAGES_PER_BATCH, CELLS_PER_IMAGE = 16, 4
# A batches_per_epoch value no run uses, by which a variant asks for the 16 x 4 batches (a
# sampler no config names); the epoch then has as many batches as the balanced sampler's.
FEW_CELLS_PER_IMAGE = 4242


class FewCellsPerImage(ImageBatchSampler):
    """Batches of ``IMAGES_PER_BATCH`` distinct random images, at most ``CELLS_PER_IMAGE``
    random cells of each; as many batches an epoch as the balanced sampler draws."""

    def __len__(self) -> int:
        return sum(map(len, self.images)) // self.batch_size

    def _rank_batches(self) -> list[list[np.ndarray]]:
        rng = self._rng()
        batches = []
        for _ in range(len(self)):
            chosen = rng.choice(len(self.images), IMAGES_PER_BATCH, replace=False)
            cells = [rng.choice(self.images[i], min(CELLS_PER_IMAGE, len(self.images[i])), replace=False)
                     for i in chosen]
            batches.append([np.concatenate(cells)])
        return batches


def batch_sampler(data, y_primary, groups=None, seed=0, rank=0, world_size=1):
    """make_batch_sampler, with the 16 x 4 batches where the variant asks for them."""
    if data.batches_per_epoch == FEW_CELLS_PER_IMAGE:
        return FewCellsPerImage(groups, data.batch_size, seed=seed)
    return make_batch_sampler(data, y_primary, groups, seed, rank, world_size)


def variant(recipe: str, name: str, **data) -> Recipe:
    """``recipe`` with its ``[data]`` section changed."""

    def configure(base):
        config = recipe_config(recipe, base)
        return config.replace(data=dataclasses.replace(config.data, **data))

    return Recipe(name, f"{recipe} with {data}", configure)


VARIANTS = (
    variant("dim-negative", "dim-negative-shuffle", sampler="shuffle"),
    variant("dim-negative", "dim-negative-16x4", sampler="images", batches_per_epoch=FEW_CELLS_PER_IMAGE),
    variant("dim-negative", "dim-negative-images", sampler="images"),
    variant("mil", "mil-balanced_images", sampler="balanced_images"),
)


def main() -> None:
    RECIPES.update({recipe.name: recipe for recipe in VARIANTS})
    hpa_embed.train.make_batch_sampler = batch_sampler
    names = ["dim-negative", *(recipe.name for recipe in VARIANTS[:3]), "mil", VARIANTS[3].name]
    sys.argv = [sys.argv[0], "--recipes", ",".join(names), "--seeds", "1", *sys.argv[1:]]
    bench_recipes.main()


if __name__ == "__main__":
    main()
