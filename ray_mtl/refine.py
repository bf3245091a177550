"""Adaptive rates from existing forks: where a method's front has its largest gap, a new w.

    propose(branches, forks=[100, 200], taken={(100, "0.3"), ...})   # (200, 0.65) or None
    propose(branches, forks=[100, 200], taken=..., between=True)     # (150, 0.65): a new L

A space's ``refine:`` (``config.RefineConfig``) spends a step budget on new two-phase branches.
Each time a fork point's branches have all ended, the scheduler (``scheduler.Tree``) takes the
front of that seed's branches of the method on (mean high-resource, mean low-resource) dev CE,
each branch at its best per task, and finds the pair of neighbours on it with the largest gap:
the area of the rectangle between them, which is the most hypervolume one point between them
can add. The new branch goes halfway between their w and, with ``between``, halfway between
their L: the trunk's run is continued from the kept fork checkpoint before that L up to it (a
continuation, ``plan.continuation``: those steps more than F); without, it starts from the kept
fork nearest halfway. A (L, w) tried already takes the next gap. It never costs a pre-training.
Pure Python; the Tree turns a proposal into segments (``plan.new_branch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ray_mtl.config import id_number
from ray_mtl.frontier import pareto_mask


@dataclass
class Point:
    """One branch that ended: its fork step, its rate and its (high, low) mean dev CE."""

    L: int
    w: float
    high: float
    low: float


def gaps(front: list[Point]) -> list[tuple[float, Point, Point]]:
    """Neighbours on a 2-D front (minimisation) with the area of the rectangle between them,
    largest first."""
    pts = sorted(front, key=lambda p: (p.high, p.low))
    out = [(abs(b.high - a.high) * abs(a.low - b.low), a, b) for a, b in pairwise(pts)]
    return sorted(out, key=lambda g: -g[0])


def propose(
    branches: list[Point], forks: list[int], taken: set[tuple[int, str]], between: bool = False
) -> tuple[int, float] | None:
    """A new (L, w) in the largest gap of the front of ``branches`` not yet ``taken`` (fork
    step, w as ids spell it): L one of ``forks`` (fork steps whose checkpoint exists) or, with
    ``between``, halfway between the neighbours' L where a fork lies before it; None when the
    front has no gap left to fill."""
    if not forks or len(branches) < 2:
        return None
    values = np.array([[p.high, p.low] for p in branches])
    front = [p for p, on in zip(branches, pareto_mask(values, [-1, -1]), strict=True) if on]
    for area, a, b in gaps(front):
        w = round((a.w + b.w) / 2, 4)
        mid = (a.L + b.L) / 2
        if between and min(forks) <= mid:
            L = int(mid)
        else:
            L = min(forks, key=lambda f: (abs(f - mid), f))
        if area > 0 and (L, id_number(w)) not in taken:
            return L, w
    return None
