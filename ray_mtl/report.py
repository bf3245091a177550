"""The frontier report of a sweep: PNG figures and one self-contained HTML page.

    python -m ray_mtl.report runs/smoke       # -> runs/smoke/report/index.html
    python -m ray_mtl.report DIR --out /tmp/r --at final --axes eng-fra/ce eng-ron/ce

Each ``plot_*`` function returns a matplotlib ``Figure`` (no pyplot, so no global state; the
notebook displays them inline). Fronts are drawn on (high-resource, low-resource) axes; with
several tasks per group, the axis is the group's mean (see ``ray_mtl.frontier``).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ray_mtl.config import RESERVED_SPLITS
from ray_mtl.errors import UserError, cli
from ray_mtl.frontier import (
    At,
    Axis,
    axis_name,
    frontier,
    pareto_mask,
    parse_axis,
    primary_metric,
    senses,
    trial_curves,
    trial_points,
)
from ray_mtl.results import GROUPS, Results, load_results
from ray_mtl.stats import A_BETTER, NOT_DISTINGUISHABLE, attainment_front
from ray_mtl.storage import ensure_writable_dir, join, list_dir, write_bytes, write_text

METRIC_LABELS = {
    "ce": "cross-entropy (nats, lower is better)",
    "bpb": "bits per byte (lower is better)",
    "ppl": "perplexity per token (lower is better)",
    "loss": "training loss (nats, lower is better)",
    "bleu": "BLEU (higher is better)",
    "chrf": "chrF (higher is better)",
}
METHOD_COLORS = {
    "two_phase": "tab:blue",
    "scalarization": "tab:orange",
    "restart": "tab:green",
    "temperature": "tab:red",
    "unimax": "tab:purple",
}
FIGURES = {
    "fronts": "Pareto fronts per method (high- vs low-resource)",
    "curves": "Learning curves of front members",
    "rates": "Sampling rates (realized vs target) and epochs per task",
    "length": "Effect of the pre-training length L on the low-resource task",
    "hypervolume": "Hypervolume per method, spread over seeds",
}


def method_color(method: str) -> str:
    others = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    return METHOD_COLORS.get(method, others[sum(map(ord, method)) % len(others)])


def title(results: Results) -> str:
    """Sweep name, tasks, and a 'partial' label while trials are unfinished."""
    t = results.tasks
    s = f"{results.name}: {', '.join(t['high'])} (high) + {', '.join(t['low'])} (low)"
    if results.partial:
        s += f" [partial: {results.finished} of {len(results.trials)} trials finished]"
    return s


def axis_label(results: Results, axis: Axis, split: str = "dev") -> str:
    task, metric = axis
    if task in GROUPS:
        tasks = results.tasks[task]
        who = f"{tasks[0]} ({task})" if len(tasks) == 1 else f"mean {task}-resource"
    else:
        who = task
    return f"{who} {split} {METRIC_LABELS[metric]}"


def front_metrics(results: Results) -> list[str]:
    """Dev metrics to draw fronts for: CE, then chrF and BLEU where recorded; for lm, bits per
    byte, then perplexity."""
    dev = set(results.metrics.loc[results.metrics["split"] == "dev", "metric"])
    order = ("bpb", "ppl") if results.kind == "lm" else ("ce", "chrf", "bleu")
    return [m for m in order if m in dev]


def _staircase(values: np.ndarray, sense: list[int]) -> np.ndarray:
    """Corners of the attainment boundary of a 2-D front, in the original units."""
    flip = -np.asarray(sense)
    q = values * flip
    q = q[np.lexsort((q[:, 1], q[:, 0]))]
    corners = [q[0]]
    for p in q[1:]:
        corners += [[p[0], corners[-1][1]], p]
    return np.asarray(corners) * flip


def _draw_front(
    ax, results: Results, pts: pd.DataFrame, axes: list[Axis], split: str = "dev"
) -> None:
    names, sense = [axis_name(a) for a in axes], senses(axes)
    pts = pts[pts[names].notna().all(axis=1)]
    for method, m in pts.groupby("method", sort=True):
        color, values = method_color(method), m[names].to_numpy()
        on = pareto_mask(values, sense)
        done = (m["status"] == "finished").to_numpy()
        for sel, alpha in ((~on, 0.25), (on, 1.0)):
            for fin, face in ((done, color), (~done, "none")):
                s = sel & fin
                ax.scatter(*values[s].T, s=36, facecolors=face, edgecolors=color, alpha=alpha)
        line = _staircase(values[on], sense)
        ax.plot(*line.T, color=color, label=f"{method} ({on.sum()} on front)")
        seeds = [s[names].to_numpy() for _, s in m.groupby("seed")]
        if len(seeds) > 1:  # with one seed the median front is the front itself
            median = _staircase(attainment_front(seeds, sense), sense)
            label = f"{method} median attainment ({len(seeds)} seeds)"
            ax.plot(*median.T, color=color, ls="--", lw=2.5, alpha=0.6, label=label)
    ax.set_xlabel(axis_label(results, axes[0], split))
    ax.set_ylabel(axis_label(results, axes[1], split))
    ax.grid(alpha=0.3)


def plot_fronts(
    results: Results,
    at: At = "best",
    axes: list[str | Axis] | None = None,
    curves: pd.DataFrame | None = None,
    split: str = "dev",
) -> Figure:
    """Per-method Pareto fronts, high- vs low-resource, for dev CE (and chrF/BLEU when present;
    lm: bits per byte and perplexity); ``split="test"``: the test values of each task's best dev
    weights (``frontier.trial_points``).

    Every trial is a point; dominated ones are faded, unfinished ones hollow; each front is a
    staircase; dashed, where a method has several seeds, its median attainment front: what at
    least half of the seeds' fronts reach (``stats.attainment_front``). With several low-resource
    tasks, one extra panel (CE, lm: bits per byte) per low-resource task. Two ``axes`` draw that
    pair only.
    """
    curves = trial_curves(results) if curves is None else curves
    panels = [[("high", m), ("low", m)] for m in front_metrics(results)]
    if len(results.tasks["low"]) > 1:
        m = primary_metric(results)
        panels += [[("high", m), (t, m)] for t in results.tasks["low"]]
    if axes and len(axes) == 2:
        panels = [[parse_axis(a) for a in axes]]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.8 * nrows + 0.4), layout="constrained")
    for i, axes in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _draw_front(ax, results, trial_points(results, axes, at, split, curves), axes, split)
        short = {"ce": "cross-entropy", "chrf": "chrF", "bleu": "BLEU", "loss": "loss"}
        short |= {"bpb": "bits per byte", "ppl": "perplexity"}
        per = "at the best dev weights" if split == "test" else f"{at} value"
        ax.set_title(f"{split} {short[axes[1][1]]}, {per} per task")
        ax.legend(fontsize=8, title="method (faded: dominated, hollow: partial)", title_fontsize=7)
    fig.suptitle(f"Pareto fronts per method (each panel's on its own two axes)\n{title(results)}")
    return fig


def default_curve_trials(results: Results, at: At = "best", max_trials: int = 6) -> list[str]:
    """Front members of every method, best low-resource value first, taken round-robin."""
    fr = frontier(results, at=at)
    low = len(results.tasks["high"])  # first low-resource axis
    fronts = [
        [m["trial"] for m in sorted(v["front"], key=lambda m: m["values"][low])]
        for v in fr["methods"].values()
    ]
    order = [f[i] for i in range(max(map(len, fronts), default=0)) for f in fronts if i < len(f)]
    return order[:max_trials]


def _trial_label(row: pd.Series) -> str:
    parts = [str(row["method"])]
    if row["L"]:
        parts.append(f"L={row['L']}")
    for k in ("w", "temperature", "max_epochs"):
        if pd.notna(row[k]):
            parts.append(f"{'T' if k == 'temperature' else k}={row[k]:g}")
    parts.append(f"seed={row['seed']}")
    if row["status"] != "finished":
        parts.append("(pruned)" if row["status"] == "pruned" else "(partial)")
    return " ".join(parts)


def plot_curves(
    results: Results,
    trials: list[str] | None = None,
    max_trials: int = 6,
    curves: pd.DataFrame | None = None,
) -> Figure:
    """Dev CE (lm: bits per byte), and training loss where logged per task, over steps, per task,
    for some trials."""
    curves = trial_curves(results) if curves is None else curves
    trials = trials or default_curve_trials(results, max_trials=max_trials)
    config = results.trials.set_index("trial")
    unknown = sorted(set(trials) - set(config.index))
    if unknown:
        raise UserError(f"trials {unknown}: not in {results.file('trials.parquet')}")
    tasks = results.tasks["high"] + results.tasks["low"]
    rows = [("dev", primary_metric(results))]
    if ((curves["metric"] == "loss") & curves["task"].isin(tasks)).any():
        rows.append(("train", "loss"))
    panels = [(split, metric, task) for split, metric in rows for task in tasks]
    ncols = min(len(tasks), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.6 * nrows + 1.2), layout="constrained")
    colors = [f"C{i % 10}" for i in range(len(trials))]
    for i, (split, metric, task) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        c = curves[(curves["task"] == task) & (curves["split"] == split)]
        c = c[c["metric"] == metric]
        for trial, color in zip(trials, colors, strict=True):
            t = c[c["trial"] == trial]
            style = "-" if config.loc[trial, "status"] == "finished" else "--"
            label = _trial_label(config.loc[trial])
            ax.plot(t["step"], t["value"], style, color=color, marker=".", label=label)
        group = "high" if task in results.tasks["high"] else "low"
        ax.set_title(f"{task} ({group}-resource)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{split} {METRIC_LABELS[metric]}")
        ax.grid(alpha=0.3)
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="outside lower center",
        ncols=min(len(trials), 3),
        fontsize=8,
        title="trial (dashed: partial)",
        title_fontsize=8,
    )
    fig.suptitle(f"Learning curves of front members\n{title(results)}")
    return fig


def _last(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    c = curves[(curves["metric"] == metric) & (curves["task"] != "*")]
    return c.sort_values("step").groupby(["trial", "task"], as_index=False).last()


def plot_rates(results: Results, curves: pd.DataFrame | None = None) -> Figure:
    """Realized vs target sampling rate per task, and epochs per task, at each trial's end."""
    curves = trial_curves(results) if curves is None else curves
    method = results.trials.set_index("trial")["method"]
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_rate, ax_ep = fig.subplots(1, 2)
    tasks = results.tasks["high"] + results.tasks["low"]
    task_color = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    rates = _last(curves, "target_rate").merge(
        _last(curves, "realized_rate"), on=["trial", "task"], suffixes=("_target", "_realized")
    )
    epochs = _last(curves, "epochs")
    if rates.empty:
        ax_rate.text(0.5, 0.5, "no target_rate / realized_rate recorded", ha="center")
    for task, r in rates.groupby("task"):
        ax_rate.scatter(
            r["value_target"], r["value_realized"], color=task_color.get(task), label=task
        )
    ax_rate.axline((0, 0), slope=1, color="gray", ls=":", label="realized = target")
    ax_rate.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax_rate.set_xlabel("target sampling rate of the last phase")
    ax_rate.set_ylabel("realized share of examples in the last phase")
    ax_rate.set_title("sampling rates per task (one point per trial)")
    ax_rate.legend(fontsize=8)
    methods = sorted(method.unique())
    if epochs.empty:
        ax_ep.text(0.5, 0.5, "no epochs recorded", ha="center")
    for i, task in enumerate(tasks):
        e = epochs[epochs["task"] == task]
        if e.empty:  # an empty column has no numeric dtype to add the offset to
            continue
        x = e["trial"].map(method).map(methods.index) + (i - (len(tasks) - 1) / 2) * 0.15
        ax_ep.scatter(x, e["value"], color=task_color[task], label=task, alpha=0.7)
    ax_ep.set_xticks(range(len(methods)), methods, rotation=20)
    ax_ep.set_xlabel("method")
    ax_ep.set_ylabel("epochs over the task's training data")
    ax_ep.set_title("epochs per task at the end of each trial")
    if not epochs.empty:
        ax_ep.legend(fontsize=8)
    for ax in (ax_rate, ax_ep):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Sampling: realized vs target rates, epochs\n{title(results)}")
    return fig


def plot_length_effect(
    results: Results, at: At = "best", curves: pd.DataFrame | None = None
) -> Figure:
    """Low-resource dev CE (lm: bits per byte) against pre-training length L, one line per w, per
    method with L."""
    curves = trial_curves(results) if curves is None else curves
    axis = ("low", primary_metric(results))
    pts = trial_points(results, [axis], at, curves=curves)
    col = axis_name(axis)
    pts = pts[pts[col].notna()]
    with_l = [
        m for m, g in pts.groupby("method", sort=True) if g.loc[g["L"] > 0, "L"].nunique() > 1
    ]
    fig = Figure(figsize=(7 * max(len(with_l), 1), 5), layout="constrained")
    axs = fig.subplots(1, max(len(with_l), 1), squeeze=False)[0]
    if not with_l:
        axs[0].text(0.5, 0.5, "no method varies the pre-training length L", ha="center")
    scal = pts.loc[pts["method"] == "scalarization", col]
    for method, ax in zip(with_l, axs, strict=False):
        m = pts[(pts["method"] == method) & (pts["L"] > 0)]
        for i, (w, g) in enumerate(m.groupby("w", dropna=False)):
            mean = g.groupby("L")[col].mean()
            ax.plot(mean.index, mean.values, "-o", color=f"C{i % 10}", label=f"w={w:g}")
            face = np.where(g["status"] == "finished", f"C{i % 10}", "none")
            ax.scatter(g["L"], g[col], facecolors=face, edgecolors=f"C{i % 10}", s=14, alpha=0.5)
        if not scal.empty:
            ax.axhline(scal.min(), color="gray", ls="--", label="best scalarization (any w)")
        ax.set_title(f"{method}: line = mean over seeds, dots = seeds (hollow: partial)")
        ax.set_xlabel("pre-training length L (steps)")
        ax.set_ylabel(axis_label(results, axis))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="low-resource rate", title_fontsize=8)
    fig.suptitle(f"Effect of pre-training length ({at} value per task)\n{title(results)}")
    return fig


def plot_hypervolume(results: Results, fr: dict) -> Figure:
    """Hypervolume per method: one dot per seed's front, bar = seed mean, diamond = pooled front."""
    methods = sorted(fr["methods"])
    fig = Figure(figsize=(max(7.0, 1.6 * len(methods) + 2), 5), layout="constrained")
    ax = fig.add_subplot()
    for i, method in enumerate(methods):
        v, color = fr["methods"][method], method_color(method)
        seeds = [h for h in v["hypervolume_by_seed"].values() if h is not None]
        ax.bar(i, np.mean(seeds) if seeds else 0, color=color, alpha=0.35, width=0.6)
        ax.scatter(np.full(len(seeds), i - 0.12), seeds, color=color, zorder=3)
        ax.scatter(i + 0.12, v["hypervolume"], marker="D", color="black", zorder=4)
    ax.scatter([], [], color="gray", label="one seed's front")
    ax.scatter([], [], marker="D", color="black", label="all seeds pooled")
    ax.bar([], [], color="gray", alpha=0.35, label="mean over seeds")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_xlabel("method")
    ax.set_ylabel(f"hypervolume over {len(fr['axes'])} {fr['split']} axes (higher is better)")
    ref = ", ".join(
        f"{a}={r:.3g}" for a, r in zip(fr["axes"], fr["reference_point"] or [], strict=False)
    )
    ax.set_title(f"reference point: {ref}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Hypervolume ({fr['at']} value per task)\n{title(results)}")
    return fig


def summary_text(fr: dict) -> list[str]:
    """Sentences: reference point, hypervolume ranking, pairwise front dominance, statistics."""
    if not fr["methods"]:
        return ["No trial has values on every axis yet."]
    ref = ", ".join(f"{a} {r:.3g}" for a, r in zip(fr["axes"], fr["reference_point"], strict=True))
    hv = {m: v["hypervolume"] for m, v in fr["methods"].items()}
    ranked = sorted(hv, key=hv.get, reverse=True)
    metrics = dict.fromkeys(a.rsplit("/", 1)[-1] for a in fr["axes"])
    what = "; ".join(METRIC_LABELS.get(m, m) for m in metrics)
    out = [
        f"Axes: {', '.join(fr['axes'])} ({fr['split']} {what}, {fr['at']} value per task); "
        f"reference point {ref} ({fr.get('reference_rule', '')}).",
        "Hypervolume, higher is better: "
        + ", ".join(f"{m} {hv[m]:.4g}" for m in ranked)
        + f". Largest: {ranked[0]}.",
    ]
    for i, a in enumerate(ranked):
        for b in ranked[i + 1 :]:
            ab, ba = fr["dominance"][a][b], fr["dominance"][b][a]
            out.append(
                f"{a}'s front weakly dominates {ab:.0%} of {b}'s front points; "
                f"{b}'s front dominates {ba:.0%} of {a}'s."
            )
    pruned = fr["trials"].get("pruned", 0)
    if pruned:
        out.append(
            f"{pruned} of {fr['trials']['total']} trials were pruned (stopped at a rung of their "
            "fine-tuning, beaten by their method's others there): they are on no front."
        )
    for metric, sigs in fr.get("signatures", {}).items():
        out.append(f"{metric} scored by sacrebleu, signature {' and '.join(sigs)}.")
    return out + statistics_text(fr)


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _interval(iv: list[float] | None) -> str:
    return "" if iv is None else f"[{iv[0]:.4g}, {iv[1]:.4g}]"


def _pair_sentence(p: dict, on: str, level: float) -> str:
    """One pair's verdict in words; "cannot tell apart" wherever the interval holds 0 or is None."""
    a, b, n = p["a"], p["b"], len(p["seeds"])
    diff = f"mean difference {a} - {b} {_g(p['difference'])}"
    if p["interval"] is None:
        if n == 0:
            return f"The seeds cannot tell {a} and {b} apart on {on}: they share no seed."
        return (
            f"The seeds cannot tell {a} and {b} apart on {on}: one common seed ({diff}) is too "
            "few for an interval."
        )
    ci = f"{level:.0%} interval {_interval(p['interval'])} over {n} paired seeds"
    if p["verdict"] == NOT_DISTINGUISHABLE:
        return f"The seeds cannot tell {a} and {b} apart on {on}: {diff}, {ci} holds 0."
    win, lose = (a, b) if p["verdict"] == A_BETTER else (b, a)
    return f"{win} is better than {lose} on {on}: {diff}, {ci}."


def _matched_on(st: dict) -> str:
    high, low = st["axes"]
    return f"{low} at {high} = {_g(st['matched']['at'])}"


def statistics_text(fr: dict) -> list[str]:
    """Sentences over seeds: hypervolume spread, pairwise bootstrap, the matched comparison."""
    st = fr.get("statistics")
    if not st:
        return []
    level = st["bootstrap"]["level"]
    spread = {
        m: f"{_g(h['mean'])} (one seed)"
        if h["n"] < 2
        else f"{_g(h['mean'])} ± {_g(h['std'])} ({_g(h['min'])} to {_g(h['max'])}, {h['n']} seeds)"
        for m, h in st["hypervolume"].items()
    }
    out = [
        "Hypervolume over seeds (mean ± std, min to max): "
        + "; ".join(f"{m} {v}" for m, v in spread.items())
        + f". Intervals: percentile bootstrap of the mean over seeds, "
        f"{st['bootstrap']['resamples']} resamples, RNG seed {st['bootstrap']['seed']}."
    ]
    out += [_pair_sentence(p, "hypervolume", level) for p in st["hypervolume_pairs"]]
    if st["matched"] is None:
        return [*out, "No matched comparison: the axes hold no high- and low-resource pair."]
    on, matched = _matched_on(st), st["matched"]
    out.append(
        f"Matched comparison, {on} ({matched['rule']}): "
        + "; ".join(
            f"{m} {_g(v['mean'])} {_interval(v['interval'])} ({v['n']} seed{'s' * (v['n'] > 1)})"
            if v["n"]
            else f"{m}: no seed's front reaches it"
            for m, v in matched["methods"].items()
        )
        + "."
    )
    return out + [_pair_sentence(p, on, level) for p in matched["pairs"]]


def statistics_tables(fr: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per method (hypervolume over seeds, matched value) and per pair (differences, verdicts)."""
    st = fr.get("statistics")
    if not st:
        return pd.DataFrame(), pd.DataFrame()
    ci = f"{st['bootstrap']['level']:.0%} interval"
    on = _matched_on(st) if st["matched"] else None
    matched = st["matched"] or {"methods": {}, "pairs": []}
    methods = []
    for m, h in st["hypervolume"].items():
        row = {"method": m, "seeds": h["n"]}
        row |= {f"hypervolume {k}": h[k] for k in ("mean", "std", "min", "max")}
        if on:
            v = matched["methods"][m]
            row |= {f"{on}: mean": v["mean"], f"{on}: {ci}": _interval(v["interval"])}
            row[f"{on}: seeds"] = v["n"]
        methods.append(row)
    matched_pairs = {(q["a"], q["b"]): q for q in matched["pairs"]}
    pairs = []
    for p in st["hypervolume_pairs"]:
        row = {"A": p["a"], "B": p["b"], "paired seeds": len(p["seeds"])}
        row |= {"hypervolume A - B": p["difference"], f"hypervolume {ci}": _interval(p["interval"])}
        row["hypervolume verdict"] = p["verdict"]
        if on:
            q = matched_pairs[p["a"], p["b"]]
            row |= {f"{on}: A - B": q["difference"], f"{on}: {ci}": _interval(q["interval"])}
            row[f"{on}: verdict"] = q["verdict"]
        pairs.append(row)
    return pd.DataFrame(methods), pd.DataFrame(pairs)


def front_table(fr: dict) -> pd.DataFrame:
    """Front members of every method with their configs and axis values."""
    axes = fr["axes"]
    rows = [
        {k: v for k, v in m.items() if k != "values"} | dict(zip(axes, m["values"], strict=True))
        for v in fr["methods"].values()
        for m in v["front"]
    ]
    return pd.DataFrame(rows)


def perplexity_table(
    results: Results, fr: dict, curves: pd.DataFrame | None = None
) -> pd.DataFrame:
    """lm: each front member's dev perplexity per language (per token of the sweep's tokenizer),
    at the same point per task (best or final) as the front; empty for translation."""
    if results.kind != "lm":
        return pd.DataFrame()
    tasks = results.tasks["high"] + results.tasks["low"]
    pts = trial_points(results, [(t, "ppl") for t in tasks], fr["at"], curves=curves)
    members = [m["trial"] for v in fr["methods"].values() for m in v["front"]]
    pts = pts.set_index("trial").loc[members].reset_index()
    return pts[["trial", "method", *(axis_name((t, "ppl")) for t in tasks)]]


def pruned_table(results: Results) -> pd.DataFrame:
    """The trials a pruned sweep stopped at a rung: where, and the steps that saved."""
    m = results.metrics
    stops = m[m["metric"] == "pruned"].groupby("segment")["step"].min()
    t = results.trials[results.trials["status"] == "pruned"]
    if t.empty:
        return pd.DataFrame()
    last = [json.loads(lineage)[-1]["segment"] for lineage in t["lineage"]]
    out = t[["trial", "method", "L", "w", "seed"]].assign(stopped_at=stops.reindex(last).values)
    return out.assign(steps_saved=t["final_step"].values - out["stopped_at"])


def evaluation_sets_table(results: Results, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each trial's scores on the sets beyond test (``data.eval_sets``, ``ray_mtl.evaluate``), at
    each task's best dev weights: a row per trial, set and task, scored at the trial's end only
    (an ancestor's score on a shared trunk is not the trial's)."""
    curves = trial_curves(results) if curves is None else curves
    final = results.trials.set_index("trial")["final_step"]
    c = curves[~curves["split"].isin(RESERVED_SPLITS)]
    c = c[(c["step"] == c["trial"].map(final)) & c["metric"].isin(["ce", "bleu", "chrf"])]
    if c.empty:
        return pd.DataFrame()
    table = c.pivot_table("value", ["trial", "split", "task"], "metric").reset_index()
    methods = results.trials.set_index("trial")["method"]
    table.insert(1, "method", table["trial"].map(methods))
    table = table.rename(columns={"split": "set"}).rename_axis(columns=None)
    return table.sort_values(["set", "task", "method", "trial"], ignore_index=True)


def _table(df: pd.DataFrame) -> str:
    """A table for the page: 4 significant digits, and a missing value (NaN, or None, which
    pandas would print as such: a two-phase row's temperature, a one-seed std) an empty cell."""
    return df.replace({None: np.nan}).to_html(index=False, na_rep="", float_format="{:.4g}".format)


def _html(results: Results, fr: dict, images: dict[str, bytes], curves=None) -> str:
    figs = "\n".join(
        f'<h2>{FIGURES[name]}</h2>\n<a href="{name}.png"><img alt="{name}.png" '
        f'style="max-width:100%" src="data:image/png;base64,{base64.b64encode(png).decode()}"></a>'
        for name, png in images.items()
    )
    summary = "".join(f"<li>{html.escape(s)}</li>" for s in summary_text(fr))
    table = _table(front_table(fr))
    stats = "\n".join(_table(t) for t in statistics_tables(fr) if not t.empty)
    ppl = perplexity_table(results, fr, curves)
    if not ppl.empty:
        ppl = _table(ppl)
        table += f"\n<h2>Perplexity of the frontier points (dev, per token)</h2>{ppl}"
    pruned = pruned_table(results)
    if not pruned.empty:
        pruned = _table(pruned)
        table += f"\n<h2>Pruned trials (stopped at a rung, never on a front)</h2>{pruned}"
    extra = evaluation_sets_table(results, curves)
    if not extra.empty:
        extra = _table(extra)
        table += f"\n<h2>Other evaluation sets (each task at its best dev weights)</h2>{extra}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title(results))}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head>
<body>{_partial_banner(results)}<h1>{html.escape(title(results))}</h1>
<h2>Summary</h2><ul>{summary}</ul>
<h2>Statistics over seeds</h2>{stats}
<h2>Frontier points</h2>{table}
{figs}
</body></html>
"""


REPORT_FILES = {*(f"{name}.png" for name in FIGURES), "frontier.json", "index.html"}
"""What a report writes; the only files it ever replaces."""


def _check_out(out: str) -> None:
    """A report dir holds a report and nothing else: writing into a dir that holds other files
    (the sweep itself, say) would replace what the report did not write."""
    others = sorted(set(list_dir(out)) - REPORT_FILES)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise UserError(
            f"{out}: --out holds files the report did not write ({shown}); expected an empty "
            "dir, a new one, or an earlier report"
        )


def _partial_banner(results: Results) -> str:
    """The page's first line, when not every trial has finished: what is shown is not the end."""
    if not results.partial:
        return ""
    counts = results.trials["status"].value_counts().to_dict()
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return (
        f'<p style="background:#fde68a;padding:6px"><b>PARTIAL REPORT</b>: {results.finished} of '
        f"{len(results.trials)} trials finished ({parts}); unfinished trials are hollow or "
        "dashed.</p>"
    )


def build_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    axes: list[str | Axis] | None = None,
    at: At = "best",
) -> str | Path:
    """Write the figures, frontier.json and index.html to ``out`` (default ``sweep/report``),
    a dir or a storage URI; returns the page's path. Each file is written whole; ``index.html``
    last, so a page never names a figure that is not there yet."""
    axes = [parse_axis(a) for a in axes] if axes else None
    results = load_results(sweep_dir)
    out = str(out) if out else results.file("report")
    if "://" not in out:
        ensure_writable_dir(Path(out).parent, "report dir")
        out = str(ensure_writable_dir(out, "report dir"))
    _check_out(out)
    curves = trial_curves(results)
    fr = frontier(results, axes, at)
    figs = {
        "fronts": plot_fronts(results, at, axes, curves=curves),
        "curves": plot_curves(results, curves=curves),
        "rates": plot_rates(results, curves=curves),
        "length": plot_length_effect(results, at, curves=curves),
        "hypervolume": plot_hypervolume(results, fr),
    }
    images = write_pngs(figs, out)
    write_text(join(out, "frontier.json"), json.dumps(fr, indent=2, sort_keys=True) + "\n")
    page = join(out, "index.html")
    write_text(page, _html(results, fr, images, curves))
    return page if "://" in page else Path(page)


def write_pngs(figs: dict[str, Figure], out: str) -> dict[str, bytes]:
    """Each figure as ``<out>/<name>.png`` (a dir or storage URI); returns the PNGs' bytes."""
    images = {}
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        images[name] = buf.getvalue()
        write_bytes(join(out, f"{name}.png"), images[name])
    return images


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_mtl.report", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", help="a sweep dir written by ray_mtl.tune")
    p.add_argument("--out", help="output dir (default: SWEEP_DIR/report)")
    p.add_argument(
        "--axes", nargs="+", metavar="TASK/METRIC", help="frontier axes, e.g. eng-ron/ce"
    )
    p.add_argument("--at", choices=["best", "final"], default="best", help="value per task")
    args = p.parse_args(argv)
    print(build_report(args.sweep_dir, args.out, args.axes, args.at))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
