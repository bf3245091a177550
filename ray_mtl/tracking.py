"""A sweep's trials in TensorBoard (and MLflow): one run per trial, over its whole lineage.

    python -m ray_mtl.tracking runs/smoke             # -> runs/smoke/tensorboard/<trial>/
    python -m ray_mtl.tracking runs/smoke --mlflow http://127.0.0.1:5000   # and to MLflow
    tensorboard --logdir runs/smoke/tensorboard --host 127.0.0.1

``python -m ray_mtl.tune`` writes it at a sweep's end (a space's ``tracking.tensorboard``, on by
default); this entry point writes it for a sweep that is still running, too. Tune's own event files
(``tune/``) hold one Tune trial each, and a Tune trial trains several segments of different
trials one after another, so their curves mix trials. Here each run is a trial (named by its id:
method, L, w, seed), from step 0 through every segment of its lineage: per-task train loss,
dev and test CE, BLEU and chrF, target and realized rates, epochs, lr and tokens/s, written with
tensorboardX's ``SummaryWriter``. Each trial's run is written whole (a temp dir, then a rename), so
writing it again replaces only its own files. A space's ``tracking.mlflow`` (or ``--mlflow``) also
logs each trial as one MLflow run (params: its config; metrics: the same curves by step) through
MLflow's client, into an experiment named after the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ray_mtl.errors import UserError, cli
from ray_mtl.frontier import trial_curves
from ray_mtl.results import CONFIG_COLUMNS, Results, load_results
from ray_mtl.storage import atomic_dir, join, remove_dir, write_bytes

TRIAL_TAG = "ray_mtl.trial"
"""The MLflow tag naming a run's trial (how writing again finds the trial's earlier run)."""


def tag(split: str, task: str, metric: str) -> str:
    """``dev/eng-ron/ce``; a metric of the whole run (task ``*``): ``train/lr``."""
    return f"{split}/{metric}" if task == "*" else f"{split}/{task}/{metric}"


def _write_run(path: Path, config: dict, curve) -> None:
    from tensorboardX import SummaryWriter  # a Ray Tune dependency: imported where it is used

    with SummaryWriter(logdir=str(path), flush_secs=3600) as w:
        w.add_text("trial", "\n".join(f"- {k}: {v}" for k, v in config.items()), 0)
        for r in curve.itertuples(False):
            if np.isfinite(r.value):
                w.add_scalar(tag(r.split, r.task, r.metric), r.value, int(r.step))


def trial_runs(results: Results):
    """Per trial: (id, its config, its curve over its lineage from step 0)."""
    curves = trial_curves(results)
    config = results.trials.set_index("trial")
    columns = [c for c in CONFIG_COLUMNS if c in config and c != "trial"]
    for trial, curve in curves.groupby("trial", sort=True):
        # NaN: a knob of another method (T for two-phase, say)
        c = {k: v for k, v in config.loc[trial, columns].items() if v == v}
        c["lineage"] = json.loads(config.loc[trial, "lineage"])
        yield trial, c, curve[np.isfinite(curve["value"])]


def write_tensorboard(results: Results, out: str | None = None) -> str:
    """One TensorBoard run per trial under ``out`` (default ``<sweep>/tensorboard``), a dir or a
    storage URI; returns ``out``."""
    out = out or results.file("tensorboard")
    for trial, c, curve in trial_runs(results):
        if "://" not in out:
            with atomic_dir(Path(out) / trial) as tmp:
                _write_run(tmp, c, curve)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            _write_run(Path(tmp), c, curve)
            remove_dir(join(out, trial))  # this trial's earlier run (event files are named anew)
            for f in sorted(Path(tmp).iterdir()):
                write_bytes(join(out, trial, f.name), f.read_bytes())
    return out


def _local(uri: str) -> str | None:
    """The local path of a dir or ``file://`` URI; None for remote storage."""
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    return uri.removeprefix("file://").partition("?")[0] if uri.startswith("file://") else None


def mlflow_uri(sweep: str, setting: bool | str) -> str:
    """The tracking URI of a space's ``tracking.mlflow`` (true: ``<sweep>/mlruns``)."""
    return (Path(_local(sweep)) / "mlruns").as_uri() if setting is True else str(setting)


def check_mlflow(setting: bool | str, storage: str) -> None:
    """Before a sweep starts: mlflow installed, a local store only beside a local sweep, and a
    tracking server that answers."""
    if setting is True and _local(storage) is None:
        raise UserError(
            f"tracking.mlflow: true keeps a local store in the sweep dir, and storage {storage} "
            "is a URI; expected a tracking server's URI (http://host:5000)"
        )
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise UserError(
            "tracking.mlflow: needs the mlflow package (pip install -e '.[tracking]')"
        ) from None
    uri = str(setting)
    if not uri.startswith(("http://", "https://")):
        return
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update(quick)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # MLflow's own errors and requests' all land here
        why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(
            f"tracking.mlflow: cannot reach the tracking server {uri} ({why})"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_mlflow(results: Results, uri: str) -> str:
    """One MLflow run per trial (named by its id; params: its config; metrics: its curve by step)
    in the experiment named after the sweep; a trial's earlier run is deleted. Returns ``uri``."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    if uri.startswith("file:"):  # MLflow 3 keeps its file store, but only when asked to
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(results.name)
    exp_id = exp.experiment_id if exp else client.create_experiment(results.name)
    earlier = {
        r.data.tags.get(TRIAL_TAG): r.info.run_id
        for r in client.search_runs([exp_id], max_results=50_000)
    }
    now = int(time.time() * 1000)
    for trial, c, curve in trial_runs(results):
        if trial in earlier:
            client.delete_run(earlier[trial])
        run = client.create_run(exp_id, run_name=trial, tags={TRIAL_TAG: trial})
        params = [Param(k, json.dumps(v) if k == "lineage" else str(v)) for k, v in c.items()]
        metrics = [
            Metric(tag(r.split, r.task, r.metric), float(r.value), now, int(r.step))
            for r in curve.itertuples(False)
        ]
        for i in range(0, max(len(metrics), 1), 1000):  # MLflow's cap per batch
            batch = metrics[i : i + 1000]
            client.log_batch(run.info.run_id, metrics=batch, params=params if i == 0 else [])
        client.set_terminated(run.info.run_id)
    return uri


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ray_mtl.tracking", description=__doc__.split("\n")[0]
    )
    p.add_argument("sweep_dir", help="a sweep dir or URI written by ray_mtl.tune")
    p.add_argument("--out", help="output dir (default: SWEEP_DIR/tensorboard)")
    p.add_argument("--mlflow", metavar="URI", help="also to MLflow at this tracking URI")
    args = p.parse_args(argv)
    res = load_results(args.sweep_dir)
    if args.mlflow:
        check_mlflow(args.mlflow, args.sweep_dir)
    print(write_tensorboard(res, args.out))
    if args.mlflow:
        print(write_mlflow(res, args.mlflow))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
