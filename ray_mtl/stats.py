"""Statistics over seeds: hypervolume spread, paired bootstrap, matched comparison, attainment.

    summary({0: 1.2, 1: 1.4})                            # n, mean, std, min, max over seeds
    paired_difference(hv_a, hv_b)                         # mean A - B, 95% interval, verdict
    interpolate_front(points, x, sense)                   # low-resource value at high = x
    matched_comparison({"m": {seed: points}}, sense)      # each method at one high value
    attainment_front([front_s0, front_s1, front_s2], sense)  # the median attainment front

Pure numpy on per-seed values and per-seed 2-D point sets (column 0 the high-resource axis,
column 1 the low-resource axis; ``sense`` as in ``ray_mtl.frontier``: -1 lower is better, +1
higher is better). ``frontier.frontier`` puts ``seed_statistics`` under its ``statistics`` key.

Intervals are percentile bootstraps over seeds (seeds resampled with replacement, the statistic
the mean), from a fixed RNG seed so that the same sweep always gives the same numbers. Two values
are paired by seed value: seed s of method A was trained on the same data order and
initialisation as seed s of method B, so their difference removes that shared noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ray_mtl.frontier import _as_min, pareto_mask

RESAMPLES = 10_000
LEVEL = 0.95
RNG_SEED = 0
MEDIAN = 0.5
MATCHED_RULE = (
    "at the high-resource value where the most per-seed fronts are defined, the best such on "
    "ties; the low-resource value interpolated linearly along each seed's front"
)
A_BETTER, B_BETTER, NOT_DISTINGUISHABLE = "A better", "B better", "not distinguishable"


def summary(by_seed: Mapping[int, float]) -> dict:
    """n, mean, sample std, min and max of the finite values; std needs two seeds (else NaN)."""
    v = np.array([x for x in by_seed.values() if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "std": std,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def bootstrap_interval(
    values: np.ndarray, resamples: int = RESAMPLES, seed: int = RNG_SEED, level: float = LEVEL
) -> tuple[float, float] | None:
    """Percentile interval of the mean of ``values`` under resampling; None below two values.

    One value has no spread to resample: an interval from it would be invented, not estimated.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def verdict(interval: tuple[float, float] | None, sense: int = 1) -> str:
    """Which of A, B the interval of A - B favours (``sense`` +1: larger is better)."""
    if interval is None:
        return NOT_DISTINGUISHABLE
    lo, hi = sorted(sense * np.asarray(interval))
    return A_BETTER if lo > 0 else B_BETTER if hi < 0 else NOT_DISTINGUISHABLE


def paired_difference(
    a: Mapping[int, float], b: Mapping[int, float], sense: int = 1, **bootstrap
) -> dict:
    """Mean over common seeds of ``a[s] - b[s]``, its bootstrap interval and the verdict.

    ``sense`` as in ``verdict``; ``bootstrap``: the settings of ``bootstrap_interval``.
    Seeds where either value is missing or not finite are left out; ``interval`` is None (and
    the verdict "not distinguishable") with fewer than two common seeds.
    """
    ok = [
        s
        for s in sorted(set(a) & set(b))
        if all(v is not None and math.isfinite(v) for v in (a[s], b[s]))
    ]
    d = np.array([a[s] - b[s] for s in ok], dtype=float)
    interval = bootstrap_interval(d, **bootstrap)
    return {
        "seeds": ok,
        "difference": float(d.mean()) if len(d) else math.nan,
        "interval": interval,
        "verdict": verdict(interval, sense),
    }


def _front_min(points: np.ndarray, sense: list[int]) -> np.ndarray:
    """The 2-D Pareto front in minimisation units, sorted by the first axis (best first)."""
    q = _as_min(points, sense)
    return np.unique(q[pareto_mask(q, [-1, -1])], axis=0)  # unique also sorts by column 0


def interpolate_front(points: np.ndarray, x: float, sense: list[int]) -> float:
    """The second axis' value on the front of ``points`` where the first axis equals ``x``.

    Linear between neighbouring front points: the grid samples a continuous family (``w`` and
    ``L`` are continuous), so the true front is a curve through the trials, and a straight line
    between two of them estimates it without bias toward the grid. The staircase would instead
    give the best value of a trial at least as good on the first axis, a bound that improves with
    every grid point added, so two methods swept on grids of different density would not compare.
    NaN where ``x`` lies outside the front's range on the first axis: no extrapolation.
    """
    q = _front_min(points, sense)
    qx = x * -sense[0]
    if len(q) == 0 or not q[0, 0] <= qx <= q[-1, 0]:
        return math.nan
    return float(np.interp(qx, q[:, 0], q[:, 1])) * -sense[1]


def matched_high(points: Mapping[str, Mapping[int, np.ndarray]], sense: list[int]) -> float:
    """The first-axis value inside the most per-seed fronts' ranges; the best such on ties.

    ``points``: method -> seed -> that seed's points (n x 2). A front is defined over its range
    on the first axis; the count of ranges holding a value is largest at some range's best end
    (moving a value toward better, up to the next best end, keeps every range that held it), so
    those ends are the only candidates.
    """
    ranges = [
        (q[0, 0], q[-1, 0])
        for by_seed in points.values()
        for p in by_seed.values()
        if len(q := _front_min(p, sense))
    ]
    if not ranges:
        return math.nan
    count = {lo: sum(a <= lo <= b for a, b in ranges) for lo, _ in ranges}
    best = min(count, key=lambda lo: (-count[lo], lo))
    return float(best) * -sense[0]


def matched_comparison(
    points: Mapping[str, Mapping[int, np.ndarray]],
    sense: list[int],
    at: float | None = None,
    **bootstrap,
) -> dict:
    """Each method's second-axis value at first axis = ``at``, per seed, with intervals.

    ``points`` as in ``matched_high``, which gives ``at`` by default; ``bootstrap``: the
    settings of ``bootstrap_interval``. Per method the mean over the seeds whose front reaches
    ``at`` and a bootstrap interval of that mean; per pair of methods the paired difference
    (verdict by the second axis' sense).
    """
    given = at is not None
    at = float(at) if given else matched_high(points, sense)
    by_method = {
        m: {int(s): interpolate_front(p, at, sense) for s, p in by_seed.items()}
        for m, by_seed in points.items()
    }
    methods = {}
    for m, values in by_method.items():
        finite = np.array([v for v in values.values() if math.isfinite(v)])
        methods[m] = {
            "by_seed": values,
            "n": len(finite),
            "mean": float(finite.mean()) if len(finite) else math.nan,
            "interval": bootstrap_interval(finite, **bootstrap),
        }
    names = sorted(by_method)
    pairs = [
        {"a": a, "b": b, **paired_difference(by_method[a], by_method[b], sense[1], **bootstrap)}
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    rule = "given" if given else MATCHED_RULE
    return {"at": at, "rule": rule, "methods": methods, "pairs": pairs}


def attainment_front(
    point_sets: list[np.ndarray], sense: list[int], level: float = MEDIAN
) -> np.ndarray:
    """Minimal points of the region attained by at least ``level`` of the 2-D point sets.

    The empirical attainment function: a point z is attained by a set when some point of the set
    is at least as good as z on both axes. At first-axis value x, set j attains every second-axis
    value from g_j(x) = its best second-axis value among points no worse than x on the first; so
    k = ceil(level * n) sets attain z exactly when z's second value is no better than the k-th best
    g_j(x). That bound only changes at the sets' first-axis values: a staircase, returned as its
    corners (n x 2, original units, first axis best first). ``level`` 0.5 is the median front.
    """
    qs = [_as_min(p, sense) for p in point_sets]
    qs = [q[~np.isnan(q).any(axis=1)] for q in qs]
    if not qs:
        return np.empty((0, 2))
    k = max(1, math.ceil(level * len(qs) - 1e-9))
    xs = np.unique(np.concatenate([q[:, 0] for q in qs]))
    g = np.array(
        [[q[q[:, 0] <= x, 1].min(initial=math.inf) for q in qs] for x in xs]
    )  # g[i, j]: set j's best second-axis value at first-axis value xs[i]
    h = np.sort(g, axis=1)[:, k - 1]
    # A corner wherever the bound is strictly better than at every smaller first-axis value.
    improves = np.isfinite(h) & (h < np.minimum.accumulate(np.append(math.inf, h))[:-1])
    return np.column_stack([xs[improves], h[improves]]) * -np.asarray(sense, dtype=float)


def seed_statistics(
    hypervolume_by_seed: Mapping[str, Mapping[int, float]],
    points: Mapping[str, Mapping[int, np.ndarray]] | None,
    sense: list[int],
) -> dict:
    """Everything over seeds for ``frontier.frontier``: per method, per pair, matched, median.

    ``hypervolume_by_seed``: method -> seed -> hypervolume; ``points``: method -> seed -> the
    seed's trials on (high, low), or None where the axes have no such pair.
    """
    methods = sorted(hypervolume_by_seed)
    out = {
        "bootstrap": {
            "resamples": RESAMPLES,
            "seed": RNG_SEED,
            "level": LEVEL,
            "statistic": "mean over seeds; pairs: mean over common seeds of A - B",
        },
        "hypervolume": {m: summary(hypervolume_by_seed[m]) for m in methods},
        "hypervolume_pairs": [
            {
                "a": a,
                "b": b,
                **paired_difference(hypervolume_by_seed[a], hypervolume_by_seed[b]),
            }
            for i, a in enumerate(methods)
            for b in methods[i + 1 :]
        ],
        "matched": None,
        "attainment": None,
    }
    if points is None:
        return out
    out["matched"] = matched_comparison(points, sense)
    out["attainment"] = {
        "level": MEDIAN,
        "methods": {
            m: {
                "seeds": len(points[m]),
                "front": attainment_front(list(points[m].values()), sense).tolist(),
            }
            for m in sorted(points)
        },
    }
    return out
