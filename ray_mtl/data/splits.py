"""Train/dev/test splits with no sentence shared between them.

    split = make_splits("eng-ron", train_pairs, test_pairs, dev_size=1000, dev_fraction=0.05)

Order matters: exact duplicates go first; test is the shipped test file (or, when a task has
none, carved from train like dev); train pairs whose source or target side is in test are
removed; dev is carved from what is left (fixed seed); train pairs sharing a side with dev are
removed. So no normalised sentence of dev or test appears on either side of train, and dev and
test share none either.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ray_mtl.data.corpus import Pair
from ray_mtl.errors import UserError


@dataclass
class Splits:
    train: list[Pair]
    dev: list[Pair]
    test: list[Pair]
    duplicate: int
    """Exact duplicate pairs dropped (within train files, within test files)."""
    decontaminated: int
    """Train pairs dropped because a side appears in dev or test."""


def dedupe(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """First occurrence of every exact pair, in order, and how many were dropped."""
    unique = list(dict.fromkeys(pairs))
    return unique, len(pairs) - len(unique)


def make_splits(
    task: str,
    train: list[Pair],
    test: list[Pair] | None,
    *,
    dev_size: int,
    dev_fraction: float,
    seed: int,
) -> Splits:
    """Split one task's pairs; a UserError names the task if no training pair survives."""
    # A string seed is hashed deterministically (sha512), so splits are stable across runs.
    rng = random.Random(f"{seed}:{task}")
    pool, duplicate = dedupe(train)
    if test is None:
        test, pool = _carve(pool, dev_size, dev_fraction, rng)
    else:
        test, dups = dedupe(test)
        duplicate += dups
    before = len(pool)
    pool = _decontaminate(pool, test)
    dev, pool = _carve(pool, dev_size, dev_fraction, rng)
    train = _decontaminate(pool, dev)
    decontaminated = before - len(dev) - len(train)
    if not train:
        raise UserError(
            f"task {task}: 0 training pairs left after removing {decontaminated:,} whose source "
            f"or target sentence is in its dev or test set (expected a train set larger than, "
            f"and different from, its test set)"
        )
    return Splits(train, dev, test, duplicate, decontaminated)


def _carve(
    pool: list[Pair], size: int, fraction: float, rng: random.Random
) -> tuple[list[Pair], list[Pair]]:
    """A seeded sample of min(size, fraction * n) pairs (at least one), and the rest in order."""
    k = min(size, max(1, int(fraction * len(pool))), len(pool))
    picked = set(rng.sample(range(len(pool)), k))
    held = [p for i, p in enumerate(pool) if i in picked]
    rest = [p for i, p in enumerate(pool) if i not in picked]
    return held, rest


def _decontaminate(pool: list[Pair], held: list[Pair]) -> list[Pair]:
    src = {s for s, _ in held}
    tgt = {t for _, t in held}
    return [(s, t) for s, t in pool if s not in src and t not in tgt]
