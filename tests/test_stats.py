"""Statistics over seeds on point sets worked out by hand, and in frontier.json and the report.

.venv/bin/python -m pytest -q tests/test_stats.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_frontier import piece, write_sweep

from ray_mtl.frontier import frontier
from ray_mtl.report import plot_fronts, statistics_tables, summary_text
from ray_mtl.results import load_results
from ray_mtl.stats import (
    attainment_front,
    bootstrap_interval,
    interpolate_front,
    matched_comparison,
    matched_high,
    paired_difference,
    summary,
    verdict,
)

MIN2 = [-1, -1]


def test_summary_over_seeds():
    # 1, 2, 3: mean 2; sample variance ((1-2)^2 + 0 + (3-2)^2) / (3-1) = 1.
    assert summary({0: 1.0, 1: 2.0, 2: 3.0}) == {"n": 3, "mean": 2, "std": 1, "min": 1, "max": 3}
    one = summary({5: 4.0, 6: math.nan})  # a NaN is no seed's value
    assert one["n"] == 1 and one["mean"] == 4 and math.isnan(one["std"])


def test_bootstrap_all_differences_equal():
    # Every difference is 2, so every resampled mean is 2: the interval is the point [2, 2].
    p = paired_difference({0: 3.0, 1: 4.0, 2: 5.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert p["seeds"] == [0, 1, 2] and p["difference"] == 2
    assert p["interval"] == (2, 2) and p["verdict"] == "A better"


def test_bootstrap_pairs_by_seed_value_and_two_seeds():
    # Seeds 0 and 2 are common (seed 7 is B's only): differences 1 - 0 = 1 and 5 - 2 = 3.
    # Resampling two values gives means 1, 2, 3 with probabilities 1/4, 1/2, 1/4; the 2.5% and
    # 97.5% quantiles fall inside the 25% masses at either end: the interval is [1, 3].
    p = paired_difference({2: 5.0, 0: 1.0}, {0: 0.0, 2: 2.0, 7: 9.0})
    assert p["seeds"] == [0, 2] and p["difference"] == 2
    assert p["interval"] == (1, 3) and p["verdict"] == "A better"


def test_bootstrap_enumerated_four_seeds():
    # Differences 0, 0, 0, 4: a resample's mean is k, the number of times it draws the 4, with
    # k ~ Binomial(4, 1/4): P(k=0) = 81/256 = 0.316, P(k<=2) = 243/256 = 0.949,
    # P(k<=3) = 255/256 = 0.996. So the 2.5% quantile is 0 and the 97.5% quantile is 3 (both far
    # from a jump: 10,000 resamples put each cut-off over 10 standard errors inside its block).
    d = np.array([0.0, 0.0, 0.0, 4.0])
    assert bootstrap_interval(d) == (0, 3)
    p = paired_difference(dict(enumerate(d)), dict.fromkeys(range(4), 0.0))
    assert p["difference"] == 1 and p["interval"] == (0, 3)
    assert p["verdict"] == "not distinguishable"  # the interval holds 0
    mirrored = paired_difference(dict.fromkeys(range(4), 0.0), dict(enumerate(d)))
    assert mirrored["interval"] == (-3, 0) and mirrored["verdict"] == "not distinguishable"
    # A fixed RNG seed: the same numbers every time, whatever ran before.
    noisy = np.array([0.3, -1.2, 2.5, 0.7, 1.1])
    assert bootstrap_interval(noisy, seed=3) == bootstrap_interval(noisy, seed=3)


def test_bootstrap_one_common_seed_has_no_interval():
    p = paired_difference({0: 3.0, 1: 1.0}, {1: 0.0, 2: 5.0})
    assert p["seeds"] == [1] and p["difference"] == 1
    assert p["interval"] is None and p["verdict"] == "not distinguishable"
    assert paired_difference({0: 1.0}, {1: 1.0})["seeds"] == []
    assert bootstrap_interval(np.array([1.0])) is None


def test_verdict_follows_sense():
    assert verdict((0.5, 2.0)) == "A better" and verdict((-2.0, -0.5)) == "B better"
    # For cross-entropy (lower is better) a negative A - B favours A.
    assert verdict((-2.0, -0.5), sense=-1) == "A better"
    assert verdict((-1.0, 1.0), sense=-1) == "not distinguishable"
    assert verdict(None) == "not distinguishable"


# A front on (high CE, low CE) with a dominated point (3, 4): front (1, 5), (2, 3), (4, 2).
FRONT = np.array([[4.0, 2.0], [3.0, 4.0], [1.0, 5.0], [2.0, 3.0]])


def test_interpolation_at_matched_high_value():
    # x = 3 between (2, 3) and (4, 2): 3 + (3 - 2) / (4 - 2) * (2 - 3) = 2.5 (the staircase
    # would give 3, the value of (2, 3); the dominated (3, 4) plays no part).
    assert interpolate_front(FRONT, 3.0, MIN2) == pytest.approx(2.5)
    # x = 1.5 between (1, 5) and (2, 3): 5 + 0.5 * (3 - 5) = 4; on a point, that point's value.
    assert interpolate_front(FRONT, 1.5, MIN2) == pytest.approx(4.0)
    assert interpolate_front(FRONT, 2.0, MIN2) == 3.0
    assert interpolate_front(FRONT, 1.0, MIN2) == 5.0 and interpolate_front(FRONT, 4.0, MIN2) == 2
    # Outside the front's range [1, 4]: not extrapolated.
    assert math.isnan(interpolate_front(FRONT, 0.5, MIN2))
    assert math.isnan(interpolate_front(FRONT, 4.5, MIN2))
    # The high axis maximised (a chrF-like -CE): the same geometry, x mirrored.
    assert interpolate_front(FRONT * [-1, 1], -3.0, [1, -1]) == pytest.approx(2.5)


def test_matched_high_most_fronts_then_best():
    # Ranges on the high axis: A seed 0 [1, 4], A seed 1 [2, 5], B seed 0 [3, 6], B seed 1
    # [1.5, 2.5]. Ranges holding each best end: 1 -> 1, 2 -> 3, 3 -> 3, 1.5 -> 2; the tie
    # between 2 and 3 goes to the better high-resource value, 2.
    pts = {
        "A": {0: np.array([[1.0, 9.0], [4.0, 1.0]]), 1: np.array([[2.0, 9.0], [5.0, 1.0]])},
        "B": {0: np.array([[3.0, 9.0], [6.0, 1.0]]), 1: np.array([[1.5, 9.0], [2.5, 1.0]])},
    }
    assert matched_high(pts, MIN2) == 2.0


def test_matched_comparison_by_hand():
    pts = {
        "A": {0: np.array([[1.0, 5.0], [3.0, 3.0]]), 1: np.array([[1.0, 4.0], [3.0, 2.0]])},
        "B": {0: np.array([[1.0, 6.0], [3.0, 4.0]]), 1: np.array([[2.0, 5.0], [4.0, 3.0]])},
    }
    # Ranges [1, 3], [1, 3], [1, 3], [2, 4]: x = 1 is in three, x = 2 in all four -> at = 2.
    # At 2: A seed 0 halfway from 5 to 3 = 4, A seed 1 = 3; B seed 0 = 5, B seed 1 = 5 (a point).
    m = matched_comparison(pts, MIN2)
    assert m["at"] == 2.0
    a, b = m["methods"]["A"], m["methods"]["B"]
    assert a["by_seed"] == {0: 4.0, 1: 3.0} and a["mean"] == 3.5 and a["interval"] == (3, 4)
    assert b["mean"] == 5.0 and b["interval"] == (5, 5)
    # Paired A - B: 4 - 5 = -1, 3 - 5 = -2 -> mean -1.5, two seeds -> interval [-2, -1]; lower
    # CE is better, so A is better.
    (pair,) = m["pairs"]
    assert (pair["a"], pair["b"], pair["difference"]) == ("A", "B", -1.5)
    assert pair["interval"] == (-2, -1) and pair["verdict"] == "A better"
    # At x = 1 B's seed 1 front (from 2) does not reach: B has one seed, the pair one seed.
    m1 = matched_comparison(pts, MIN2, at=1.0)
    assert math.isnan(m1["methods"]["B"]["by_seed"][1]) and m1["methods"]["B"]["n"] == 1
    assert m1["methods"]["B"]["interval"] is None and m1["pairs"][0]["seeds"] == [0]
    assert m1["pairs"][0]["verdict"] == "not distinguishable"


# Three seeds' fronts (min, min), seed 0 with a dominated extra point (5, 5).
SEEDS = [
    np.array([[1.0, 5.0], [3.0, 2.0], [5.0, 5.0]]),
    np.array([[2.0, 4.0], [4.0, 1.0]]),
    np.array([[2.0, 3.0], [5.0, 2.0]]),
]


def test_attainment_front_three_seeds():
    # g_j(x), each seed's best low value among its points with high <= x:
    #   x=1: (5, inf, inf)   x=2: (5, 4, 3)   x=3: (2, 4, 3)   x=4: (2, 1, 3)   x=5: (2, 1, 2)
    # Median (at least 2 of 3 seeds): the 2nd smallest: inf, 4, 3, 2, 2 -> corners (2, 4),
    # (3, 3), (4, 2). (3, 3) is no seed's point: seed 0 reaches it on high, seed 2 on low.
    median = attainment_front(SEEDS, MIN2)
    assert median.tolist() == [[2, 4], [3, 3], [4, 2]]
    # At least 1 of 3 (the smallest): 5, 3, 2, 1 -> the Pareto front of all points pooled.
    assert attainment_front(SEEDS, MIN2, level=1 / 3).tolist() == [[1, 5], [2, 3], [3, 2], [4, 1]]
    # All 3 (the largest): 5, 4, 3, 2 from x = 2 on.
    assert attainment_front(SEEDS, MIN2, level=1).tolist() == [[2, 5], [3, 4], [4, 3], [5, 2]]
    # Both axes maximised (the mirror image): the mirrored median.
    mirrored = attainment_front([-s for s in SEEDS], [1, 1])
    assert mirrored.tolist() == (-median).tolist()


def sweep_of(path, points: dict[str, dict[int, list[tuple[float, float]]]]):
    """A sweep whose trials each have one dev eval: method -> seed -> (eng-fra CE, eng-ron CE)."""
    rows, trials = [], []
    for method, by_seed in points.items():
        for seed, pts in by_seed.items():
            for i, (fra, ron) in enumerate(pts):
                seg = f"{method}-s{seed}-{i}"
                rows += [
                    (seg, 0, "eng-fra", "dev", "ce", fra),
                    (seg, 0, "eng-ron", "dev", "ce", ron),
                ]
                trials.append({"trial": seg, "method": method, "seed": seed,
                               "lineage": [piece(seg, 0, 0)]})  # fmt: skip
    return load_results(write_sweep(path, rows, trials))


def test_frontier_holds_statistics(tmp_path):
    # good is 0.8 to 1.2 CE better than bad on the low task in every seed, equal on the high one.
    good = {0: [(2, 3), (4, 1)], 1: [(2, 3.2), (4, 1.2)], 2: [(2, 2.8), (4, 0.8)]}
    bad = {0: [(2, 4), (4, 2)], 1: [(2, 4.4), (4, 2.4)], 2: [(2, 3.6), (4, 1.6)]}
    res = sweep_of(tmp_path / "s", {"good": good, "bad": bad})
    fr = frontier(res)
    json.dumps(fr, allow_nan=False)
    st = fr["statistics"]
    assert st["axes"] == ["eng-fra/ce", "eng-ron/ce"]
    assert st["bootstrap"] == st["bootstrap"] | {"resamples": 10_000, "seed": 0, "level": 0.95}
    assert st["hypervolume"]["good"]["n"] == 3
    hv = fr["methods"]["good"]["hypervolume_by_seed"]
    assert st["hypervolume"]["good"]["mean"] == pytest.approx(np.mean(list(hv.values())))
    assert fr["methods"]["good"]["front_by_seed"]["1"] == ["good-s1-0", "good-s1-1"]
    # good's front dominates bad's in every seed: a larger hypervolume in each, B better.
    (pair,) = st["hypervolume_pairs"]
    assert (pair["a"], pair["b"], pair["verdict"]) == ("bad", "good", "B better")
    assert pair["interval"][1] < 0
    # Every front spans high CE [2, 4], so at = 2: good 3, 3.2, 2.8 (mean 3); bad 4, 4.4, 3.6
    # (mean 4); paired bad - good 1, 1.2, 0.8 (mean 1), every resample between 0.8 and 1.2.
    m = st["matched"]
    assert m["at"] == 2 and m["methods"]["good"]["mean"] == pytest.approx(3)
    assert m["methods"]["bad"]["mean"] == pytest.approx(4)
    (mp,) = m["pairs"]
    assert mp["difference"] == pytest.approx(1) and mp["verdict"] == "B better"
    assert 0.8 - 1e-9 <= mp["interval"][0] <= mp["interval"][1] <= 1.2 + 1e-9
    # Median of good's three fronts: at x = 2 the 2nd best of 3, 3.2, 2.8 is 3; at x = 4 it is 1.
    assert np.ravel(st["attainment"]["methods"]["good"]["front"]) == pytest.approx([2, 3, 4, 1])
    text = " ".join(summary_text(fr))
    assert "good is better than bad on hypervolume" in text
    assert "good is better than bad on eng-ron/ce at eng-fra/ce = 2" in text
    methods, pairs = statistics_tables(fr)
    assert methods["seeds"].tolist() == [3, 3] and pairs["hypervolume verdict"].tolist() == [
        "B better"
    ]
    legend = [t.get_text() for t in plot_fronts(res).axes[0].get_legend().get_texts()]
    assert "good median attainment (3 seeds)" in legend


def test_report_says_when_seeds_cannot_tell_apart(tmp_path):
    # Seed 0: a beats b; seed 1: b beats a by as much. Every interval holds 0.
    a = {0: [(2, 2), (4, 1)], 1: [(2, 4), (4, 3)]}
    b = {0: [(2, 4), (4, 3)], 1: [(2, 2), (4, 1)], 9: [(3, 3)]}  # seed 9: b's alone
    fr = frontier(sweep_of(tmp_path / "s", {"a": a, "b": b}))
    st = fr["statistics"]
    assert st["hypervolume_pairs"][0]["seeds"] == [0, 1]
    assert st["hypervolume_pairs"][0]["verdict"] == "not distinguishable"
    text = summary_text(fr)
    assert any(s.startswith("The seeds cannot tell a and b apart on hypervolume") for s in text)
    assert any("cannot tell a and b apart on eng-ron/ce at eng-fra/ce" in s for s in text)
    # One seed per method: no interval, said so.
    one = frontier(sweep_of(tmp_path / "one", {"a": {0: a[0]}, "b": {0: b[0]}}))
    assert one["statistics"]["hypervolume_pairs"][0]["interval"] is None
    assert "one common seed" in " ".join(summary_text(one))
