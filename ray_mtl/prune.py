"""Pareto-aware pruning of a sweep's branches: which branch stops at a rung of its fine-tuning.

    rungs = rung_steps(finetune_steps=1000, first=125, factor=2)   # [125, 250, 500]
    stop = should_stop(points, rule="scaled_pareto", shrink=0.9)   # the last point is the newcomer

A space's ``prune:`` (``config.PruneConfig``) gives each branch rungs, steps since its fork
spaced geometrically. At each rung the branch reports its best dev cross-entropy per task so
far, and is compared with the branches of its method that reached the same rung before it (at
equal steps since their forks), in the order they arrived (asynchronous, as ASHA). Two rules:

- ``scaled_pareto`` (Ax's scaled-Pareto early stopping): stop when some point of the rung's
  front, shrunk toward the reference point by ``shrink`` (``ref + shrink * (p - ref)``),
  dominates the branch. ``shrink`` near 1 prunes what is barely dominated; near 0, almost nothing.
- ``rank`` (MOASHA): order the rung's points by non-dominated rank, then by crowding distance
  (widest first); stop when at least ``ceil(k / eta)`` of the ``k`` points are strictly ahead
  of the branch (it falls in the worst ``1 - 1/eta``; a tie goes on, as in ASHA).

Neither rule prunes before ``eta`` branches reached the rung. Both are invariant to a positive
scale per axis, so judging on cross-entropy also judges on bits per byte (lm). Pure numpy; the
``scheduler.Tree`` keeps the rungs and the decisions.
"""

from __future__ import annotations

import math

import numpy as np

from ray_mtl.frontier import pareto_mask, reference_point

RULES = ("scaled_pareto", "rank")


def rung_steps(finetune_steps: int, first: int, factor: float) -> list[int]:
    """Steps since the fork at which a branch of ``finetune_steps`` is judged: ``first``,
    ``first * factor``, ... before its end (its last evaluation is its result, not a rung)."""
    out, r = [], float(first)
    while round(r) < finetune_steps:
        if not out or round(r) > out[-1]:
            out.append(round(r))
        r *= factor
    return out


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """0 for the Pareto front of minimisation ``points``, 1 for the front of the rest, ..."""
    ranks = np.full(len(points), -1)
    left, rank = np.arange(len(points)), 0
    while len(left):
        on = pareto_mask(points[left], [-1] * points.shape[1])
        ranks[left[on]] = rank
        left, rank = left[~on], rank + 1
    return ranks


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance within one front: per axis, the gap between a point's
    neighbours over the axis' range; the ends of every axis get infinity."""
    n, out = len(points), np.zeros(len(points))
    if n <= 2:
        return np.full(n, math.inf)
    for k in range(points.shape[1]):
        order = np.argsort(points[:, k], kind="stable")
        v = points[order, k]
        span = v[-1] - v[0]
        out[order[[0, -1]]] = math.inf
        if span > 0:
            out[order[1:-1]] += (v[2:] - v[:-2]) / span
    return out


def rank_keys(points: np.ndarray) -> list[tuple[int, float]]:
    """Per point of minimisation ``points``, its place in MOASHA's order, lower is better: its
    non-dominated rank, then minus its crowding distance within that rank (widest first)."""
    ranks = nondominated_ranks(points)
    crowd = np.zeros(len(points))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        crowd[idx] = crowding(points[idx])
    return [(int(r), -float(c)) for r, c in zip(ranks, crowd, strict=True)]


def should_stop(points: np.ndarray, rule: str, shrink: float = 0.9, eta: int = 3) -> bool:
    """Whether the branch whose point is the last row of ``points`` stops: every row is a branch
    of one method at one rung (minimisation, one column per task), in arrival order."""
    points = np.asarray(points, dtype=float)
    if len(points) < eta:
        return False
    if not np.isfinite(points[-1]).all():
        return True
    points = points[np.isfinite(points).all(axis=1)]
    if rule == "rank":  # as ASHA, a tie goes on: only the points strictly ahead count
        keys = rank_keys(points)
        ahead = sum(k < keys[-1] for k in keys[:-1])
        return ahead >= math.ceil(len(points) / eta)
    if rule != "scaled_pareto":
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    sense = [-1] * points.shape[1]
    ref = reference_point(points, sense)
    front = points[pareto_mask(points, sense)]
    shrunk = ref + shrink * (front - ref)
    me = points[-1]
    return bool(((shrunk <= me).all(axis=1) & (shrunk < me).any(axis=1)).any())
