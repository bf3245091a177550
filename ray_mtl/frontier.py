"""Pareto frontiers of a sweep: per-trial points, non-dominated sets, hypervolume, dominance.

    res = results.load_results("runs/smoke")         # ray_mtl.results: the sweep's tables
    pts = trial_points(res, at="best")                # one row per trial, one column per axis
    fr = frontier(res)                                # per method: fronts, hypervolume,
                                                      # dominance, statistics over seeds

Pure functions over pandas/numpy (no Ray, no torch, no I/O), so every view is tested in
milliseconds. An axis is ``(task, metric)``, written ``"task/metric"`` in columns and JSON; the
task ``high`` or ``low`` means the mean over that group of tasks (each task at its own best step
when ``at="best"``), which is how a five-task space is drawn in two dimensions. Internally every
axis is turned into "lower is better" by multiplying with ``-sense``. Non-finite values (a
diverged run's last evaluation) are never points, and a diverged or pruned trial (stopped before
its F steps) is never on a front.
Default axes: each task's dev cross-entropy for translation, its dev bits per byte for lm
(``primary_metric``).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from ray_mtl.errors import UserError
from ray_mtl.results import CONFIG_COLUMNS, GROUPS, KEY, METRIC_COLUMNS, SCHEMA

if TYPE_CHECKING:
    from ray_mtl.results import Results

SENSES = {"ce": -1, "bpb": -1, "ppl": -1, "loss": -1, "bleu": 1, "chrf": 1}

Axis = tuple[str, str]
At = Literal["best", "final"]


def trial_curves(results: Results) -> pd.DataFrame:
    """Metrics rows per trial, following each trial's lineage (a later piece wins a shared step)."""
    pieces = []
    for trial, lineage in zip(results.trials["trial"], results.trials["lineage"], strict=True):
        try:
            parts = json.loads(lineage)
            pieces += [
                (trial, i, str(p["segment"]), int(p["from_step"]), int(p["to_step"]))
                for i, p in enumerate(parts)
            ]
        except (ValueError, TypeError, KeyError) as e:
            raise UserError(
                f"{results.file('trials.parquet')}: trial {trial}: lineage: expected a JSON list "
                f"of {{segment, from_step, to_step}}, got {lineage!r} ({e})"
            ) from None
    pieces = pd.DataFrame(pieces, columns=["trial", "piece", "segment", "from_step", "to_step"])
    rows = pieces.merge(results.metrics[list(METRIC_COLUMNS)], on="segment")
    rows = rows[(rows["step"] >= rows["from_step"]) & (rows["step"] <= rows["to_step"])]
    rows = rows.sort_values(["trial", "piece"], kind="stable")
    rows = rows.drop_duplicates(["trial", *KEY], keep="last")
    rows = rows.sort_values(["trial", "step"], kind="stable").reset_index(drop=True)
    return rows[["trial", *METRIC_COLUMNS]]


def parse_axis(axis: str | Axis) -> Axis:
    """``"eng-ron/ce"`` or ``("eng-ron", "ce")`` -> ``("eng-ron", "ce")``."""
    if isinstance(axis, str):
        task, sep, metric = axis.rpartition("/")
        if not (sep and task and metric):
            raise UserError(f"axis {axis!r}: expected 'task/metric', e.g. 'eng-ron/ce'")
        axis = (task, metric)
    task, metric = axis
    if metric not in SENSES:
        raise UserError(f"axis {task}/{metric}: expected a metric in {sorted(SENSES)}")
    return (str(task), str(metric))


def axis_name(axis: Axis) -> str:
    return f"{axis[0]}/{axis[1]}"


def primary_metric(results: Results) -> str:
    """What a sweep's fronts are drawn in by default: cross-entropy for translation, bits per
    byte (comparable across languages and tokenizers) for lm."""
    return "bpb" if results.kind == "lm" else "ce"


def default_axes(results: Results, metric: str | None = None) -> list[Axis]:
    """Dev ``metric`` (default ``primary_metric``) of each task, high-resource tasks first."""
    metric = metric or primary_metric(results)
    return [(t, metric) for t in results.tasks["high"] + results.tasks["low"]]


def senses(axes: list[str | Axis]) -> list[int]:
    """-1 where lower is better (ce, bpb, ppl, loss), +1 where higher is better (bleu, chrf)."""
    return [SENSES[parse_axis(a)[1]] for a in axes]


def _as_min(points: np.ndarray, sense: list[int] | np.ndarray) -> np.ndarray:
    """Flip maximised axes so that lower is better on every axis."""
    return np.asarray(points, dtype=float) * -np.asarray(sense)


def pareto_mask(points: np.ndarray, sense: list[int]) -> np.ndarray:
    """True for non-dominated rows; a row with a NaN is never on the front."""
    q = _as_min(points, sense)
    ok = ~np.isnan(q).any(axis=1)
    le = (q[:, None, :] <= q[None, :, :]).all(axis=2)  # le[j, i]: j at least as good as i
    lt = (q[:, None, :] < q[None, :, :]).any(axis=2)
    dominated = (le & lt & ok[:, None]).any(axis=0)
    return ok & ~dominated


def _hv_min(q: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimisation points ``q`` (all strictly below ``ref``), by slicing."""
    if len(q) == 0:
        return 0.0
    if q.shape[1] == 1:
        return float(ref[0] - q[:, 0].min())
    q = q[pareto_mask(q, [-1] * q.shape[1])]
    q = q[np.argsort(q[:, -1], kind="stable")]
    if q.shape[1] == 2:
        # Sorted by y ascending, a non-dominated set has x descending: a sum of rectangles.
        heights = np.append(q[1:, 1], ref[1]) - q[:, 1]
        return float(np.sum((ref[0] - q[:, 0]) * heights))
    bounds = np.append(q[1:, -1], ref[-1])
    return sum(
        _hv_min(q[: i + 1, :-1], ref[:-1]) * (bounds[i] - q[i, -1])
        for i in range(len(q))
        if bounds[i] > q[i, -1]
    )


def hypervolume(points: np.ndarray, ref: np.ndarray, sense: list[int]) -> float:
    """Volume dominated by ``points`` and bounded by ``ref``; points not better than ref add 0."""
    q, r = _as_min(points, sense), _as_min(np.asarray(ref, dtype=float)[None, :], sense)[0]
    q = q[~np.isnan(q).any(axis=1) & (q < r).all(axis=1)]
    return _hv_min(q, r)


def reference_point(all_points: np.ndarray, sense: list[int], margin: float = 0.1) -> np.ndarray:
    """Worst value per axis over all points, pushed ``margin`` x range further out."""
    q = _as_min(all_points, sense)
    worst, best = np.nanmax(q, axis=0), np.nanmin(q, axis=0)
    span = worst - best
    # A flat axis still needs a ref strictly worse than every point, or its volume is zero.
    span = np.where(span > 0, span, np.maximum(np.abs(worst), 1.0))
    return (worst + margin * span) * -np.asarray(sense)


def dominance(front_a: np.ndarray, front_b: np.ndarray, sense: list[int]) -> float:
    """Share of B's points weakly dominated by (no better than) some point of A; NaN if B empty."""
    a, b = _as_min(front_a, sense), _as_min(front_b, sense)
    if len(b) == 0:
        return math.nan
    if len(a) == 0:
        return 0.0
    return float((a[:, None, :] <= b[None, :, :]).all(axis=2).any(axis=0).mean())


def trial_points(
    results: Results,
    axes: list[str | Axis] | None = None,
    at: At = "best",
    split: str = "dev",
    curves: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per trial: its config and one column per axis ``task/metric``.

    ``best``: per task, the best value over the trial's curve (early stopping per task);
    ``final``: the last value at or before ``final_step`` (a partial trial's latest value).
    ``split="test"`` or an evaluation set's name (``at="best"`` only): the last value at or
    before ``final_step``, that of the weights of the task's best dev step, so dev alone
    chooses. Axes with task ``high``/``low`` average that group's per-task values.
    """
    if at not in ("best", "final"):
        raise UserError(f"at: expected 'best' or 'final', got {at!r}")
    if split != "dev" and at != "best":
        raise UserError(
            "at: test values exist at each task's best dev weights only; expected 'best'"
        )
    axes = [parse_axis(a) for a in axes or default_axes(results)]
    curves = trial_curves(results) if curves is None else curves
    final = results.trials.set_index("trial")["final_step"]
    c = curves[(curves["split"] == split) & np.isfinite(curves["value"])]
    c = c[c["step"] <= c["trial"].map(final)]
    config = results.trials[[col for col in CONFIG_COLUMNS if col in results.trials]]
    out = config.set_index("trial")
    for metric in dict.fromkeys(m for _, m in axes):
        m = c[c["metric"] == metric]
        if at == "final" or split != "dev":
            per_task = m.sort_values("step").groupby(["trial", "task"])["value"].last()
        elif SENSES[metric] < 0:
            per_task = m.groupby(["trial", "task"])["value"].min()
        else:
            per_task = m.groupby(["trial", "task"])["value"].max()
        per_task = per_task.unstack("task")
        for task, am in axes:
            if am != metric:
                continue
            group = results.tasks[task] if task in GROUPS else [task]
            cols = per_task.reindex(columns=group)
            # A mean over a group is only defined when every task of it has a value.
            out[axis_name((task, metric))] = cols.mean(axis=1, skipna=False).reindex(out.index)
    if "status" in out:  # a diverged or pruned trial's values are not those of its F steps
        stopped = out["status"].isin(["diverged", "pruned"])
        out.loc[stopped, [axis_name(a) for a in axes]] = np.nan
    return out.reset_index()


def high_low_pair(results: Results, axes: list[Axis]) -> tuple[str, str] | None:
    """Names of the first high-resource and the first low-resource axis, or None without both."""
    first = [
        next((axis_name(a) for a in axes if a[0] == g or a[0] in results.tasks[g]), None)
        for g in GROUPS
    ]
    return tuple(first) if all(first) else None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def frontier(
    results: Results,
    axes: list[str | Axis] | None = None,
    at: At = "best",
    points: pd.DataFrame | None = None,
    split: str = "dev",
) -> dict:
    """Per method: front members, hypervolume (pooled and per seed); dominance; statistics.

    One reference point for all methods (worst over every trial), so hypervolumes compare.
    ``statistics`` holds ``stats.seed_statistics`` over the seeds, on the first high- and
    low-resource axes where the comparison needs two.
    """
    axes = [parse_axis(a) for a in axes or default_axes(results)]
    names, sense = [axis_name(a) for a in axes], senses(axes)
    pts = trial_points(results, axes, at, split) if points is None else points
    pts = pts[pts[names].notna().all(axis=1)]
    out = {
        "sweep": results.name,
        "tasks": results.tasks,
        "at": at,
        "split": split,
        "axes": names,
        "senses": sense,
        "signatures": results.signatures,
        "trials": {
            "total": len(results.trials),
            "finished": results.finished,
            "pruned": int((results.trials["status"] == "pruned").sum()),
            "with_values": len(pts),
        },
        "methods": {},
        "dominance": {},
        "statistics": None,
    }
    if pts.empty:
        out["reference_point"] = None
        return _jsonable(out)
    ref = reference_point(pts[names].to_numpy(), sense)
    out["reference_point"] = ref.tolist()
    out["reference_rule"] = (
        f"worst value per axis over all {len(pts)} trials of all methods, pushed out by 10% "
        "of that axis' range"
    )
    pair = high_low_pair(results, axes)
    fronts, hv_by_seed, pair_points = {}, {}, {} if pair else None
    for method, m in pts.groupby("method", sort=True):
        values = m[names].to_numpy()
        on = pareto_mask(values, sense)
        fronts[method] = values[on]
        seeds = dict(list(m.groupby("seed", sort=True)))
        by_seed = {int(k): hypervolume(s[names].to_numpy(), ref, sense) for k, s in seeds.items()}
        hv_by_seed[method] = by_seed
        if pair:
            pair_points[method] = {int(k): s[list(pair)].to_numpy() for k, s in seeds.items()}
        members = m[on].sort_values(names[0])
        out["methods"][method] = {
            "trials": len(m),
            "front": [
                {
                    **{k: r[k] for k in CONFIG_COLUMNS if k in r and k != "final_step"},
                    "values": [r[n] for n in names],
                }
                for r in members.to_dict("records")
            ],
            "hypervolume": hypervolume(values, ref, sense),
            "hypervolume_by_seed": by_seed,
            "front_by_seed": {
                int(k): s["trial"][pareto_mask(s[names].to_numpy(), sense)].tolist()
                for k, s in seeds.items()
            },
        }
    out["dominance"] = {
        a: {b: dominance(fronts[a], fronts[b], sense) for b in fronts if b != a} for a in fronts
    }
    # stats builds on this module's Pareto functions: imported here to keep the import one-way.
    from ray_mtl.stats import seed_statistics

    stats = seed_statistics(hv_by_seed, pair_points, senses(pair) if pair else [])
    out["statistics"] = {"axes": pair, **stats}
    return _jsonable(out)


def frontier_files(results: Results, axes: list[str | Axis] | None = None):
    """What ``frontier.json`` (at best and at final) and ``frontier.parquet`` (every point)
    hold: ``(doc, table)``."""
    axes = [parse_axis(a) for a in axes or default_axes(results)]
    names, sense = [axis_name(a) for a in axes], senses(axes)
    curves = trial_curves(results)
    doc, tables = {"schema": SCHEMA}, []
    for at in ("best", "final"):
        pts = trial_points(results, axes, at, curves=curves)
        doc[at] = frontier(results, axes, at, points=pts)
        pts.insert(2, "at", at)
        on = np.zeros(len(pts), dtype=bool)
        for _, idx in pts.groupby("method").groups.items():
            on[pts.index.get_indexer(idx)] = pareto_mask(pts.loc[idx, names].to_numpy(), sense)
        pts.insert(3, "on_front", on)
        tables.append(pts)
    table = pa.Table.from_pandas(pd.concat(tables, ignore_index=True), preserve_index=False)
    return doc, table
