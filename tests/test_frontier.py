"""Frontier maths on point sets worked out by hand, and per-trial points read along lineages.

.venv/bin/python -m pytest -q tests/test_frontier.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from ray_mtl.errors import UserError
from ray_mtl.frontier import (
    dominance,
    frontier,
    hypervolume,
    pareto_mask,
    reference_point,
    senses,
    trial_curves,
    trial_points,
)
from ray_mtl.results import load_results, write_frontier

MIN2 = [-1, -1]


def write_sweep(
    path, metrics, trials, *, schema=1, name="toy", high=("eng-fra",), low=("eng-ron",)
):
    """A results dir as the runner writes it: metrics/trials Parquet, space.yaml, results.json."""
    path.mkdir(parents=True, exist_ok=True)
    metrics = pd.DataFrame(metrics, columns=["segment", "step", "task", "split", "metric", "value"])
    metrics = metrics.astype({"step": "int64", "value": "float64"})
    metrics.to_parquet(path / "metrics.parquet", index=False)
    defaults = {"L": 0, "F": 0, "w": math.nan, "temperature": math.nan, "max_epochs": math.nan}
    defaults |= {
        "seed": 0,
        "final_step": 0,
        "status": "finished",
        "manifest_hash": "m0",
        "code_version": "c0",
    }
    columns = ["trial", "method", "lineage", *defaults]
    trials = pd.DataFrame([defaults | t for t in trials], columns=columns)
    trials["lineage"] = trials["lineage"].map(json.dumps)
    trials.to_parquet(path / "trials.parquet", index=False)
    space = {"name": name, "tasks": {"high": list(high), "low": list(low)}}
    (path / "space.yaml").write_text(yaml.safe_dump(space))
    if schema is not None:
        (path / "results.json").write_text(json.dumps({"schema": schema, "sweep": name}))
    return path


def piece(segment, a, b):
    return {"segment": segment, "from_step": a, "to_step": b}


@pytest.fixture
def toy(tmp_path):
    """Trunk t (steps 0,10,20), branch b forked at 10 (10,20,30), branch b2 with one eval at 20."""
    rows = []
    for seg, steps, fra, ron, chrf in [
        ("t", [0, 10, 20], [5.0, 4.0, 3.0], [6.0, 5.0, 5.5], [10, 20, 30]),
        ("b", [10, 20, 30], [3.9, 3.5, 3.6], [4.0, 3.0, 3.5], [25, 40, 35]),
        ("b2", [20], [4.5], [4.5], [22]),
    ]:
        for i, s in enumerate(steps):
            rows += [
                (seg, s, "eng-fra", "dev", "ce", fra[i]),
                (seg, s, "eng-ron", "dev", "ce", ron[i]),
            ]
            rows += [
                (seg, s, "eng-ron", "dev", "chrf", chrf[i]),
                (seg, s, "*", "train", "lr", 1e-3),
            ]
    trials = [
        {"trial": "tp", "method": "two_phase", "L": 10, "F": 20, "w": 0.5, "final_step": 30,
         "lineage": [piece("t", 0, 10), piece("b", 10, 30)]},
        {"trial": "sc", "method": "scalarization", "F": 20, "w": 0.1, "final_step": 20,
         "lineage": [piece("t", 0, 20)]},
        {"trial": "run", "method": "two_phase", "L": 10, "F": 30, "w": 0.3, "final_step": 40,
         "status": "running", "lineage": [piece("t", 0, 10), piece("b2", 10, 40)]},
    ]  # fmt: skip
    return write_sweep(tmp_path / "toy", rows, trials)


def test_pareto_mask_min_with_duplicates_and_nan():
    pts = np.array([[1, 3], [2, 2], [3, 1], [3, 3], [2, 2], [np.nan, 0]])
    assert pareto_mask(pts, MIN2).tolist() == [True, True, True, False, True, False]


def test_pareto_mask_maximise_and_mixed():
    pts = np.array([[3, 1], [2, 2], [1, 1], [1, 3]])
    assert pareto_mask(pts, [1, 1]).tolist() == [True, True, False, True]
    # ce (min) vs chrF (max): (1, 3) is best on both.
    assert pareto_mask(pts, [-1, 1]).tolist() == [False, False, False, True]


def test_hypervolume_2d_by_hand():
    # Boxes to ref (4, 4): 3x1 + 2x1 + 1x1 stacked from the bottom -> 1 + 2 + 3 = 6.
    pts = np.array([[1, 3], [2, 2], [3, 1]])
    assert hypervolume(pts, np.array([4, 4]), MIN2) == pytest.approx(6)
    # A dominated point, a duplicate and a point beyond ref change nothing.
    more = np.vstack([pts, [[3, 3], [2, 2], [0, 5]]])
    assert hypervolume(more, np.array([4, 4]), MIN2) == pytest.approx(6)
    # Maximised axes (BLEU-like) with ref (0, 0): the mirror image, also 6.
    assert hypervolume(np.array([[3, 1], [2, 2], [1, 3]]), np.zeros(2), [1, 1]) == pytest.approx(6)
    assert hypervolume(np.empty((0, 2)), np.array([4, 4]), MIN2) == 0


def test_hypervolume_3d_by_hand():
    # Three boxes of 3*2*1 = 6; pairwise overlaps 2 each; triple overlap 1: 18 - 6 + 1 = 13.
    pts = np.array([[1, 2, 3], [2, 3, 1], [3, 1, 2]])
    assert hypervolume(pts, np.array([4, 4, 4]), [-1] * 3) == pytest.approx(13)
    assert hypervolume(np.array([[1, 1, 1]]), np.array([2, 3, 4]), [-1] * 3) == pytest.approx(6)
    # Third axis maximised: the same geometry mirrored.
    mirrored = pts * [1, 1, -1]
    assert hypervolume(mirrored, np.array([4, 4, -4]), [-1, -1, 1]) == pytest.approx(13)


def test_hypervolume_5d_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pts, ref = rng.random((12, 5)), np.ones(5)
    samples = rng.random((200_000, 5))
    covered = (pts[None, :, :] <= samples[:, None, :]).all(axis=2).any(axis=1).mean()
    assert hypervolume(pts, ref, [-1] * 5) == pytest.approx(covered, abs=0.01)


def test_reference_point_and_senses():
    assert senses([("a", "ce"), ("a", "chrf"), "b/bleu", ("*", "loss")]) == [-1, 1, 1, -1]
    ref = reference_point(np.array([[1, 10], [3, 20], [2, np.nan]]), [-1, 1])
    assert ref.tolist() == pytest.approx([3.2, 9.0])
    with pytest.raises(UserError, match="metric"):
        senses([("a", "lr")])


def test_dominance_shares():
    a = np.array([[1, 3], [3, 1]])
    b = np.array([[2, 4], [0.5, 5], [3, 1]])  # dominated, not dominated, equal (weakly dominated)
    assert dominance(a, b, MIN2) == pytest.approx(2 / 3)
    assert dominance(b, a, MIN2) == 0.5
    assert math.isnan(dominance(a, np.empty((0, 2)), MIN2))


def test_curves_follow_lineage_later_piece_wins(toy):
    c = trial_curves(load_results(toy))
    fra = c[(c.trial == "tp") & (c.task == "eng-fra") & (c.metric == "ce")]
    assert fra.step.tolist() == [0, 10, 20, 30]
    assert fra.segment.tolist() == ["t", "b", "b", "b"]  # trunk's step 20 is not this trial's
    assert fra.value.tolist() == [5.0, 3.9, 3.5, 3.6]


def test_trial_points_best_vs_final(toy):
    res = load_results(toy)
    best = trial_points(res).set_index("trial")
    assert list(best.columns[-2:]) == ["eng-fra/ce", "eng-ron/ce"]
    assert best.loc["tp", ["eng-fra/ce", "eng-ron/ce"]].tolist() == [3.5, 3.0]
    assert best.loc["sc", ["eng-fra/ce", "eng-ron/ce"]].tolist() == [3.0, 5.0]
    final = trial_points(res, at="final").set_index("trial")
    assert final.loc["tp", ["eng-fra/ce", "eng-ron/ce"]].tolist() == [3.6, 3.5]
    assert final.loc["sc", ["eng-fra/ce", "eng-ron/ce"]].tolist() == [3.0, 5.5]
    assert final.loc["run", ["eng-fra/ce", "eng-ron/ce"]].tolist() == [4.5, 4.5]  # latest so far
    chrf = trial_points(res, axes=["eng-ron/chrf", "low/ce"]).set_index("trial")
    assert chrf.loc["tp"].tolist()[-2:] == [40, 3.0]
    assert chrf.loc["sc"].tolist()[-2:] == [30, 5.0]


def test_test_values_are_those_of_the_best_dev_weights_at_the_trial_end(tmp_path):
    """Test rows come at a trial's end from its best dev weights: a later, better test value of
    the same trunk is another trial's, and a lower earlier one must not be picked (that would
    choose on test)."""
    rows = [("t", s, "eng-fra", "dev", "ce", v) for s, v in [(10, 4.0), (20, 3.0), (30, 2.0)]]
    rows += [("t", s, "eng-ron", "dev", "ce", v) for s, v in [(10, 5.0), (20, 4.0), (30, 4.5)]]
    rows += [("t", 10, t, "test", "ce", 1.0) for t in ("eng-fra", "eng-ron")]  # an earlier end
    rows += [("t", 20, "eng-fra", "test", "ce", 3.3), ("t", 20, "eng-ron", "test", "ce", 4.4)]
    rows += [("t", 30, "eng-fra", "test", "ce", 2.2), ("t", 30, "eng-ron", "test", "ce", 4.1)]
    trials = [
        {"trial": "sc20", "method": "scalarization", "final_step": 20,
         "lineage": [piece("t", 0, 20)]},
        {"trial": "sc30", "method": "scalarization", "final_step": 30, "seed": 1,
         "lineage": [piece("t", 0, 30)]},
    ]  # fmt: skip
    res = load_results(write_sweep(tmp_path / "s", rows, trials))
    test = trial_points(res, split="test").set_index("trial")
    assert test.loc["sc20", ["eng-fra/ce", "eng-ron/ce"]].tolist() == [3.3, 4.4]
    assert test.loc["sc30", ["eng-fra/ce", "eng-ron/ce"]].tolist() == [2.2, 4.1]
    assert frontier(res, split="test")["split"] == "test"
    with pytest.raises(UserError, match="best dev weights"):
        trial_points(res, at="final", split="test")


def test_frontier_and_write(toy):
    res = load_results(toy)
    fr = frontier(res)
    json.dumps(fr, allow_nan=False)
    assert fr["axes"] == ["eng-fra/ce", "eng-ron/ce"] and fr["senses"] == [-1, -1]
    assert fr["trials"] == {"total": 3, "finished": 2, "pruned": 0, "with_values": 3}
    tp = fr["methods"]["two_phase"]
    assert [m["trial"] for m in tp["front"]] == ["tp"]  # (3.5, 3.0) dominates run's (4.0, 4.5)
    assert fr["dominance"]["two_phase"]["scalarization"] == 0.0
    # ref: worst (4.0, 5.0) + 10% of ranges (1.0, 2.0) -> (4.1, 5.2).
    assert fr["reference_point"] == pytest.approx([4.1, 5.2])
    assert tp["hypervolume"] == pytest.approx((4.1 - 3.5) * (5.2 - 3.0))
    assert set(tp["hypervolume_by_seed"]) == {"0"}
    doc = write_frontier(res, toy)
    assert json.loads((toy / "frontier.json").read_text()) == doc
    table = pq.read_table(toy / "frontier.parquet").to_pandas()
    assert sorted(table["at"].unique()) == ["best", "final"] and len(table) == 6
    assert {"method", "trial", "on_front", "eng-fra/ce"} <= set(table.columns)


@pytest.mark.parametrize(
    ("break_it", "match"),
    [
        (lambda p: (p / "results.json").unlink(), "results.json: not found.*schema 1"),
        (lambda p: (p / "results.json").write_text('{"schema": 0}'), "written by schema 0.*reads"),
        (lambda p: (p / "trials.parquet").unlink(), "trials.parquet: not found"),
        (lambda p: (p / "space.yaml").write_text("name: x\n"), "space.yaml: tasks"),
    ],
)
def test_load_results_errors(toy, break_it, match):
    break_it(toy)
    with pytest.raises(UserError, match=match):
        load_results(toy)


def test_load_results_missing_and_empty(tmp_path):
    with pytest.raises(UserError, match="nope: sweep dir not found"):
        load_results(tmp_path / "nope")
    empty = write_sweep(tmp_path / "empty", [], [{"trial": "x", "method": "m", "lineage": []}])
    with pytest.raises(UserError, match=r"metrics\.parquet: no metrics"):
        load_results(empty)


def test_diverged_and_non_finite_values_never_reach_a_front(tmp_path):
    """A diverged trial's earlier (better) values and any NaN or inf are never points: the
    hypervolume stays finite and the report's summary reads."""
    from ray_mtl.report import summary_text

    nan, inf = math.nan, math.inf
    rows = []
    for seg, step, fra, ron in [
        ("ok", 10, 3.0, 3.0),
        ("div", 5, 2.0, 2.0),  # better than "ok", then its loss went non-finite
        ("div", 10, nan, nan),
        ("hot", 10, 4.0, inf),  # an overflowing CE is no value either
        ("n", 10, 3.5, 3.5),
    ]:
        rows += [(seg, step, "eng-fra", "dev", "ce", fra), (seg, step, "eng-ron", "dev", "ce", ron)]
    trials = [
        {"trial": "ok", "method": "m", "lineage": [piece("ok", 0, 10)], "final_step": 10},
        {
            "trial": "div",
            "method": "m",
            "lineage": [piece("div", 0, 10)],
            "final_step": 10,
            "status": "diverged",
        },
        {"trial": "hot", "method": "m", "lineage": [piece("hot", 0, 10)], "final_step": 10},
        {"trial": "n", "method": "n", "lineage": [piece("n", 0, 10)], "final_step": 10},
    ]
    res = load_results(write_sweep(tmp_path / "s", rows, trials))
    for at in ("best", "final"):
        fr = frontier(res, at=at)
        assert [m["trial"] for m in fr["methods"]["m"]["front"]] == ["ok"], at
        assert all(math.isfinite(v["hypervolume"]) for v in fr["methods"].values())
        assert math.isfinite(sum(fr["reference_point"]))
        assert any("Hypervolume" in line for line in summary_text(fr))
    pts = trial_points(res, at="best").set_index("trial")
    assert pts.loc[["div", "hot"], "eng-ron/ce"].isna().all()
