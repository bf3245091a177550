"""A sweep's trials in TensorBoard: one run per trial of the tree, over its whole lineage.

    python -m ray_mtl.tracking runs/smoke             # -> runs/smoke/tensorboard/<trial>/
    tensorboard --logdir runs/smoke/tensorboard --host 127.0.0.1

``python -m ray_mtl.tune`` writes it at a sweep's end (a space's ``tracking.tensorboard``, on by
default); this entry point writes it for a sweep that is still running, too. Tune's own event files
(``tune/``) hold one Tune trial each, and a Tune trial trains several segments of different
trials one after another, so their curves mix trials. Here each run is a trial (named by its id:
method, L, w, seed), from step 0 through every segment of its lineage: per-task train loss,
dev and test CE, BLEU and chrF, target and realized rates, epochs, lr and tokens/s, written with
tensorboardX's ``SummaryWriter``. Each trial's run is written whole (a temp dir, then a rename), so
writing it again replaces only its own files.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from ray_mtl.errors import cli
from ray_mtl.frontier import trial_curves
from ray_mtl.results import CONFIG_COLUMNS, Results, load_results
from ray_mtl.storage import atomic_dir, join, remove_dir, write_bytes


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


def write_tensorboard(results: Results, out: str | None = None) -> str:
    """One TensorBoard run per trial under ``out`` (default ``<sweep>/tensorboard``), a dir or a
    storage URI; returns ``out``."""
    out = out or results.file("tensorboard")
    curves = trial_curves(results)
    config = results.trials.set_index("trial")
    columns = [c for c in CONFIG_COLUMNS if c in config and c != "trial"]
    for trial, curve in curves.groupby("trial", sort=True):
        c = {
            k: v for k, v in config.loc[trial, columns].items() if v == v
        }  # NaN: not this method's
        c["lineage"] = json.loads(config.loc[trial, "lineage"])
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


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ray_mtl.tracking", description=__doc__.split("\n")[0]
    )
    p.add_argument("sweep_dir", help="a sweep dir or URI written by ray_mtl.tune")
    p.add_argument("--out", help="output dir (default: SWEEP_DIR/tensorboard)")
    args = p.parse_args(argv)
    print(write_tensorboard(load_results(args.sweep_dir), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
