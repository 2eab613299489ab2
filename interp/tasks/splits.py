"""Seed ranges of the maze task's splits. Training never draws a seed below TRAIN_SEED_START,
so held-out evaluation seeds are disjoint from training by construction."""

from __future__ import annotations

TEST_SEED_START = 0  # held-out test mazes: seeds 0, 1, 2, ...
VALIDATION_SEED_START = 500_000  # held-out mazes used to monitor training and choose sampler settings
TRAIN_SEED_START = 1_000_000

IN_DISTRIBUTION = {"size": 4, "frames": 4}
OUT_OF_DISTRIBUTION = ({"size": 5, "frames": 4}, {"size": 6, "frames": 4})


def held_out_seeds(n: int, offset: int = 0) -> list[int]:
    if n < 1:
        raise ValueError(f"need at least one maze, got n={n}")
    return list(range(TEST_SEED_START + offset, TEST_SEED_START + offset + n))


def validation_seeds(n: int) -> list[int]:
    return list(range(VALIDATION_SEED_START, VALIDATION_SEED_START + n))


def is_training_seed(seed: int) -> bool:
    return seed >= TRAIN_SEED_START
