"""The checkpoint tree against the naive grid: optimizer steps, wall time, Ray overhead, fronts.

    .venv/bin/python -m bench.tree_vs_naive            # ~12 min on 2 cores; writes the JSON below
    .venv/bin/python -m bench.tree_vs_naive --pretrain-steps 100 200 300 400 --finetune-steps 100

Runs one grid twice on the same local Ray: as the segment tree (``run_sweep(space)``) and as a
naive Tune grid where every trial trains from scratch (``run_sweep(space, no_sharing=True)``).
Reports steps and wall time of both and their ratios, the share of the Tune trials' time not
spent in optimizer steps (Ray trial and worker-group start, data loading, evaluation,
checkpoints; a trial trains segments one after another), and whether both frontiers hold the
same trials with the same values. Goals: >= 2x fewer steps, >= 2x less wall time, overhead
<= 10%. Output: bench/out/tree_vs_naive.json.

How training time is measured: each eval report carries ``tokens_per_s`` (tokens over the time
of the steps since the previous report, eval excluded) and the sampler's cumulative tokens per
task; an interval's step time is its tokens / tokens_per_s. Trial wall time is Tune's
``time_total_s`` of the trial's last result (Tune's own result.json, enabled here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ray_mtl import frontier, results
from ray_mtl.config import SpaceConfig, load
from ray_mtl.plan import naive, plan
from ray_mtl.tune import run_sweep

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
GOALS = {"steps_ratio": 2.0, "wall_ratio": 2.0, "overhead_share": 0.10}


def step_seconds(metrics: pd.DataFrame, plan_) -> dict[str, float]:
    """Per segment: seconds its workers spent in optimizer steps (see the module docstring)."""
    tokens = (
        metrics[(metrics.split == "train") & (metrics.metric == "tokens") & (metrics.task != "*")]
        .groupby(["segment", "step"])["value"]
        .sum()
    )
    speed = metrics[metrics.metric == "tokens_per_s"].set_index(["segment", "step"])["value"]
    out = {}
    for seg in plan_.segments.values():
        before = 0.0 if seg.parent is None else tokens[(seg.parent, seg.start_step)]
        total = 0.0
        for step, cum in tokens[seg.id].sort_index().items():
            total += (cum - before) / speed[(seg.id, step)]
            before = cum
        out[seg.id] = float(total)
    return out


def trial_seconds(sweep: Path) -> dict[str, tuple[float, list[str]]]:
    """Per Tune trial: its wall time up to its last result, and the segments it trained (the
    sweep's tree state says which it was handed)."""
    issued = json.loads((sweep / "tree_state.json").read_text())["issued"]
    out = {}
    for d in sorted((sweep / "tune").iterdir()):
        if (d / "result.json").is_file():
            last = json.loads((d / "result.json").read_text().strip().splitlines()[-1])
            out[d.name] = (last["time_total_s"], issued[last["trial_id"]])
    return out


def measure(space: SpaceConfig, no_sharing: bool) -> dict:
    plan_ = naive(space) if no_sharing else plan(space)
    t0 = time.perf_counter()
    sweep = Path(run_sweep(space, no_sharing=no_sharing, overwrite=True))
    wall = time.perf_counter() - t0
    res = results.load_results(sweep)
    results.write_frontier(res, sweep)
    assert res.finished == len(plan_.trials), f"{sweep}: unfinished trials"
    steps = step_seconds(res.metrics, plan_)
    trials = trial_seconds(sweep)
    per_trial = {
        name: {
            "segments": segs,
            "steps": sum(plan_.segments[s].steps for s in segs),
            "trial_s": t,
            "step_s": sum(steps[s] for s in segs),
        }
        for name, (t, segs) in trials.items()
    }
    step_s = sum(steps.values())
    trial_s = sum(t for t, _ in trials.values())
    # Trials run side by side, so wall time minus step time undercounts the fixed cost: it is
    # measured per trial, as the part of each Tune trial that is not optimizer steps.
    fixed, goal = (trial_s - step_s) / len(trials), GOALS["overhead_share"]
    return {
        "sweep": str(sweep),
        "segments": len(plan_.segments),
        "trials": len(plan_.trials),
        "train_runs": len(trials),
        "optimizer_steps": plan_.tree_steps,
        "wall_s": wall,
        "step_s": step_s,
        "trial_s": trial_s,
        # the share of the trials' time that is not optimizer steps (start-up, eval, ckpts)
        "overhead_share": 1 - step_s / trial_s,
        "overhead_s_per_run": fixed,
        "overhead_s_per_segment": (trial_s - step_s) / len(plan_.segments),
        # optimizer-step seconds a Train run needs for its fixed cost to be within the goal
        "step_s_per_run_for_goal": fixed * (1 - goal) / goal,
        "per_trial": per_trial,
    }


def compare_fronts(tree_dir: str, naive_dir: str, rtol: float) -> dict:
    """Same trials on both sides, final dev values within ``rtol``, same front members."""
    a = json.loads(Path(tree_dir, "frontier.json").read_text())["final"]
    b = json.loads(Path(naive_dir, "frontier.json").read_text())["final"]
    pts = {
        name: frontier.trial_points(results.load_results(d), at="final").set_index("trial")
        for name, d in (("tree", tree_dir), ("naive", naive_dir))
    }
    axes = a["axes"]
    same_trials = sorted(pts["tree"].index) == sorted(pts["naive"].index)
    t, n = pts["tree"][axes], pts["naive"].loc[pts["tree"].index, axes]
    rel = float(np.max(np.abs(t.to_numpy() - n.to_numpy()) / np.abs(n.to_numpy())))
    fronts = {
        m: (
            sorted(x["trial"] for x in a["methods"][m]["front"]),
            sorted(x["trial"] for x in b["methods"].get(m, {}).get("front", [])),
        )
        for m in a["methods"]
    }
    hv = {m: (a["methods"][m]["hypervolume"], b["methods"][m]["hypervolume"]) for m in a["methods"]}
    return {
        "axes": axes,
        "same_trials": same_trials,
        "max_rel_diff": rel,
        "rtol": rtol,
        "same_front_members": all(x == y for x, y in fronts.values()),
        "fronts": fronts,
        "hypervolume_tree_naive": hv,
        "agree": same_trials and rel <= rtol and all(x == y for x, y in fronts.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default=str(ROOT / "tune_spaces" / "smoke.yaml"))
    p.add_argument("--pretrain-steps", type=int, nargs="+", default=[400, 800, 1200, 1600])
    p.add_argument("--finetune-steps", type=int, default=400)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--out", default=str(OUT / "tree_vs_naive.json"))
    args = p.parse_args()
    # Tune's own result.json per trial holds the trial wall time we measure.
    os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    base = load(SpaceConfig, args.space)
    grid = dataclasses.replace(
        base.grid, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps
    )
    # Evaluate only where a trial or fork needs it: the bench measures training, not eval.
    evaluation = dataclasses.replace(base.eval, every=10**9, bleu_pairs=0, test_at_end=False)
    store = OUT / "tree_vs_naive"
    spaces = {
        kind: dataclasses.replace(
            base, name=f"bench-{kind}", grid=grid, eval=evaluation, storage=str(store)
        )
        for kind in ("tree", "naive")
    }
    tree = measure(spaces["tree"], no_sharing=False)
    flat = measure(spaces["naive"], no_sharing=True)
    report = {
        "grid": dataclasses.asdict(grid),
        "methods": list(base.methods),
        "resources": dataclasses.asdict(base.resources),
        "tree": tree,
        "naive": flat,
        "steps_ratio": flat["optimizer_steps"] / tree["optimizer_steps"],
        "wall_ratio": flat["wall_s"] / tree["wall_s"],
        "fronts": compare_fronts(tree["sweep"], flat["sweep"], args.rtol),
        "goals": GOALS,
    }
    report["goals_met"] = {
        "steps_ratio": report["steps_ratio"] >= GOALS["steps_ratio"],
        "wall_ratio": report["wall_ratio"] >= GOALS["wall_ratio"],
        "overhead_share": tree["overhead_share"] <= GOALS["overhead_share"],
        "fronts_agree": report["fronts"]["agree"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(
        f"steps: tree {tree['optimizer_steps']:,} vs naive {flat['optimizer_steps']:,} "
        f"({report['steps_ratio']:.2f}x fewer)\n"
        f"wall: tree {tree['wall_s']:.0f} s vs naive {flat['wall_s']:.0f} s "
        f"({report['wall_ratio']:.2f}x less)\n"
        f"overhead (not optimizer steps): tree {tree['overhead_share']:.0%} of trial time "
        f"({tree['train_runs']} Train runs for {tree['segments']} segments, "
        f"{tree['overhead_s_per_run']:.1f} s/run), naive {flat['overhead_share']:.0%} "
        f"({flat['train_runs']} runs for {flat['segments']})\n"
        f"fronts agree: {report['fronts']['agree']} "
        f"(max rel diff {report['fronts']['max_rel_diff']:.1e})\n"
        f"goals met: {report['goals_met']}\n{args.out}"
    )


if __name__ == "__main__":
    main()
