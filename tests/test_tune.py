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

from ray_mtl import checkpoint, train
from ray_mtl.config import SpaceConfig, from_dict, load
from ray_mtl.plan import naive, plan, segment_config
from ray_mtl.report import FIGURES
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
    # One TensorBoard run per trial of the tree (tracking.tensorboard is on by default).
    trials = set(pd.read_parquet(smoke_sweep / "trials.parquet")["trial"])
    assert {p.name for p in (smoke_sweep / "tensorboard").iterdir()} == trials
    from mlflow import MlflowClient  # and one MLflow run per trial (the fixture's tracking.mlflow)

    client = MlflowClient((smoke_sweep / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert {r.info.run_name for r in runs} == trials
    assert all(len(client.get_metric_history(r.info.run_id, "dev/eng-ron/ce")) > 1 for r in runs)
    page = (smoke_sweep / "report" / "index.html").read_text()
    assert f"bleu scored by sacrebleu, signature {sigs['bleu'][0]}" in html.unescape(page)
    assert "<td>None</td>" not in page  # one seed: no std, an empty cell
    for name in FIGURES:
        assert (smoke_sweep / "report" / f"{name}.png").stat().st_size > 10_000, name
        assert f"{name}.png" in page


def test_every_trial_end_scores_the_evaluation_set_and_keeps_its_weights(smoke_sweep):
    """The fixture's eng-ron evaluation set ``extra`` is scored at each trial's end from the
    best dev weights (its best step is test's), and those weights are kept for later scoring."""
    trials = pd.read_parquet(smoke_sweep / "trials.parquet")
    metrics = pd.read_parquet(smoke_sweep / "metrics.parquet")
    for t in trials.itertuples():
        seg = json.loads(t.lineage)[-1]["segment"]
        at_end = metrics[(metrics.segment == seg) & (metrics.step == t.final_step)]
        extra = at_end[at_end.split == "extra"]
        assert set(extra.metric) == {"ce", "bleu", "chrf"}, t.trial
        assert set(extra.task) == {"eng-ron"}, t.trial
        record, weights = checkpoint.load_weights(str(smoke_sweep / "segments" / seg), t.final_step)
        best = at_end[(at_end.split == "test") & (at_end.metric == "best_step")]
        assert record["best"]["eng-ron"]["step"] == best.set_index("task").value["eng-ron"]
        assert set(weights) == {"eng-fra", "eng-ron"}
    # Each best step's weights are stored once, however many trial ends share them.
    for d in (smoke_sweep / "segments").glob("*/weights"):
        records = [json.loads(f.read_text()) for f in d.glob("end_*.json")]
        named = {b["step"] for r in records for b in r["best"].values()}
        assert {f"best_{s:08d}.pt" for s in named} == {f.name for f in d.glob("best_*.pt")}, d


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


def test_a_pruned_and_refined_sweep(ray_session, shared_data, tmp_path):
    """Four branches from one fork under the rank rule: every branch reaches the first rung and
    is judged there through the dispatcher, each decision is the rule applied to the points in
    arrival order, and it is on storage. A pruned trial (which one, if any, depends on the
    values and their order: ``test_prune`` and ``test_report`` check the cases by hand) keeps
    its rows up to its rung, is never on a front, and shows as pruned in the trials table, the
    frontier and the report. Refinement then adds two branches from the fork checkpoint (its
    budget), each a trial of its own in plan.json, the trials table and the frontier."""
    import numpy as np
    from conftest import sized_space

    from ray_mtl.prune import should_stop

    grid = {"pretrain_steps": [40], "finetune_steps": 40, "low_rates": [0.2, 0.4, 0.6, 0.8]}
    prune = {"rule": "rank", "eta": 2, "first_rung": 10}  # rungs 10 and 20 steps past the fork
    space = sized_space(
        tmp_path,
        "pruned",
        methods=["two_phase"],
        grid=grid,
        prune=prune,
        refine={"budget_steps": 80},
        eval={"every": 1000},  # only where forks, rungs and ends need it: reports cost seconds
    )
    assert main(["--space", str(space), "--storage", str(tmp_path)]) == 0
    sweep = tmp_path / "pruned"

    tree = json.loads((sweep / "tree_state.json").read_text())
    assert len(tree["rung_points"]["two_phase@10"]) == 4 + len(tree["refined"])
    for rung, points in tree["rung_points"].items():
        step = 40 + int(rung.split("@")[1])
        for i, (seg, _) in enumerate(points):
            want = should_stop(np.array([p for _, p in points[: i + 1]]), "rank", eta=2)
            assert tree["decisions"][f"{seg}@{step}"] == want, (seg, step)
    trials = pd.read_parquet(sweep / "trials.parquet").set_index("trial")
    assert set(trials.status) <= {"finished", "pruned"}
    assert set(tree["pruned"]) == set(trials.index[trials.status == "pruned"])
    metrics = pd.read_parquet(sweep / "metrics.parquet")
    for seg, step in tree["pruned"].items():
        rows = metrics[metrics.segment == seg]
        assert step in (50, 60) and rows.step.max() == step, seg  # nothing past the rung
        assert set(rows[rows.metric == "pruned"].step) == {step}
    doc = json.loads((sweep / "frontier.json").read_text())
    assert doc["best"]["trials"]["pruned"] == len(tree["pruned"])
    on_front = {m["trial"] for v in doc["best"]["methods"].values() for m in v["front"]}
    assert on_front and not on_front & set(tree["pruned"])
    page = (sweep / "report" / "index.html").read_text()
    assert "PARTIAL REPORT" not in page
    assert ("Pruned trials" in page) == bool(tree["pruned"])

    # New branches within the budget's 80 steps, from the fork at 40, at rates between the
    # grid's (at least one once two grid branches finished: a front with a gap), each with the
    # rows of its F steps (or up to its rung) and a trial of its own.
    spent = sum(tree["pruned"].get(seg, 80) - 40 for seg in tree["refined"])
    finished = [s for s in tree["finals"] if s != "pt-s0" and s not in tree["refined"]]
    assert (len(tree["refined"]) >= 1) == (len(finished) >= 2) and spent <= 80
    doc = json.loads((sweep / "plan.json").read_text())
    planned = {t["id"]: t for t in doc["trials"]}
    for seg in tree["refined"]:
        t = planned[seg]
        assert (t["method"], t["L"], t["F"]) == ("two_phase", 40, 40) and 0.2 < t["w"] < 0.8
        assert trials.loc[seg, "status"] in ("finished", "pruned")
        steps = metrics[metrics.segment == seg].step
        assert steps.min() > 40 and steps.max() == tree["pruned"].get(seg, 80)
    n = 4 + len(tree["refined"])
    assert len(trials) == n and doc["tree_steps"] == 40 + n * 40
