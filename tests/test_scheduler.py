"""The Tree's hand-out on its own: critical path first, forks, trials ahead of forks, resume,
checkpoints to delete (plain data: no Ray, no torch).

    .venv/bin/python -m pytest -q tests/test_scheduler.py      # a second

``tests/test_simulate.py`` runs the same Tree under simulated trials and times.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ray_mtl.config import PhaseConfig, SpaceConfig, from_dict, load
from ray_mtl.plan import Segment, plan
from ray_mtl.scheduler import Tree, priorities

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_spaces" / "smoke.yaml"


def smoke_dict() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def tree_for(space: SpaceConfig, slots: int | None = None) -> Tree:
    return Tree(plan(space).segments, slots=slots)


def test_tree_releases_a_branch_at_its_fork_while_the_trunk_runs():
    tree = tree_for(load(SpaceConfig, SMOKE))
    issued = [list(tree.suggest(f"t{i}")) for i in range(3)]
    assert issued == [["pt-s0"], ["st-w0.3-s0"], ["st-w0.5-s0"]]
    assert tree.suggest("t3") is None and not tree.finished()  # branches wait for their fork
    assert not tree.on_result({"segment": "pt-s0", "step": 50})
    assert tree.suggest("t3") is None
    assert tree.on_result({"segment": "pt-s0", "step": 100, "checkpoint_path": "/ck/100"})
    branches = [tree.suggest(f"t{i}") for i in (3, 4)]
    assert [list(b) for b in branches] == [["tp-L100-w0.3-s0"], ["tp-L100-w0.5-s0"]]
    assert all(tree.init_from(s) == "/ck/100" for b in branches for s in b)
    assert tree.suggest("t5") is None


def test_tree_hands_out_one_segment_at_a_time_the_critical_path_first():
    """Smoke plan: trunk 200 steps (forks at 100, 200), static trunks 300 each, branches 100."""
    tree = tree_for(load(SpaceConfig, SMOKE), slots=2)
    # pt-s0 and the static trunks all end 300 steps on; ties go to the biggest subtree.
    assert tree.suggest("a") == ["pt-s0"]
    assert tree.suggest("b") == ["st-w0.3-s0"]
    tree.on_result({"segment": "pt-s0", "step": 100, "checkpoint_path": "/ck/1"})
    # "a" trained pt-s0 (its last fork is on its way): the static trunk's 300 steps outrank
    # the branches' 100, its own to come as well as the two that are ready.
    assert tree.more("a") == ["st-w0.5-s0"]
    tree.on_result({"segment": "pt-s0", "step": 200, "checkpoint_path": "/ck/2"})
    tree.on_result({"segment": "st-w0.3-s0", "step": 300})
    # Equal branches: the latest fork first (with pruning, the early forks' branches then meet
    # the best pre-trained rivals at their rungs).
    assert tree.more("b") == ["tp-L200-w0.3-s0"]
    assert tree.more("b") == ["tp-L200-w0.5-s0"]
    tree.on_result({"segment": "st-w0.5-s0", "step": 300})
    assert tree.more("a") == ["tp-L100-w0.3-s0"]
    assert tree.more("b") == ["tp-L100-w0.5-s0"]
    assert tree.finished() and tree.chain("a") == ["pt-s0", "st-w0.5-s0", "tp-L100-w0.3-s0"]
    assert tree.more("a") == []  # nothing left nor to come: "a" ends
    # A failed trial: its unfinished segments fail (their branches would never be issued).
    tree.on_complete("b", error=True)
    assert tree.failed == ["tp-L100-w0.5-s0"] and "b" not in tree.running
    # Without slots (a GPU cluster that scales up), one segment at a time.
    alone = tree_for(load(SpaceConfig, SMOKE))
    assert [len(alone.suggest(t)) for t in "abc"] == [1, 1, 1]
    # The state is plain JSON, read back whole.
    assert Tree.from_json(tree.to_json()).__dict__ == tree.__dict__


def test_tree_starts_both_trunks_of_an_unbalanced_space_at_once():
    """Issue 20: a 1,000-step trunk with one 1,000-step branch and a 2,000-step static trunk on
    two slots. The share rule handed both trunks to the first trial (critical path 3,000)."""
    d = smoke_dict()
    d.update(methods=["two_phase", "scalarization"])
    d["grid"].update(pretrain_steps=[1000], finetune_steps=1000, low_rates=[0.7])
    tree = tree_for(from_dict(SpaceConfig, d), slots=2)
    assert tree.suggest("a") == ["pt-s0"] and tree.suggest("b") == ["st-w0.7-s0"]
    assert tree.on_result({"segment": "pt-s0", "step": 1000, "checkpoint_path": "/ck/1000"})
    assert tree.more("a") == ["tp-L1000-w0.7-s0"]


def seg(i: str, steps: int, parent: str | None = None, at: int = 0) -> Segment:
    return Segment(i, [PhaseConfig(steps=steps)], seed=0, parent=parent, start_step=at)


def hand_made() -> dict[str, Segment]:
    """long 300 (no branch); late 100, forking at 100 a branch of 400 (critical path 500);
    early 200, forking at 50 a branch of 100 and that one at 150 a branch of 250 (400)."""
    segs = [
        seg("long", 300),
        seg("late", 100),
        seg("late-b", 400, "late", 100),
        seg("early", 200),
        seg("early-b", 100, "early", 50),
        seg("early-bb", 250, "early-b", 150),
    ]
    return {s.id: s for s in segs}


def test_tree_orders_ready_segments_by_their_critical_path():
    tree = Tree(hand_made(), slots=3)
    assert priorities(tree.segments)["early"] == (400, 550)
    assert [tree.suggest(t)[0] for t in "abc"] == ["late", "early", "long"]
    tree.on_result({"segment": "early", "step": 50, "checkpoint_path": "/e50"})
    tree.on_result({"segment": "long", "step": 300})
    # "c" is free: early-b (100 steps, 350 from its start to early-bb's end) is all there is.
    assert tree.more("c") == ["early-b"]
    # "a" trained late, whose fork at 100 (400 steps on) has not arrived: nothing ready
    # outranks it, so "a" waits for it rather than end.
    assert tree.more("a") is None
    tree.on_result({"segment": "late", "step": 100, "checkpoint_path": "/l100"})
    assert tree.more("a") == ["late-b"] and tree.init_from("late-b") == "/l100"


def test_tree_starts_trials_ahead_of_forks_to_come_and_only_as_many_as_they_need():
    """With slots known, a trial may start with no segment: its Ray Train start is paid while
    the trunk trains. Forks to come hold 3 segments (late-b, early-b, early-bb)."""
    tree = Tree(hand_made(), slots=8)
    assert [tree.suggest(t) for t in "abc"] == [["late"], ["early"], ["long"]]
    assert [tree.suggest(t) for t in "defg"] == [[], [], [], None]
    assert tree.running == list("abcdef")
    tree.on_result({"segment": "early", "step": 50, "checkpoint_path": "/e50"})
    assert tree.more("e") == ["early-b"]  # whichever waiting trial asks first
    # 2 to come (late-b, early-bb) for "d" and "f": both wait.
    assert tree.more("f") is None and tree.more("d") is None
    tree.on_result({"segment": "late", "step": 100, "checkpoint_path": "/l100"})
    assert tree.more("d") == ["late-b"]
    # 1 to come (early-bb) for "a" and "c", done with their trunks, and "f": the one that
    # started first waits, the others end (a later fork would get a new trial).
    tree.on_result({"segment": "long", "step": 300})
    assert tree.more("c") == [] and tree.more("f") == [] and tree.more("a") is None
    # Without slots, no trial starts before a segment is ready for it.
    uncapped = Tree(hand_made())
    assert [uncapped.suggest(t) for t in "wxyz"] == [["late"], ["early"], ["long"], None]


def test_resumed_tree_keeps_what_tunes_trials_were_handed_and_the_hand_out_rules():
    """After a driver crash: Tune saved trial "a" only; the live state had since given "a" more
    and started "b", which Tune never saved, so b's segment is ready again."""
    live = tree_for(load(SpaceConfig, SMOKE), slots=2)
    live.suggest("a")
    saved = Tree.from_json(live.to_json())
    live.on_result({"segment": "pt-s0", "step": 100, "checkpoint_path": "/ck/1"})
    live.suggest("b")
    live.on_result({"segment": "st-w0.3-s0", "step": 100})
    live.on_result({"segment": "pt-s0", "step": 200, "checkpoint_path": "/ck/2"})
    grown = live.more("a")
    assert grown == ["st-w0.3-s0"] or grown == ["st-w0.5-s0"]
    tree = saved.resumed(live)
    assert tree.issued == {"a": ["pt-s0", *grown]} and tree.slots == 2
    assert tree.running == ["a"] and tree.forks == live.forks
    assert "st-w0.3-s0" in tree.ready and "st-w0.3-s0" not in tree.progress
    assert sorted(tree.ready) == sorted(set(tree.segments) - set(tree.issued["a"]))
    # The hand-out goes on under the same rules: the lost static trunk (300 steps to its end)
    # before the branches (100), one segment to a trial.
    lost = next(i for i in tree.ready if i.startswith("st-"))
    assert tree.suggest("c") == [lost]
    assert tree.more("a") == ["tp-L200-w0.3-s0"]


def test_tree_deletes_a_fork_once_its_branches_have_their_own_checkpoints():
    """Kept: every segment's last checkpoint, each one's latest, and a fork until each branch
    from it has a checkpoint of its own (or diverged)."""
    tree = tree_for(load(SpaceConfig, SMOKE), slots=8)
    for t in "abc":
        tree.suggest(t)
    tree.on_result({"segment": "pt-s0", "step": 100, "checkpoint_path": "/ck/pt100"})
    assert tree.collectable() == []  # the trunk's latest, and its branches have none yet
    tree.on_result({"segment": "pt-s0", "step": 200, "checkpoint_path": "/ck/pt200"})
    assert tree.collectable() == []  # the step-100 branches still start from it
    tree.on_result({"segment": "tp-L100-w0.3-s0", "step": 200, "checkpoint_path": "/ck/b1"})
    assert tree.collectable() == []
    tree.on_result({"segment": "tp-L100-w0.5-s0", "step": 150, "diverged": 1})
    assert tree.collectable() == ["/ck/pt100"]  # the other branch diverged: never needs it
    assert tree.collectable() == []  # once
    for seg, step in [("tp-L200-w0.3-s0", 300), ("tp-L200-w0.5-s0", 300)]:
        tree.on_result({"segment": seg, "step": step, "checkpoint_path": f"/ck/{seg}"})
    assert tree.collectable() == []  # pt-s0@200 is the trunk's last: kept
    keep = tree_for(load(SpaceConfig, SMOKE), slots=8)
    keep.collect = False
    keep.suggest("a")
    for step in (100, 200):
        keep.on_result({"segment": "pt-s0", "step": step, "checkpoint_path": f"/ck/{step}"})
    assert keep.collectable() == []
