"""The planner: tree shape and step accounting, shipped spaces, bad spaces. Pure, no Ray."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ray_mtl.config import RunSettings, SpaceConfig, TrainConfig, from_dict, load
from ray_mtl.errors import UserError
from ray_mtl.plan import group_rates, plan, segment_config
from ray_mtl.tune import main as tune_main

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))


def test_paper_grid_tree_shape_and_steps():
    space = load(SpaceConfig, ROOT / "tune_spaces" / "paper_fr_ro.yaml")
    p = plan(space)
    Ls, F, ws = [2000, 4000, 6000, 8000], 2000, [0.1, 0.2, 0.3, 0.4, 0.5]
    Ts, Es, seeds = [1.0, 2.0, 5.0, 10.0], [1.0, 5.0, 10.0], [0, 1, 2]
    assert space.grid.pretrain_steps == Ls and space.grid.low_rates == ws

    trunks = [s for s in p.segments.values() if s.parent is None]
    branches = [s for s in p.segments.values() if s.parent is not None]
    # per seed: 1 pre-training trunk, 5 static trunks, 4 temperature and 3 UniMax trunks
    assert len(trunks) == len(seeds) * (1 + len(ws) + len(Ts) + len(Es))
    # per seed: a two-phase and a restart branch for every (L, w)
    assert len(branches) == len(seeds) * 2 * len(Ls) * len(ws)
    assert len(p.trials) == len(seeds) * len(Ls) * (3 * len(ws) + len(Ts) + len(Es))

    pt = p.segments["pt-s0"]
    assert pt.steps == 8000 and pt.fork_steps == Ls
    assert set(pt.phases[0].mixture.rates) == {"eng-fra"}
    tp = p.segments["tp-L4000-w0.3-s0"]
    assert (tp.parent, tp.start_step, tp.steps, tp.phases[0].reset) == ("pt-s0", 4000, F, True)
    assert tp.phases[0].mixture.rates == pytest.approx({"eng-fra": 0.7, "eng-ron": 0.3})
    st = p.segments["st-w0.3-s0"]
    assert st.steps == 8000 + F and st.eval_steps == [L + F for L in Ls]
    rs = p.segments["rs-L2000-w0.3-s0"]
    assert (rs.parent, rs.start_step, rs.phases[0].reset) == ("st-w0.3-s0", 2000, True)

    # step accounting: per seed 8000 + 20 * 2000 (two-phase) + 5 * 10000 (static)
    # + 20 * 2000 (restart) + 7 * 10000 (temperature, UniMax)
    per_seed = 8000 + 20 * F + 5 * 10000 + 20 * F + 7 * 10000
    assert p.tree_steps == 3 * per_seed
    assert p.naive_steps == sum(L + F for L in Ls) * (3 * len(ws) + len(Ts) + len(Es)) * 3
    assert p.naive_steps / p.tree_steps > 2.9


def test_trial_lineage_covers_its_steps():
    p = plan(load(SpaceConfig, ROOT / "tune_spaces" / "smoke.yaml"))
    for t in p.trials:
        assert t.lineage[0].from_step == 0 and t.final_step == t.L + t.F
        for a, b in zip(t.lineage, t.lineage[1:], strict=False):
            assert a.to_step == b.from_step
            assert p.segments[b.segment].parent == a.segment
        for piece in t.lineage:
            seg = p.segments[piece.segment]
            assert seg.start_step <= piece.from_step and piece.to_step <= seg.end_step


def test_group_rates_split_equally():
    r = group_rates(["eng-deu", "eng-fra", "eng-spa"], ["eng-ron", "eng-ind"], 0.4)
    assert r == pytest.approx(
        {"eng-deu": 0.2, "eng-fra": 0.2, "eng-spa": 0.2, "eng-ron": 0.2, "eng-ind": 0.2}
    )
    assert sum(r.values()) == pytest.approx(1)


@pytest.mark.parametrize("space", SPACES, ids=[s.stem for s in SPACES])
def test_every_shipped_space_dry_runs(space, capsys):
    assert tune_main(["--space", str(space), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "segments serve" in out and "fewer" in out


BASE = {
    "name": "t",
    "tasks": {"high": ["eng-fra"], "low": ["eng-ron"]},
    "grid": {"pretrain_steps": [10, 20], "finetune_steps": 5, "low_rates": [0.3]},
}


def _with(path: str, value):
    import copy

    d = copy.deepcopy(BASE)
    *head, last = path.split(".")
    node = d
    for k in head:
        node = node[k]
    node[last] = value
    return d


@pytest.mark.parametrize(
    "space, message",
    [
        (_with("methods", ["two_phase", "magic"]), "methods[1]: expected 'two_phase' or"),
        (_with("grid.pretrain_steps", [20, 10]), "grid.pretrain_steps: expected a sorted list"),
        (_with("grid.pretrain_steps", [10, 10]), "grid.pretrain_steps: expected a sorted list"),
        (_with("grid.low_rates", [0.3, 1.0]), "grid.low_rates[1]: expected a rate in (0, 1)"),
        (_with("grid.low_rates", [0.0]), "grid.low_rates[0]: expected a rate in (0, 1)"),
        (_with("grid.finetune_steps", 0), "grid.finetune_steps: expected a positive integer"),
        (_with("tasks.low", ["eng-fra"]), "tasks.low: expected tasks not also listed as high"),
        (_with("name", "../evil"), "name: expected a name of letters"),
        (_with("modle", {}), "modle: unknown field"),
        (_with("methods", ["temperature"]), "grid.temperatures: expected temperatures"),
    ],
)
def test_bad_spaces_are_refused(space, message):
    with pytest.raises(UserError) as e:
        from_dict(SpaceConfig, space, "space.yaml")
    assert str(e.value).startswith("space.yaml: ")
    assert message in str(e.value)


def test_bad_space_files_exit_nonzero(tmp_path):
    cases = {
        "invalid.yaml": "name: [unclosed\n",
        "hostile.yaml": "!!python/object/apply:os.system ['echo pwned']\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    for name in ("invalid.yaml", "hostile.yaml"):
        r = subprocess.run(
            [sys.executable, "-m", "ray_mtl.tune", "--space", str(tmp_path / name), "--dry-run"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: {tmp_path / name}") and "Traceback" not in r.stderr
        assert "pwned" not in r.stdout


def test_naive_grid_runs_every_trial_from_scratch():
    from ray_mtl.plan import naive

    space = load(SpaceConfig, ROOT / "tune_spaces" / "smoke.yaml")
    tree, flat = plan(space), naive(space)
    assert [t.id for t in flat.trials] == [t.id for t in tree.trials]
    assert flat.tree_steps == flat.naive_steps == tree.naive_steps
    assert all(s.parent is None for s in flat.segments.values())
    two = flat.segments["naive-tp-L100-w0.3-s0"]
    assert [(p.name, p.steps, p.reset) for p in two.phases] == [
        ("pretrain", 100, False),
        ("finetune", 100, True),
    ]
    sc = flat.segments["naive-sc-L200-w0.5-s0"]
    assert [(p.name, p.steps) for p in sc.phases] == [("static", 300)]


# What a space has that a training run does not: the grid and how the sweep runs.
SPACE_ONLY = {"name", "tasks", "grid", "methods", "tokens_per_example", "max_concurrent", "storage"}
SPACE_ONLY |= {"keep_checkpoints", "tracking", "prune", "refine"}
# What a segment has that the space does not: its place in the tree.
SEGMENT_ONLY = {"phases", "seed", "eval_steps", "fork_steps", "rungs", "init_from", "run_dir"}


def test_every_space_setting_reaches_each_segment():
    """A setting shared by a space and its segments is a field of RunSettings, so it cannot be
    forgotten in a hand-written copy: every one reaches every segment's TrainConfig."""
    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    shared = names(RunSettings)
    assert names(SpaceConfig) - shared == SPACE_ONLY, "a new space field: shared or space-only?"
    assert names(TrainConfig) - shared == SEGMENT_ONLY
    space = load(SpaceConfig, ROOT / "tune_spaces" / "paper_fr_ro.yaml")
    space.checkpoint_every, space.max_failures, space.pack_length = 7, 5, space.data.max_len
    for seg in plan(space).segments.values():
        cfg = segment_config(space, seg, "s3://bucket/sweep?endpoint_override=h:1", "/ck")
        for name in shared:
            assert getattr(cfg, name) == getattr(space, name), name
        assert (cfg.phases, cfg.seed, cfg.init_from) == (seg.phases, seg.seed, "/ck")
        assert cfg.run_dir == f"s3://bucket/sweep/segments/{seg.id}?endpoint_override=h:1"
