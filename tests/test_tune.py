"""The sweep service end to end: the smoke sweep on real Ray, forks, equivalence, bad input.

    .venv/bin/python -m pytest -q tests/test_tune.py       # a few minutes on 2 cores

The smoke sweep (the shipped space at test size: ``sized_space`` in conftest.py) runs once per
session (``smoke_sweep``) through
``ray_mtl.tune.main``; the report and notebook tests reuse it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ray_mtl import train
from ray_mtl.config import PhaseConfig, SpaceConfig, from_dict, load
from ray_mtl.plan import Segment, naive, plan, segment_config
from ray_mtl.report import FIGURES
from ray_mtl.scheduler import Tree, priorities
from ray_mtl.tune import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_spaces" / "smoke.yaml"


def smoke_dict() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def dev_ce(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[(metrics.split == "dev") & (metrics.metric == "ce")]


def test_smoke_results_are_complete_and_consistent(smoke_sweep):
    space = load(SpaceConfig, smoke_sweep / "space.yaml")
    p = plan(space)
    assert json.loads((smoke_sweep / "results.json").read_text())["schema"] == 1
    assert json.loads((smoke_sweep / "plan.json").read_text())["tree_steps"] == p.tree_steps

    trials = pd.read_parquet(smoke_sweep / "trials.parquet")
    assert sorted(trials.trial) == sorted(t.id for t in p.trials)
    assert (trials.status == "finished").all(), trials[["trial", "status"]]
    assert trials.manifest_hash.str.fullmatch(r"[0-9a-f]{16,}").all()
    assert (trials.code_version.str.len() > 0).all()

    metrics = pd.read_parquet(smoke_sweep / "metrics.parquet")
    key = ["segment", "step", "task", "split", "metric"]
    assert not metrics.duplicated(key).any(), metrics[metrics.duplicated(key, keep=False)]
    assert metrics.value.notna().all()

    # Every step a trial's curve needs (each eval step of each piece, its end included) has a dev
    # CE for every task, in the segment that ran it.
    ce = dev_ce(metrics)
    have = set(zip(ce.segment, ce.step, ce.task, strict=True))
    for t in p.trials:
        for piece in t.lineage:
            steps = {s for s in range(piece.from_step + 1, piece.to_step + 1)}
            steps = {s for s in steps if s % space.eval.every == 0} | {piece.to_step}
            for step in steps:
                for task in space.tasks.all:
                    assert (piece.segment, step, task) in have, (t.id, piece, step, task)


def test_smoke_frontier_and_report(smoke_sweep):
    doc = json.loads((smoke_sweep / "frontier.json").read_text())
    for at in ("best", "final"):
        methods = doc[at]["methods"]
        assert set(methods) == {"two_phase", "scalarization"}
        for m in methods.values():
            assert m["hypervolume"] > 0 and m["front"]
        # sacrebleu's signature of the BLEU and chrF values, one each (one sacrebleu, one setting)
        sigs = doc[at]["signatures"]
        assert set(sigs) == {"bleu", "chrf"} and all(len(v) == 1 for v in sigs.values())
        assert "tok:13a" in sigs["bleu"][0] and sigs["chrf"][0].startswith("nrefs:1|")
    assert (smoke_sweep / "frontier.parquet").stat().st_size > 0
    page = (smoke_sweep / "report" / "index.html").read_text()
    assert f"bleu scored by sacrebleu, signature {sigs['bleu'][0]}" in html.unescape(page)
    for name in FIGURES:
        assert (smoke_sweep / "report" / f"{name}.png").stat().st_size > 10_000, name
        assert f"{name}.png" in page


def test_each_segment_trains_once_in_one_tune_trial(smoke_sweep):
    p = plan(load(SpaceConfig, smoke_sweep / "space.yaml"))
    trial_dirs = [d.name for d in (smoke_sweep / "tune").iterdir() if d.is_dir()]
    # Two slots share 7 segments: fewer Train runs than segments.
    assert len(trial_dirs) < len(p.segments), trial_dirs
    # Each segment trained its own steps once: a branch's rows start after its fork step.
    metrics = pd.read_parquet(smoke_sweep / "metrics.parquet")
    for seg in p.segments.values():
        steps = metrics[metrics.segment == seg.id].step
        assert steps.min() > seg.start_step and steps.max() == seg.end_step, seg.id


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
    assert tree.more("b") == ["tp-L100-w0.3-s0"]
    assert tree.more("b") == ["tp-L100-w0.5-s0"]
    tree.on_result({"segment": "st-w0.5-s0", "step": 300})
    assert tree.more("a") == ["tp-L200-w0.3-s0"]
    assert tree.more("b") == ["tp-L200-w0.5-s0"]
    assert tree.finished() and tree.chain("a") == ["pt-s0", "st-w0.5-s0", "tp-L200-w0.3-s0"]
    assert tree.more("a") == []  # nothing left nor to come: "a" ends
    # A failed trial: its unfinished segments fail (their branches would never be issued).
    tree.on_complete("b", error=True)
    assert tree.failed == ["tp-L200-w0.5-s0"] and "b" not in tree.running
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
    assert tree.more("a") == ["tp-L100-w0.3-s0"]


def test_tree_branch_equals_the_trial_run_from_scratch(smoke_sweep, tmp_path):
    """tp-L100-w0.3-s0 from the tree (a Ray Train worker, forked at 100) = the same trial alone
    (no Ray, 0..200): the fork restores the sampler, RNG and optimizer state exactly. (Two DDP
    workers against one: ``test_train``.)"""
    space = load(SpaceConfig, smoke_sweep / "space.yaml")
    seg = naive(space).segments["naive-tp-L100-w0.3-s0"]
    cfg = segment_config(space, seg, str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker (cpus_per_worker < 2)
    try:
        train.run(cfg)
    finally:
        torch.set_num_threads(threads)
    alone = dev_ce(pd.read_parquet(Path(cfg.run_dir) / "metrics.parquet"))
    alone = alone[alone.step == 200].set_index("task").value
    tree = dev_ce(pd.read_parquet(smoke_sweep / "metrics.parquet"))
    tree = tree[(tree.segment == "tp-L100-w0.3-s0") & (tree.step == 200)].set_index("task").value
    assert sorted(alone.index) == sorted(tree.index) == sorted(space.tasks.all)
    for task in space.tasks.all:
        assert alone[task] == pytest.approx(tree[task], rel=1e-3), task


def _space_with(**changes) -> dict:
    d = smoke_dict()
    for path, value in changes.items():
        *head, last = path.split("__")
        node = d
        for k in head:
            node = node[k]
        node[last] = value
    return d


BAD_SPACES = {
    "unknown_method": (_space_with(methods=["two_phase", "magic"]), "methods[1]"),
    "unknown_task": (_space_with(tasks__low=["eng-xxx"]), "tasks.low[0]: unknown task 'eng-xxx'"),
    "L_unsorted": (_space_with(grid__pretrain_steps=[200, 100]), "grid.pretrain_steps"),
    "L_duplicates": (_space_with(grid__pretrain_steps=[100, 100]), "grid.pretrain_steps"),
    "w_one": (_space_with(grid__low_rates=[0.3, 1.0]), "grid.low_rates[1]"),
    "w_zero": (_space_with(grid__low_rates=[0.0]), "grid.low_rates[0]"),
}


def _refused(args: list[str], capsys, store: Path, *expected: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    assert not (store / "smoke").exists()  # no sweep dir, no trials


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_is_refused_before_any_trial(case, ray_session, tmp_path, capsys):
    space, field = BAD_SPACES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(space))
    store = tmp_path / "store"
    _refused(["--space", str(path), "--storage", str(store)], capsys, store, str(path), field)


def test_invalid_yaml_and_unwritable_storage_are_refused(ray_session, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    store = tmp_path / "store"
    _refused(["--space", str(bad), "--storage", str(store)], capsys, store, str(bad))

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = blocker / "runs"
    args = ["--space", str(SMOKE), "--storage", str(store)]
    _refused(args, capsys, store, str(store), "not writable")


def test_smoke_space_parses_as_shipped():
    # The bad-space cases above are the shipped space with one field changed.
    assert from_dict(SpaceConfig, smoke_dict()).resources.num_workers == 2


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
