"""The checkpoint tree against the naive grid: optimizer steps, wall time, where trial time goes.

    .venv/bin/python -m bench.tree_vs_naive            # ~28 min on 2 cores; writes the JSON below
    .venv/bin/python -m bench.tree_vs_naive --pretrain-steps 100 200 300 400 --finetune-steps 100

Runs one grid twice on the same local Ray: as the segment tree (``run_sweep(space)``) and as a
naive Tune grid where every trial trains from scratch (``run_sweep(space, no_sharing=True)``).
Reports steps and wall time of both and their ratios, where the Tune trials' time goes, whether
both frontiers hold the same trials with the same values, and the wall time the simulator
(``ray_mtl.simulate``: the real ``Tree``, the costs measured here) predicts for the tree.
The default grid is a sweep over L (eight values, F apart, two w, two methods): the naive grid
trains every (L, w) from scratch, so its cost grows with the square of the number of L values and
the tree's linearly; on four L values the steps ratio is 2.55, which bounds the wall ratio below
the 3x goal (``bench/results`` history, commit 34ca7d6).
Goals: >= 2x fewer steps, >= 3x less wall time, overhead (trial time not in optimizer steps)
<= 5%, the prediction within 15%. Output: bench/results/tree_vs_naive.json.

Where a trial's time goes, from Tune's result.json (``time_this_iter_s``: the wall time between
two reports) and the loop's timings: optimizer steps (each report's tokens / ``tokens_per_s``,
which times the steps alone), ``setup_s`` (each segment's data, model, optimizer, sampler, fork
checkpoint), ``eval_s`` (each evaluation), the Train run's start as its first report gives it
(``train_start_s``: from the Tune trial's function to the rank's loop: Ray Train's controller,
workers and process group), the rest of the first report's time (``start_s``: Tune's start of
the trial, and the loop's before its first segment) and the rest (checkpoints written and
reported, the wait for a segment to be handed out).
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

from bench.record import write_result
from ray_mtl import frontier, results
from ray_mtl.config import SpaceConfig, load
from ray_mtl.plan import naive, plan
from ray_mtl.scheduler import Tree
from ray_mtl.simulate import Costs, simulate
from ray_mtl.tune import max_concurrent, run_sweep

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
GOALS = {"steps_ratio": 2.0, "wall_ratio": 3.0, "overhead_share": 0.05, "prediction_error": 0.15}


def reports(metrics: pd.DataFrame, plan_) -> pd.DataFrame:
    """Per report (segment, step): seconds of optimizer steps since the previous one, set-up
    and evaluation (see the module docstring)."""
    run = metrics[metrics.task == "*"].pivot_table("value", ["segment", "step"], "metric")
    tokens = (
        metrics[(metrics.split == "train") & (metrics.metric == "tokens") & (metrics.task != "*")]
        .groupby(["segment", "step"])["value"]
        .sum()
    )
    rows = []
    for seg in plan_.segments.values():
        before = 0.0 if seg.parent is None else tokens[(seg.parent, seg.start_step)]
        for step, cum in tokens[seg.id].sort_index().items():
            r = run.loc[(seg.id, step)]
            steps_s = (cum - before) / r["tokens_per_s"]
            before = cum
            setup, started = (r.get(k, 0.0) for k in ("setup_s", "train_start_s"))
            rows.append(
                (seg.id, step, steps_s, np.nan_to_num(setup), r["eval_s"], np.nan_to_num(started))
            )
    columns = ["segment", "step", "steps_s", "setup_s", "eval_s", "train_start_s"]
    return pd.DataFrame(rows, columns=columns)


def trials(sweep: Path, per_report: pd.DataFrame) -> list[dict]:
    """Per Tune trial (each a Ray Train run): its segments and where its time went."""
    issued = json.loads((sweep / "tree_state.json").read_text())["issued"]
    timed = per_report.set_index(["segment", "step"])
    out = []
    for d in sorted((sweep / "tune").iterdir()):
        if not (d / "result.json").is_file():
            continue
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
        first, last = rows[0], rows[-1]
        segments = issued[last["trial_id"]]
        mine = per_report[per_report.segment.isin(segments)]
        at_first = timed.loc[(first["segment"], first["step"])]
        timed_parts = ["steps_s", "setup_s", "eval_s", "train_start_s"]
        start = first["time_this_iter_s"] - at_first[timed_parts].sum()
        parts = {
            "trial_s": last["time_total_s"],
            "steps_s": mine.steps_s.sum(),
            "setup_s": mine.setup_s.sum(),
            "eval_s": mine.eval_s.sum(),
            "train_start_s": mine.train_start_s.sum(),
            "start_s": start,
        }
        parts["rest_s"] = parts["trial_s"] - sum(v for k, v in parts.items() if k != "trial_s")
        checkpointed = {(r["segment"], r["step"]) for r in rows if r.get("checkpoint_path")}
        rest = [
            (
                r["time_this_iter_s"] - timed.loc[(r["segment"], r["step"])].sum(),
                (r["segment"], r["step"]) in checkpointed,
            )
            for r in rows[1:]
        ]
        out.append(
            {
                "name": d.name,
                "segments": segments,
                "began": last["timestamp"] - last["time_total_s"],
                "ended": last["timestamp"],
                "rest_per_report": rest,
                **{k: float(v) for k, v in parts.items()},
            }
        )
    return out


def costs_measured(per_report: pd.DataFrame, runs: list[dict], plan_) -> Costs:
    """The simulator's costs as this run measured them (fork latency, Train end: defaults)."""
    rest = [x for r in runs for x in r["rest_per_report"]]
    with_ckpt = [s for s, ckpt in rest if ckpt] or [0.0]
    without = [s for s, ckpt in rest if not ckpt] or [0.0]
    firsts = per_report.groupby("segment").head(1)
    return Costs(
        step_s=per_report.steps_s.sum() / plan_.tree_steps,
        eval_s=float(per_report.eval_s.mean() + np.mean(without)),
        checkpoint_s=max(0.0, float(np.mean(with_ckpt) - np.mean(without))),
        segment_s=float(firsts.setup_s.mean()),
        train_start_s=float(np.mean([r["start_s"] + r["train_start_s"] for r in runs])),
    )


def measure(space: SpaceConfig, no_sharing: bool) -> dict:
    plan_ = naive(space) if no_sharing else plan(space)
    t0 = time.time()
    sweep = Path(run_sweep(space, no_sharing=no_sharing, overwrite=True))
    wall = time.time() - t0
    res = results.load_results(sweep)
    results.write_frontier(res, sweep)
    assert res.finished == len(plan_.trials), f"{sweep}: unfinished trials"
    per_report = reports(res.metrics, plan_)
    runs = trials(sweep, per_report)
    total = {k: sum(r[k] for r in runs) for k in ("trial_s", "steps_s", "setup_s", "eval_s")}
    total |= {k: sum(r[k] for r in runs) for k in ("train_start_s", "start_s", "rest_s")}
    makespan = max(r["ended"] for r in runs) - min(r["began"] for r in runs)
    slots = max_concurrent(space)
    costs = costs_measured(per_report, runs, plan_)
    sim = simulate(space, Tree(plan_.segments, slots), slots, costs)
    predicted = sim.makespan_s + (wall - makespan)  # the sweep's own start and end as measured
    return {
        "sweep": str(sweep),
        "segments": len(plan_.segments),
        "trials": len(plan_.trials),
        "train_runs": len(runs),
        "slots": slots,
        "optimizer_steps": plan_.tree_steps,
        "wall_s": wall,
        "tune_makespan_s": makespan,
        "time": total,
        # the share of the trials' time that is not optimizer steps, and where it goes
        "overhead_share": 1 - total["steps_s"] / total["trial_s"],
        "overhead_shares": {
            k: total[k] / total["trial_s"]
            for k in ("train_start_s", "start_s", "setup_s", "eval_s", "rest_s")
        },
        "overhead_s_per_run": (total["trial_s"] - total["steps_s"]) / len(runs),
        "simulated": {
            "costs": dataclasses.asdict(costs),
            "makespan_s": sim.makespan_s,
            "wall_s": predicted,
            "error": abs(predicted - wall) / wall,
            "lower_bound_s": sim.lower_bound_s,
            "train_runs": sim.train_runs,
        },
        "per_trial": [{k: v for k, v in r.items() if k != "rest_per_report"} for r in runs],
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
    p.add_argument("--pretrain-steps", type=int, nargs="+", default=[250 * i for i in range(1, 9)])
    p.add_argument("--finetune-steps", type=int, default=250)
    p.add_argument("--rtol", type=float, default=1e-3)
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
    load_before = os.getloadavg()
    tree = measure(spaces["tree"], no_sharing=False)
    flat = measure(spaces["naive"], no_sharing=True)
    report = {
        "grid": dataclasses.asdict(grid),
        "methods": list(base.methods),
        "resources": dataclasses.asdict(base.resources),
        "load_average_at_start": list(load_before),
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
        "prediction_error": bool(tree["simulated"]["error"] <= GOALS["prediction_error"]),
    }
    path = write_result("tree_vs_naive", report)
    shares = ", ".join(f"{k[:-2]} {v:.1%}" for k, v in tree["overhead_shares"].items())
    print(
        f"steps: tree {tree['optimizer_steps']:,} vs naive {flat['optimizer_steps']:,} "
        f"({report['steps_ratio']:.2f}x fewer)\n"
        f"wall: tree {tree['wall_s']:.0f} s vs naive {flat['wall_s']:.0f} s "
        f"({report['wall_ratio']:.2f}x less); simulated tree {tree['simulated']['wall_s']:.0f} s "
        f"({tree['simulated']['error']:.0%} off)\n"
        f"overhead (not optimizer steps): tree {tree['overhead_share']:.1%} of trial time "
        f"({shares}; {tree['train_runs']} Train runs for {tree['segments']} segments, "
        f"{tree['overhead_s_per_run']:.1f} s/run), naive {flat['overhead_share']:.1%} "
        f"({flat['train_runs']} runs for {flat['segments']})\n"
        f"fronts agree: {report['fronts']['agree']} "
        f"(max rel diff {report['fronts']['max_rel_diff']:.1e})\n"
        f"goals met: {report['goals_met']}\n{path}"
    )


if __name__ == "__main__":
    main()
