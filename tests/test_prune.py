"""Pareto-aware pruning and refinement on their own: the rules on fronts worked out by hand,
the Tree's decisions, stops, resume and new branches (plain data: no Ray, no torch).

    .venv/bin/python -m pytest -q tests/test_prune.py      # a second
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from ray_mtl.config import SpaceConfig, from_dict
from ray_mtl.errors import UserError
from ray_mtl.plan import Plan, branch_rate, plan
from ray_mtl.prune import crowding, nondominated_ranks, rank_keys, rung_steps, should_stop
from ray_mtl.refine import Point, propose
from ray_mtl.scheduler import Tree

ROOT = Path(__file__).resolve().parents[1]
# Minimisation points (CE of two tasks). a, b, c are a front; d is dominated by c alone.
A, B, C, D = [1.0, 3.0], [3.0, 1.0], [2.5, 2.5], [2.9, 2.9]


def test_rungs_are_spaced_geometrically_before_the_branch_ends():
    assert rung_steps(1000, 125, 2) == [125, 250, 500]
    assert rung_steps(100, 25, 2) == [25, 50]
    assert rung_steps(10, 1, 1.2) == [1, 2, 3, 4, 5, 6, 7, 9]  # rounded, never twice
    assert rung_steps(100, 100, 2) == []


def test_ranks_and_crowding_by_hand():
    pts = np.array([A, B, C, D, [5.0, 5.0]])
    assert nondominated_ranks(pts).tolist() == [0, 0, 0, 1, 2]
    # x: 1, 2.5, 3 (span 2): c gets (3 - 1) / 2; y the same: 2 in all; the ends infinity.
    assert crowding(np.array([A, B, C])).tolist() == [math.inf, math.inf, 2.0]
    keys = rank_keys(np.array([A, B, C, D]))
    assert keys == [(0, -math.inf), (0, -math.inf), (0, -2.0), (1, -math.inf)]


def test_scaled_pareto_stops_what_the_shrunk_front_dominates():
    # ref = worst (3, 3) + 10% of the range (2) = (3.2, 3.2); c shrunk by s: 3.2 - 0.7 s.
    assert not should_stop(np.array([A, B, C]), "scaled_pareto", shrink=0.9)  # on the front
    assert should_stop(np.array([A, B, C, D]), "scaled_pareto", shrink=0.9)  # c' = 2.57 < 2.9
    assert should_stop(np.array([A, B, C, D]), "scaled_pareto", shrink=0.5)  # c' = 2.85
    assert not should_stop(np.array([A, B, C, D]), "scaled_pareto", shrink=0.2)  # c' = 3.06
    assert not should_stop(np.array([A, D]), "scaled_pareto", eta=3)  # too few to judge


def test_rank_rule_keeps_the_best_one_in_eta():
    # c (rank 0, the least crowded) arrives third: a and b are ahead of it, and 2 >= 3 / 2.
    assert should_stop(np.array([A, B, C]), "rank", eta=2)
    assert should_stop(np.array([A, B, D]), "rank", eta=2)  # rank 1
    assert not should_stop(np.array([A, B, [0.5, 0.5]]), "rank", eta=2)  # dominates both
    assert not should_stop(np.array([A, B]), "rank", eta=2)  # a tie (both ends) goes on
    assert not should_stop(np.array([A, C, B]), "rank", eta=2)  # b is an end: none ahead
    assert not should_stop(np.array([A, B, C]), "rank", eta=4)  # too few to judge


def pruned_space(**prune) -> SpaceConfig:
    space = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    space["grid"]["low_rates"] = [0.2, 0.4, 0.6]
    return from_dict(SpaceConfig, space | {"prune": {"eta": 2} | prune})


def tree_of(space: SpaceConfig) -> Tree:
    rule = {k: getattr(space.prune, k) for k in ("rule", "shrink", "eta")}
    return Tree(plan(space).segments, slots=2, prune=rule)


def test_branches_get_rungs_and_the_trunk_asks_at_its_forks():
    segs = plan(pruned_space()).segments
    assert segs["tp-L100-w0.2-s0"].rungs == [125, 150]  # F 100: first 25, then x2
    assert segs["tp-L200-w0.2-s0"].method == "two_phase"
    assert segs["pt-s0"].rungs == [100, 200] and segs["st-w0.2-s0"].rungs == []
    assert plan(pruned_space(first_rung=40)).segments["tp-L100-w0.2-s0"].rungs == [140, 180]


def test_tree_prunes_at_a_rung_and_its_decisions_stand():
    tree = tree_of(pruned_space(rule="rank"))
    b = [f"tp-L100-w{w}-s0" for w in ("0.2", "0.4", "0.6")]
    assert not tree.judge(b[0], 125, {"eng-fra": A[0], "eng-ron": A[1]})
    assert not tree.judge(b[1], 125, {"eng-fra": 0.5, "eng-ron": 0.5})  # dominates a
    assert tree.judge(b[2], 125, {"eng-fra": 3.5, "eng-ron": 3.5})  # rank 2: both ahead
    assert tree.pruned == {b[2]: 125}
    # Asked again (a restarted worker, other values): the same answer, no second point.
    assert tree.judge(b[2], 125, {"eng-fra": 0.1, "eng-ron": 0.1})
    assert len(tree.rung_points["two_phase@25"]) == 3
    # Resume: the state file holds every decision, and a pruned segment is never ready again.
    tree.issued = {"t1": [b[2]]}
    live = Tree.from_json(tree.to_json())
    saved = Tree.from_json(tree.to_json())
    saved.issued = {}  # Tune never saved the trial that trained it
    again = saved.resumed(live)
    assert again.decisions == tree.decisions and again.pruned == {b[2]: 125}
    assert b[2] not in again.ready


def test_the_latest_forks_branches_go_first_and_beat_the_early_ones_at_their_rungs():
    """Both forks exist when a slot frees up (the trunk ran ahead): the L 200 branches go first.
    With 100 steps more pre-training they beat the L 100 branches at equal steps since their
    forks, so those stop at their first rung (handed out first, they would have been judged
    against each other alone, and none would have stopped)."""
    space = pruned_space(rule="scaled_pareto")
    tree = tree_of(dataclasses.replace(space, methods=["two_phase"]))
    assert tree.suggest("t0") == ["pt-s0"]
    for step in (100, 200):
        tree.on_result({"segment": "pt-s0", "step": step, "checkpoint_path": f"/ck/{step}"})
    order = []
    while nxt := tree.more("t0"):
        s = tree.segments[nxt[0]]
        w, gain = branch_rate(s, ["eng-ron"]), s.start_step / 100
        order.append(s.id)
        tree.judge(s.id, s.rungs[0], {"eng-fra": 5 - gain + w, "eng-ron": 6 - gain - w})
    assert [i.split("-w")[0] for i in order] == ["tp-L200"] * 3 + ["tp-L100"] * 3
    assert set(tree.pruned) == {i for i in order if i.startswith("tp-L100")}


def test_a_pruned_branch_ends_its_segment_and_frees_its_fork():
    tree = tree_of(pruned_space())
    tree.suggest("t0")
    tree.on_result({"segment": "pt-s0", "step": 100, "checkpoint_path": "/ck/100"})
    tree.on_result({"segment": "pt-s0", "step": 200, "checkpoint_path": "/ck/200"})
    branches = [s for s in tree.segments if s.startswith("tp-L100")]
    for i, b in enumerate(branches):
        tree.issued.setdefault("t1", []).append(b)
        tree.ready.remove(b)
        tree.pruned[b] = 125
        assert tree.on_result({"segment": b, "step": 125, "pruned": 1})
        assert tree._left(b) == 0
        assert tree.collectable() == (["/ck/100"] if i == len(branches) - 1 else [])


def test_a_trunk_stops_once_nothing_ahead_of_it_serves_a_branch():
    """A restart-only static trunk runs to max(L) + F, but past its last fork it serves no one:
    with pruning on, it stops there. A fork ahead whose branches are all pruned serves no one
    either."""
    space = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    space |= {"methods": ["restart"], "prune": {}}
    tree = tree_of(from_dict(SpaceConfig, space))
    trunk = "st-w0.3-s0"
    assert tree.segments[trunk].end_step == 300 and tree.segments[trunk].rungs == [100, 200]
    assert not tree.judge(trunk, 100, {})  # rs-L200 forks at 200
    assert tree.judge(trunk, 200, {})
    assert tree.pruned == {trunk: 200}
    other = "st-w0.5-s0"
    tree.pruned["rs-L200-w0.5-s0"] = 225  # as if pruned already: its fork serves no one
    assert tree.judge(other, 100, {})


def test_no_prune_rule_never_stops():
    tree = Tree(plan(pruned_space()).segments)
    assert not tree.judge("tp-L100-w0.2-s0", 125, {"eng-fra": 9.0, "eng-ron": 9.0})


@pytest.mark.parametrize(
    "prune, field",
    [
        ({"shrink": 1.0}, "prune.shrink"),
        ({"shrink": 0}, "prune.shrink"),
        ({"eta": 1}, "prune.eta"),
        ({"factor": 1}, "prune.factor"),
        ({"first_rung": 100}, "prune.first_rung"),
        ({"rule": "median"}, "prune.rule"),
    ],
)
def test_bad_prune_settings_name_the_field(prune, field):
    space = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        from_dict(SpaceConfig, space | {"prune": prune})


def test_prune_without_branches_is_refused():
    space = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    space |= {"methods": ["scalarization"], "prune": {}}
    with pytest.raises(UserError, match="prune: expected a space with branches"):
        from_dict(SpaceConfig, space)


def test_refinement_fills_the_largest_gap_of_the_front():
    a, b = Point(100, 0.2, 1.0, 4.0), Point(100, 0.5, 2.0, 2.0)
    c, dominated = Point(100, 0.8, 5.0, 1.5), Point(100, 0.6, 5.0, 5.0)
    pts = [a, b, c, dominated]
    # gaps: a-b 1 x 2 = 2, b-c 3 x 0.5 = 1.5: halfway between a's and b's w first
    assert propose(pts, [100], set()) == (100, 0.35)
    assert propose(pts, [100], {(100, "0.35")}) == (100, 0.65)
    assert propose(pts, [100], {(100, "0.35"), (100, "0.65")}) is None
    assert propose(pts, [], set()) is None  # no fork checkpoint left to branch from
    far = Point(200, 0.5, 2.0, 2.0)  # neighbours from two forks: the fork nearest halfway
    assert propose([a, far], [100, 200], set()) == (100, 0.35)
    assert propose([a, far], [100, 150, 200], set()) == (150, 0.35)
    # between: a new L halfway, where a kept fork lies before it to continue the trunk from
    assert propose([a, far], [100, 200], set(), between=True) == (150, 0.35)
    assert propose([a, far], [200], set(), between=True) == (200, 0.35)


def refined_tree(budget: int, between: bool = False) -> Tree:
    space = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    space |= {"methods": ["two_phase"], "refine": {"budget_steps": budget}}
    space = from_dict(SpaceConfig, space)
    refine = {"budget": budget, "methods": ["two_phase"], "high": ["eng-fra"], "low": ["eng-ron"]}
    return Tree(plan(space).segments, slots=2, refine=refine | {"between": between})


def test_refinement_branches_from_existing_forks_within_its_budget():
    tree = refined_tree(budget=250)  # two new branches of F = 100 fit, not three
    assert tree.segments["tp-L100-w0.3-s0"].rungs == [200]  # it tells its result at its end
    for step in (100, 200):
        tree.on_result({"segment": "pt-s0", "step": step, "checkpoint_path": f"/ck/{step}"})
    tree.deleted.append("pt-s0@200")  # gone: no branch may start from it
    assert not tree.judge("tp-L100-w0.3-s0", 200, {"eng-fra": 2.0, "eng-ron": 4.0})
    assert tree.refined == []  # its fork's other branch has not ended
    tree.judge("tp-L100-w0.5-s0", 200, {"eng-fra": 3.0, "eng-ron": 2.0})
    assert tree.refined == ["tp-L100-w0.4-s0"] and "tp-L100-w0.4-s0" in tree.ready
    new = tree.segments["tp-L100-w0.4-s0"]
    assert (new.parent, new.start_step, new.steps, new.rungs) == ("pt-s0", 100, 100, [200])
    assert new.phases[0].mixture.rates == pytest.approx({"eng-fra": 0.6, "eng-ron": 0.4})
    assert tree.init_from(new.id) == "/ck/100"
    tree.judge(new.id, 200, {"eng-fra": 2.4, "eng-ron": 2.9})
    assert tree.refined == ["tp-L100-w0.4-s0", "tp-L100-w0.45-s0"]  # gap 0.6 x 0.9 > 0.4 x 1.1
    tree.judge("tp-L100-w0.45-s0", 200, {"eng-fra": 2.2, "eng-ron": 3.4})
    assert len(tree.refined) == 2  # the budget holds no third
    again = Tree.from_json(tree.to_json())
    assert again.refined == tree.refined and set(again.segments) == set(tree.segments)
    # plan.json takes it up, with its trial (what the dispatcher writes, and a resume reads).
    grown = Plan.from_dict(json.loads(json.dumps(before := plan_dict())))
    grown.add_branches([new], ["eng-ron"])
    doc = grown.to_dict()
    assert doc["tree_steps"] == before["tree_steps"] + 100
    assert Plan.from_dict(doc).to_dict() == doc
    trial = doc["trials"][-1]
    assert (trial["id"], trial["method"], trial["L"], trial["F"], trial["w"]) == (
        "tp-L100-w0.4-s0",
        "two_phase",
        100,
        100,
        0.4,
    )


def test_refinement_tries_a_new_L_from_a_continuation_of_the_trunk():
    def ended(budget: int) -> Tree:
        tree = refined_tree(budget, between=True)
        for step in (100, 200):
            tree.on_result({"segment": "pt-s0", "step": step, "checkpoint_path": f"/ck/{step}"})
        tree.judge("tp-L100-w0.3-s0", 200, {"eng-fra": 2.0, "eng-ron": 4.0})
        tree.judge("tp-L200-w0.3-s0", 300, {"eng-fra": 1.0, "eng-ron": 5.0})
        tree.judge("tp-L200-w0.5-s0", 300, {"eng-fra": 2.5, "eng-ron": 3.0})
        return tree

    # The largest gap lies between L 200, w 0.3 and L 100, w 0.3: L 150, which no fork has.
    tree = ended(budget=150)
    assert tree.refined == ["pt-s0-to150", "tp-L150-w0.3-s0"]
    way, new = tree.segments["pt-s0-to150"], tree.segments["tp-L150-w0.3-s0"]
    trunk = tree.segments["pt-s0"]
    assert (way.parent, way.start_step, way.end_step, way.fork_steps) == ("pt-s0", 100, 150, [150])
    assert [(p.reset, p.mixture) for p in way.phases] == [(False, trunk.phases[0].mixture)]
    assert tree.init_from(way.id) == "/ck/100"
    assert (new.parent, new.start_step, new.steps) == ("pt-s0-to150", 150, 100)
    assert "pt-s0-to150" in tree.ready and new.id not in tree.ready  # not before its fork
    assert tree._refined_steps() == 150  # the continuation's 50 steps count
    tree.on_result({"segment": way.id, "step": 150, "checkpoint_path": "/ck/to150"})
    assert new.id in tree.ready and tree.init_from(new.id) == "/ck/to150"
    grown = Plan.from_dict(plan_dict())
    grown.add_branches([tree.segments[i] for i in tree.refined], ["eng-ron"])
    lineage = [(p.segment, p.from_step, p.to_step) for p in grown.trials[-1].lineage]
    assert lineage == [("pt-s0", 0, 100), ("pt-s0-to150", 100, 150), (new.id, 150, 250)]
    assert grown.tree_steps == Plan.from_dict(plan_dict()).tree_steps + 150
    # No room for the continuation's steps: a kept fork, as without new L.
    assert ended(budget=120).refined == ["tp-L100-w0.4-s0"]


def plan_dict() -> dict:
    space = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    return plan(from_dict(SpaceConfig, space | {"methods": ["two_phase"]})).to_dict()


@pytest.mark.parametrize(
    "refine, methods, message",
    [
        ({"budget_steps": 99}, None, "refine.budget_steps: expected at least one fine-tuning"),
        ({"budget_steps": 200, "methods": ["temperature"]}, None, r"refine\.methods\[0\]"),
        ({"budget_steps": 200, "methods": ["restart"]}, None, r"refine\.methods\[0\]"),
        ({"budget_steps": 200}, ["scalarization"], r"refine\.methods\[0\]: expected a method of"),
    ],
)
def test_bad_refine_settings_name_the_field(refine, methods, message):
    space = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    space |= {"refine": refine} | ({"methods": methods} if methods else {})
    with pytest.raises(UserError, match=message):
        from_dict(SpaceConfig, space)
