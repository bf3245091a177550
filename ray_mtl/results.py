"""A sweep's results on storage: the schema, every writer and every reader.

    res = load_results("runs/smoke")                  # or s3://bucket/ray_mtl/smoke?endpoint_override=...
    res.metrics, res.trials                           # long-format rows; one row per trial
    write_frontier(res, "runs/smoke")                 # frontier.json + frontier.parquet

Long format: ``segment, step, task, split, metric, value``; every view (fronts at best or final,
curves, accounting) is a query of it. Each segment's rows are ``segments/<id>/metrics.parquet``,
written as they are reported; ``metrics.parquet`` and ``trials.parquet`` merge them when a sweep
ends. Until then (or after a crash) ``load_results`` assembles the same tables from the
per-segment rows and ``plan.json``, so a report can be drawn at any time, unfinished trials
marked. Scores of a finished sweep on a file it never saw (``python -m ray_mtl.evaluate``) are
rows too, ``evaluations/<name>/metrics.parquet``, read with the rest. Everything goes through
``ray_mtl.storage``: local paths, ``file://``, ``s3://``, ``gs://``.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

import ray_mtl
from ray_mtl.config import load_yaml
from ray_mtl.errors import UserError
from ray_mtl.storage import (
    is_dir,
    is_file,
    join,
    list_dir,
    parent,
    read_parquet,
    read_text,
    write_parquet,
    write_text,
)

SCHEMA = 1
METRIC_COLUMNS = ("segment", "step", "task", "split", "metric", "value")
# Row files are cast to this on read too: one written by pandas has large_string columns, and
# pyarrow will not concatenate tables whose types differ.
METRIC_SCHEMA = pa.schema(
    [
        (c, pa.int64() if c == "step" else pa.float64() if c == "value" else pa.string())
        for c in METRIC_COLUMNS
    ]
)
CONFIG_COLUMNS = ("trial", "method", "L", "F", "w", "temperature", "max_epochs", "seed")
CONFIG_COLUMNS += ("final_step", "status")
TRIAL_COLUMNS = (*CONFIG_COLUMNS, "lineage")
KEY = ["step", "task", "split", "metric"]
# Run-level metrics that time the run: they differ between two runs of the same segment.
TIMINGS = ("tokens_per_s", "setup_s", "eval_s", "train_start_s")
GROUPS = ("high", "low")
SWEEP_ENTRIES = frozenset(
    {"space.yaml", "plan.json", "results.json", "tree_state.json", "timeline.json", "tune"}
    | {"segments", "metrics.parquet", "trials.parquet", "frontier.json", "frontier.parquet"}
    | {"report", "evaluations", "tensorboard", "mlruns"}
)
"""What a sweep writes in its dir (``--overwrite`` deletes these and nothing else)."""
STATUSES = ("pending", "running", "finished", "pruned", "diverged", "failed")
"""A trial's status: not started, started, every piece trained, a piece was stopped at a rung
(``prune``), a piece's loss went non-finite, a piece failed (or its ancestor did) and will not
run."""


# --------------------------------------------------------------------------------------------
# Rows: what training reports, as the long format
# --------------------------------------------------------------------------------------------


def metric_rows(segment: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat reported metrics -> rows (segment, step, task, split, metric, value).

    ``split/task/metric`` keys become per-task rows; ``lr``, ``diverged``, ``pruned`` and the
    timings (``TIMINGS``) become run-level rows with task ``*``; strings (sacrebleu
    signatures) are not rows.
    """
    step = int(metrics["step"])
    rows = []
    for key, value in metrics.items():
        if isinstance(value, str | bool) or value is None:
            continue
        parts = key.split("/")
        if len(parts) == 3:
            split, task, metric = parts
        elif key in ("lr", "diverged", "pruned", *TIMINGS):
            split, task, metric = "train", "*", key
        else:
            continue
        values = (segment, step, task, split, metric, float(value))
        rows.append(dict(zip(METRIC_COLUMNS, values, strict=True)))
    return rows


def signatures(metrics: dict[str, Any]) -> dict[str, str]:
    """``{"bleu": "nrefs:1|case:mixed|...", "chrf": ...}``: sacrebleu's signature of each score a
    report carries (one per metric: every task and split is scored with the same settings)."""
    return {
        k.rsplit("/", 1)[-1].removesuffix("_signature"): v
        for k, v in metrics.items()
        if k.endswith("_signature") and isinstance(v, str)
    }


def signatures_uri(rows_uri: str) -> str:
    """Beside a segment's rows: the signatures of its BLEU and chrF values."""
    return join(parent(rows_uri), "signatures.json")


def write_rows(uri: str, rows: list[dict[str, Any]]) -> None:
    write_parquet(uri, pa.Table.from_pylist(rows, schema=METRIC_SCHEMA))


def segment_rows_uri(sweep: str, segment: str = "{segment}") -> str:
    """Where a segment's rows are (the default: a template for ``SegmentRows``)."""
    return join(sweep, "segments", segment, "metrics.parquet")


class SegmentRows:
    """Keeps each segment's rows file (``template.format(segment=...)``) holding every row
    reported so far for it.

    A run restarted after its driver died starts from the rows already in the files (read
    before the first write): the steps before its checkpoint are not reported again and must
    not be dropped. Rows are keyed by step, so a report repeated after a restart replaces, never
    duplicates.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.rows: dict[str, dict[int, list[dict[str, Any]]]] = {}
        self.signatures: dict[str, dict[str, str]] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        """Record one report (its ``segment`` named) and write that segment's file whole."""
        seg = metrics["segment"]
        uri = self.template.format(segment=seg)
        if seg not in self.rows:
            self.rows[seg] = {}
            if is_file(uri):
                for r in read_parquet(uri).to_pylist():
                    self.rows[seg].setdefault(int(r["step"]), []).append(r)
        self.rows[seg][int(metrics["step"])] = metric_rows(seg, metrics)
        write_rows(uri, [r for step in sorted(self.rows[seg]) for r in self.rows[seg][step]])
        sigs = signatures(metrics)
        if sigs and sigs != self.signatures.get(seg):
            write_text(signatures_uri(uri), json.dumps(sigs, sort_keys=True))
            self.signatures[seg] = sigs


# --------------------------------------------------------------------------------------------
# Trials: one row each, with its status
# --------------------------------------------------------------------------------------------


def code_version() -> str:
    """The git commit of the code (``+dirty`` when changed), else the package version."""
    root = Path(ray_mtl.__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty=+dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return rev or ray_mtl.__version__
    except (OSError, subprocess.SubprocessError):
        return ray_mtl.__version__


def trial_status(
    lineage: list[dict], ends: dict, diverged: dict, failed: set[str], pruned: dict | None = None
) -> str:
    """A trial's status from its segments' progress (``ends``: last step with rows),
    divergence and pruning (the step of each) and failure."""
    for p in lineage:
        seg, to_step = p["segment"], p["to_step"]
        if seg in diverged and diverged[seg] <= to_step:
            return "diverged"
        if pruned and seg in pruned and pruned[seg] < to_step:
            return "pruned"
        if seg in failed and ends.get(seg, -1) < to_step:
            return "failed"
    if all(ends.get(p["segment"], -1) >= p["to_step"] for p in lineage):
        return "finished"
    return "running" if any(p["segment"] in ends for p in lineage) else "pending"


def trials_table(plan: dict, metrics: pd.DataFrame, failed: set[str], meta: dict) -> pd.DataFrame:
    """One row per trial of ``plan`` (``Plan.to_dict()``), its status read from ``metrics``, its
    data and code versions from ``meta`` (``results.json``)."""
    ends = metrics.groupby("segment")["step"].max().to_dict() if len(metrics) else {}
    stops = {}
    for flag in ("diverged", "pruned"):
        rows = metrics[metrics["metric"] == flag] if len(metrics) else metrics
        stops[flag] = rows.groupby("segment")["step"].min().to_dict() if len(rows) else {}
    # What the sweep ran: the code at its start, then at each resume that ran other code.
    version = " then ".join(meta.get("code_versions", [])) or code_version()
    rows = []
    for t in plan["trials"]:
        lineage = [
            dict(segment=p["segment"], from_step=p["from_step"], to_step=p["to_step"])
            for p in t["lineage"]
        ]
        rows.append(
            dict(
                trial=t["id"],
                method=t["method"],
                L=t["L"],
                F=t["F"],
                w=math.nan if t["w"] is None else t["w"],
                temperature=math.nan if t["temperature"] is None else t["temperature"],
                max_epochs=math.nan if t["max_epochs"] is None else t["max_epochs"],
                seed=t["seed"],
                lineage=json.dumps(lineage),
                final_step=lineage[-1]["to_step"],
                status=trial_status(lineage, ends, stops["diverged"], failed, stops["pruned"]),
                manifest_hash=meta.get("manifest_hash", ""),
                code_version=version,
            )
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# A sweep's files
# --------------------------------------------------------------------------------------------


def write_meta(sweep: str, name: str, manifest_hash: str) -> None:
    """``results.json``: the schema this sweep's results are written in, and where; the code
    versions it ran under (a resume that runs other code adds its own)."""
    versions, now = read_meta(sweep).get("code_versions", []), code_version()
    versions += [now] if versions[-1:] != [now] else []
    meta = {"schema": SCHEMA, "name": name, "manifest_hash": manifest_hash, "sweep": sweep}
    write_text(join(sweep, "results.json"), json.dumps(meta | {"code_versions": versions}))


def read_meta(sweep: str) -> dict:
    """``results.json`` of a sweep ({} if there is none)."""
    return _read_json(sweep, "results.json") if is_file(join(sweep, "results.json")) else {}


def evaluation_rows_uri(sweep: str, name: str) -> str:
    """Where ``python -m ray_mtl.evaluate`` keeps a sweep's scores on the set ``name``."""
    return join(sweep, "evaluations", name, "metrics.parquet")


def _evaluation_uris(sweep: str) -> list[str]:
    uris = [evaluation_rows_uri(sweep, n) for n in list_dir(join(sweep, "evaluations"))]
    return [u for u in uris if is_file(u)]


def add_evaluation(sweep: str, name: str, rows: list[dict], sigs: dict[str, str]) -> str:
    """Add a set's rows (replacing earlier scores of the same trial ends and task) and their
    sacrebleu signatures; returns the rows' URI."""
    uri = evaluation_rows_uri(sweep, name)
    new = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    if is_file(uri):
        old = read_parquet(uri).to_pandas()
        ends = set(zip(new["segment"], new["step"], new["task"], strict=True))
        kept = [k not in ends for k in zip(old["segment"], old["step"], old["task"], strict=True)]
        new = pd.concat([old[kept], new], ignore_index=True)
    table = pa.Table.from_pandas(new, preserve_index=False).cast(METRIC_SCHEMA)
    write_parquet(uri, table)
    write_text(signatures_uri(uri), json.dumps(sigs, sort_keys=True))
    return uri


def _segment_metrics(sweep: str, plan: dict) -> pd.DataFrame:
    tables = [
        read_parquet(uri).select(list(METRIC_COLUMNS)).cast(METRIC_SCHEMA)
        for uri in (segment_rows_uri(sweep, s["id"]) for s in plan["segments"])
        if is_file(uri)
    ]
    if not tables:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    return pa.concat_tables(tables).to_pandas()


def failed_segments(sweep: str) -> set[str]:
    """Segments the sweep's scheduler marked failed (``tree_state.json``), if any."""
    uri = join(sweep, "tree_state.json")
    return set(json.loads(read_text(uri)).get("failed", [])) if is_file(uri) else set()


def collect(sweep: str) -> None:
    """Merge the per-segment rows into ``metrics.parquet`` and write ``trials.parquet``."""
    meta, plan = _read_json(sweep, "results.json"), _read_json(sweep, "plan.json")
    metrics = _segment_metrics(sweep, plan)
    trials = trials_table(plan, metrics, failed_segments(sweep), meta)
    write_parquet(
        join(sweep, "metrics.parquet"), pa.Table.from_pandas(metrics, preserve_index=False)
    )
    write_parquet(join(sweep, "trials.parquet"), pa.Table.from_pandas(trials, preserve_index=False))


@dataclass
class Results:
    """A sweep's results as read from storage."""

    path: str
    """The sweep dir or URI."""
    name: str
    tasks: dict[str, list[str]]
    """``{"high": [...], "low": [...]}`` from space.yaml."""
    metrics: pd.DataFrame
    trials: pd.DataFrame
    live: bool = False
    """Assembled from the per-segment rows (the sweep runs, or stopped before its end)."""
    signatures: dict[str, list[str]] = field(default_factory=dict)
    """Metric (``bleu``, ``chrf``) -> sacrebleu's signatures of its values (one, unless the
    segments were scored by different sacrebleu versions or settings)."""
    kind: str = "translation"
    """The space's task kind: translation, or lm (languages, measured in bits per byte)."""

    @property
    def finished(self) -> int:
        return int((self.trials["status"] == "finished").sum())

    @property
    def partial(self) -> bool:
        """Some trial is still to run or failed (a pruned trial has ended: the tree stopped it)."""
        ended = self.trials["status"].isin(["finished", "pruned"])
        return int(ended.sum()) < len(self.trials)

    def file(self, name: str) -> str:
        return join(self.path, name)


def _read_json(sweep: str, name: str) -> dict:
    uri = join(sweep, name)
    try:
        doc = json.loads(read_text(uri))
    except FileNotFoundError:
        raise UserError(
            f"{uri}: not found (is this a sweep dir written by ray_mtl.tune?)"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"{uri}: cannot read ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{uri}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _read_table(uri: str, columns: tuple[str, ...]) -> pd.DataFrame:
    if not is_file(uri):
        raise UserError(f"{uri}: not found (is this a sweep dir written by ray_mtl.tune?)")
    try:
        df = read_parquet(uri).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{uri}: cannot read Parquet ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{uri}: missing columns {missing}; found {list(df.columns)}")
    return df


def load_results(sweep: str | Path) -> Results:
    """Read a sweep (a dir or a storage URI): merged tables when the sweep has ended, else
    assembled from its per-segment rows. A missing dir, an empty sweep or another schema is a
    UserError naming the file."""
    sweep = str(Path(sweep).expanduser()) if "://" not in str(sweep) else str(sweep)
    if not is_dir(sweep):
        raise UserError(f"{sweep}: sweep dir not found")
    meta_uri = join(sweep, "results.json")
    if not is_file(meta_uri):
        raise UserError(
            f"{meta_uri}: not found (no results schema); this ray_mtl reads schema {SCHEMA}"
        )
    meta = _read_json(sweep, "results.json")
    if meta.get("schema") != SCHEMA:
        raise UserError(
            f"{meta_uri}: results written by schema {meta.get('schema')}, "
            f"this ray_mtl reads schema {SCHEMA}"
        )
    live = not is_file(join(sweep, "trials.parquet")) and is_file(join(sweep, "plan.json"))
    if live:
        plan = _read_json(sweep, "plan.json")
        metrics = _segment_metrics(sweep, plan)
        failed = failed_segments(sweep)
        trials = trials_table(plan, metrics, failed, meta)
    else:
        trials = _read_table(join(sweep, "trials.parquet"), TRIAL_COLUMNS)
        metrics = _read_table(join(sweep, "metrics.parquet"), METRIC_COLUMNS)
    scored = _evaluation_uris(sweep)
    if scored:
        tables = [read_parquet(u).select(list(METRIC_COLUMNS)).cast(METRIC_SCHEMA) for u in scored]
        metrics = pd.concat([metrics, pa.concat_tables(tables).to_pandas()], ignore_index=True)
    if trials.empty:
        raise UserError(f"{join(sweep, 'trials.parquet')}: no trials (empty sweep)")
    if metrics.empty:
        raise UserError(f"{join(sweep, 'metrics.parquet')}: no metrics yet (empty sweep)")
    space_uri = join(sweep, "space.yaml")
    space = load_yaml(space_uri) if is_file(space_uri) else {}
    space = space if isinstance(space, dict) else {}
    tasks = space.get("tasks")
    if not (isinstance(tasks, dict) and all(isinstance(tasks.get(g), list) for g in GROUPS)):
        raise UserError(f"{space_uri}: tasks: expected {{high: [...], low: [...]}}, got {tasks!r}")
    name = str(space.get("name") or meta.get("name") or meta.get("sweep") or Path(sweep).name)
    tasks = {g: [str(t) for t in tasks[g]] for g in GROUPS}
    trials = trials.assign(trial=trials["trial"].astype(str))
    segments = sorted(set(metrics["segment"].astype(str)))
    signatures = sweep_signatures([segment_rows_uri(sweep, seg) for seg in segments] + scored)
    kind = str(space.get("kind") or "translation")
    return Results(sweep, name, tasks, metrics, trials, live, signatures, kind)


def sweep_signatures(rows: list[str]) -> dict[str, list[str]]:
    """Every signature the BLEU and chrF values of these rows files were scored with, per
    metric."""
    found: dict[str, set[str]] = {}
    for uri in map(signatures_uri, rows):
        if is_file(uri):
            for metric, sig in json.loads(read_text(uri)).items():
                found.setdefault(metric, set()).add(sig)
    return {m: sorted(s) for m, s in sorted(found.items())}


def write_frontier(results: Results, sweep: str | Path, axes=None) -> dict:
    """Write ``frontier.json`` (at best and at final) and ``frontier.parquet`` (every point)."""
    from ray_mtl import frontier  # frontier reads this module's schema: imported here, not above

    doc, table = frontier.frontier_files(results, axes)
    write_text(join(str(sweep), "frontier.json"), json.dumps(doc, indent=2, sort_keys=True) + "\n")
    write_parquet(join(str(sweep), "frontier.parquet"), table)
    return doc
