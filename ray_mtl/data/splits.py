"""Train/dev/test splits with no sentence shared between them.

    split = make_splits("eng-ron", train_pairs, test_pairs, dev_size=1000, dev_fraction=0.05)
    split = make_splits("ron", [(doc,) for doc in docs], None, ...)   # lm: one side, the document

Order matters: exact duplicates go first; test is the shipped test file (or, when a task has
none, carved from train like dev); train pairs whose source or target side is in test, or in one
of the task's extra evaluation sets, are removed; dev is carved from what is left (fixed seed);
train pairs sharing a side with dev are removed; a ``train_cap`` then keeps a seeded sample of
that many train pairs, in order. So no normalised sentence of dev, test or an evaluation set
appears on either side of train, and dev shares none with them either. Items are tuples of
sides: pairs, or 1-tuples of a language model's documents, split alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

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
    """Train pairs dropped because a side appears in dev, test or an evaluation set."""
    eval_sets: dict[str, list[Pair]] = field(default_factory=dict)
    """Extra named evaluation sets, deduplicated, as given."""


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
    label: str | None = None,
    train_cap: int | None = None,
    eval_sets: dict[str, list[Pair]] | None = None,
) -> Splits:
    """Split one task's pairs (or documents); a UserError names the task (``label``, default
    ``task <task>``) if no training item survives. ``eval_sets`` are held out like test."""
    # A string seed is hashed deterministically (sha512), so splits are stable across runs.
    rng = random.Random(f"{seed}:{task}")
    documents = bool(train) and len(train[0]) == 1
    pool, duplicate = dedupe(train)
    if test is None:
        test, pool = _carve(pool, dev_size, dev_fraction, rng)
    else:
        test, dups = dedupe(test)
        duplicate += dups
    held = {name: dedupe(items)[0] for name, items in (eval_sets or {}).items()}
    before = len(pool)
    for items in (test, *held.values()):
        pool = decontaminate(pool, items)
    dev, pool = _carve(pool, dev_size, dev_fraction, rng)
    train = decontaminate(pool, dev)
    decontaminated = before - len(dev) - len(train)
    if train_cap is not None and len(train) > train_cap:
        keep = set(rng.sample(range(len(train)), train_cap))
        train = [p for i, p in enumerate(train) if i in keep]
    if not train:
        units, why = (
            ("documents", "that are")
            if documents
            else ("pairs", "whose source or target sentence is")
        )
        raise UserError(
            f"{label or f'task {task}'}: 0 training {units} left after removing "
            f"{decontaminated:,} {why} in its dev or test set (expected a train set larger "
            "than, and different from, its test set)"
        )
    return Splits(train, dev, test, duplicate, decontaminated, held)


def _carve(
    pool: list[Pair], size: int, fraction: float, rng: random.Random
) -> tuple[list[Pair], list[Pair]]:
    """A seeded sample of min(size, fraction * n) pairs (at least one), and the rest in order."""
    k = min(size, max(1, int(fraction * len(pool))), len(pool))
    picked = set(rng.sample(range(len(pool)), k))
    held = [p for i, p in enumerate(pool) if i in picked]
    rest = [p for i, p in enumerate(pool) if i not in picked]
    return held, rest


def decontaminate(pool: list[Pair], held: list[Pair]) -> list[Pair]:
    """``pool`` without the items that share any side with an item of ``held``."""
    sides = [set(side) for side in zip(*held, strict=True)]
    return [p for p in pool if not any(x in side for x, side in zip(p, sides, strict=False))]
