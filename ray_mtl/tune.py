"""Run a sweep: the planner's segment tree as Ray Tune trials, each a Ray Train run.

    python -m ray_mtl.tune --space tune_spaces/smoke.yaml              # embedded local Ray
    python -m ray_mtl.tune --space tune_spaces/paper_fr_ro.yaml --dry-run
    python -m ray_mtl.tune --space tune_spaces/paper_fr_ro.yaml --storage s3://bucket/ray_mtl
    python -m ray_mtl.tune --resume runs/smoke                          # after a crash

Each Tune trial drives a ``TorchTrainer`` that trains one segment, or several ready ones back to
back on the same workers (a chain): Ray Train's start-up, ~10 s a run on 2 cores, is then paid
once per chain. A ``TreeSearcher`` hands out the trunks first and releases each branch the moment
its parent reports the fork checkpoint (Ray's ``TuneReportCallback`` puts the checkpoint's path
in the result), so branches run while their trunk goes on. Results land under
``<storage>/<sweep>/``: ``metrics.parquet`` (long format), ``trials.parquet``, ``frontier.json``
and ``report/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import ray_mtl
from ray_mtl.config import SpaceConfig, TrainConfig, check, from_dict, load, to_dict
from ray_mtl.errors import UserError, cli
from ray_mtl.frontier import SCHEMA
from ray_mtl.plan import Plan, Segment, describe, naive, plan
from ray_mtl.storage import ensure_writable_dir, is_file, ray_storage, remove_tree, write_text


def segment_config(space: SpaceConfig, seg: Segment, sweep_uri: str) -> TrainConfig:
    """The TrainConfig of one segment (``init_from`` is filled in when its fork exists)."""
    return TrainConfig(
        phases=seg.phases,
        data=space.data,
        model=space.model,
        optim=space.optim,
        eval=space.eval,
        resources=space.resources,
        batch_tokens=space.batch_tokens,
        pack_length=space.pack_length,
        compile=space.compile,
        seed=seg.seed,
        eval_steps=seg.eval_steps,
        fork_steps=seg.fork_steps,
        checkpoint_every=space.checkpoint_every,
        max_failures=space.max_failures,
        run_dir=f"{sweep_uri}/segments/{seg.id}",
    )


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


# --------------------------------------------------------------------------------------------
# The searcher that walks the tree
# --------------------------------------------------------------------------------------------


def chain_name(segments: list[str]) -> str:
    """A Tune trial's name (and its Train run's): its first segment, ``+n`` for n more."""
    return segments[0] + (f"+{len(segments) - 1}" if len(segments) > 1 else "")


def _searcher_class():
    from ray.tune.search import Searcher

    class TreeSearcher(Searcher):
        """Hands out segments as Tune trials: trunks at once, branches when their fork exists.

        A trial takes ready segments in order (those others fork from first) until it holds its
        share of the work known now: the ready segments' steps plus what running trials have
        left, over ``slots`` (trials at once). Chains stay balanced, and a cluster with a slot
        free for each ready segment runs each alone; ``slots=None`` never chains.

        State is a few dicts of strings, saved and restored with the experiment so that
        ``Tuner.restore`` continues the tree instead of starting it again.
        """

        def __init__(
            self, segments: dict[str, dict], scheme: str = "", slots: int | None = None
        ) -> None:
            super().__init__(metric="step", mode="max")
            # id -> {"parent", "start_step", "steps", "train": plain TrainConfig}
            self.segments = segments
            self.scheme = scheme  # "s3://" etc.: Checkpoint.path drops it
            self.slots = slots
            self.ready = [i for i, s in segments.items() if s["parent"] is None]
            self.issued: dict[str, list[str]] = {}  # Tune trial id -> its segments, in order
            self.running: set[str] = set()  # Tune trial ids
            self.progress: dict[str, int] = {}  # segment -> steps done
            self.failed: set[str] = set()
            self.forks: dict[str, str] = {}  # "<segment>@<step>" -> checkpoint URI

        def suggest(self, trial_id: str) -> dict | None:
            if self.ready:
                chain = self._take()
                self.issued[trial_id] = chain
                self.running.add(trial_id)
                train = {}
                for seg in chain:
                    spec = self.segments[seg]
                    train[seg] = dict(spec["train"])
                    if spec["parent"] is not None:
                        fork = f"{spec['parent']}@{spec['start_step']}"
                        train[seg]["init_from"] = self.forks[fork]
                return {"segments": train}
            issued = sum(len(c) for c in self.issued.values())
            if issued + len(self.unreachable()) >= len(self.segments):
                return Searcher.FINISHED
            return None

        def _left(self, seg: str) -> int:
            return self.segments[seg]["steps"] - self.progress.get(seg, 0)

        def _take(self) -> list[str]:
            parents = {s["parent"] for s in self.segments.values()}
            order = sorted(self.ready, key=lambda i: i not in parents)  # stable
            take = order[:1]
            if self.slots:
                running = sum(self._left(i) for t in self.running for i in self.issued[t])
                share = (sum(self._left(i) for i in order) + running) / self.slots
                while len(take) < len(order) and sum(self._left(i) for i in take) < share:
                    take.append(order[len(take)])
            for i in take:
                self.ready.remove(i)
            return take

        def unreachable(self) -> set[str]:
            """Segments that can never start because an ancestor failed."""
            issued = {i for c in self.issued.values() for i in c}
            out: set[str] = set()
            changed = True
            while changed:
                changed = False
                for i, s in self.segments.items():
                    bad = s["parent"] in self.failed or s["parent"] in out
                    if bad and i not in out and i not in issued:
                        out.add(i)
                        changed = True
            return out

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            seg = result["segment"]
            self.progress[seg] = int(result["step"]) - self.segments[seg]["start_step"]
            path = result.get("checkpoint_path")
            if not path:
                return
            step = int(result["step"])
            key = f"{seg}@{step}"
            if key in self.forks:
                return
            self.forks[key] = self.scheme + path if "://" not in path else path
            for i, s in self.segments.items():
                if s["parent"] == seg and s["start_step"] == step:
                    self.ready.append(i)

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            self.running.discard(trial_id)
            chain = self.issued.get(trial_id, [])
            if error:  # the segment that failed and those after it in the chain
                self.failed |= {i for i in chain if self._left(i) > 0}
            else:  # a rerun (Tuner.restore with resume_errored) that got through
                self.failed -= set(chain)

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.__dict__, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as f:
                self.__dict__.update(pickle.load(f))

    return TreeSearcher


def _trial_name(trial) -> str:
    return chain_name(list(trial.config["segments"]))


def run_chain(config: dict[str, Any]) -> None:
    """A Tune trial: its segments, in order, as one Ray Train run whose metrics flow to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_mtl.train import ray_trainer, rows_callback

    cfgs = {seg: from_dict(TrainConfig, c) for seg, c in config["segments"].items()}
    # run_dir is <sweep>/segments/<segment>: the Train run sits beside its segments' rows
    fs, segments_dir = ray_storage(next(iter(cfgs.values())).run_dir.rsplit("/", 1)[0])
    rows = {seg: f"{cfg.run_dir}/metrics.parquet" for seg, cfg in cfgs.items()}
    trainer = ray_trainer(
        cfgs,
        name=chain_name(list(cfgs)),
        storage_path=segments_dir,
        storage_filesystem=fs,
        callbacks=(TuneReportCallback(), rows_callback(rows)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error


def _tree_progress_callback(plan_: Plan, sweep_uri: str):
    from ray.tune import Callback

    total = plan_.tree_steps

    class TreeProgress(Callback):
        """One line of tree progress under Tune's table (segments and steps done of total), and
        ``timeline.json``: when each segment started and ended (wall clock, s) and on which node.
        A chained segment starts when the one before it in its trial ends."""

        def __init__(self) -> None:
            self.steps: dict[str, int] = {}
            self.done: set[str] = set()
            self.timeline: dict[str, dict[str, float]] = {}

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._mark(next(iter(trial.config["segments"])), "start")

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            seg = plan_.segments[result["segment"]]
            self.steps[seg.id] = int(result["step"]) - seg.start_step
            if "node_id" in result:
                self.timeline.setdefault(seg.id, {})["node"] = result["node_id"]
            if int(result["step"]) == seg.end_step and seg.id not in self.done:
                self.done.add(seg.id)
                self._mark(seg.id, "end")
                chain = list(trial.config["segments"])
                if chain[-1] != seg.id:
                    self._mark(chain[chain.index(seg.id) + 1], "start")
            self._print()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            for seg in trial.config["segments"]:
                if seg not in self.done:
                    self._mark(seg, "failed")
                    break

        def _mark(self, seg: str, event: str) -> None:
            self.timeline.setdefault(seg, {})[event] = time.time()
            write_text(f"{sweep_uri}/timeline.json", json.dumps(self.timeline, indent=1))

        def _print(self) -> None:
            done = sum(self.steps.values())
            print(
                f"tree: {len(self.done)}/{len(plan_.segments)} segments, "
                f"{done:,}/{total:,} steps ({100 * done / max(total, 1):.0f}%)",
                flush=True,
            )

    return TreeProgress()


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def collect_results(space: SpaceConfig, plan_: Plan, sweep_uri: str, manifest_hash: str) -> None:
    """Merge per-segment rows into ``metrics.parquet`` and write ``trials.parquet``."""
    import pyarrow as pa

    from ray_mtl.storage import read_parquet, write_parquet

    tables, ends = [], {}
    for seg in plan_.segments.values():
        uri = f"{sweep_uri}/segments/{seg.id}/metrics.parquet"
        if not is_file(uri):
            continue
        t = read_parquet(uri)
        tables.append(t)
        ends[seg.id] = max(t.column("step").to_pylist(), default=0)
    metrics = pa.concat_tables(tables) if tables else None
    if metrics is not None:
        write_parquet(f"{sweep_uri}/metrics.parquet", metrics)
    version = code_version()
    rows = []
    for t in plan_.trials:
        finished = all(ends.get(p.segment, -1) >= p.to_step for p in t.lineage)
        started = any(p.segment in ends for p in t.lineage)
        lineage = [
            dict(segment=p.segment, from_step=p.from_step, to_step=p.to_step) for p in t.lineage
        ]
        rows.append(
            dict(
                trial=t.id,
                method=t.method,
                L=t.L,
                F=t.F,
                w=math.nan if t.w is None else t.w,
                temperature=math.nan if t.temperature is None else t.temperature,
                max_epochs=math.nan if t.max_epochs is None else t.max_epochs,
                seed=t.seed,
                lineage=json.dumps(lineage),
                final_step=t.final_step,
                status="finished" if finished else ("running" if started else "pending"),
                manifest_hash=manifest_hash,
                code_version=version,
            )
        )
    write_parquet(f"{sweep_uri}/trials.parquet", pa.Table.from_pylist(rows))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def check_tasks(space: SpaceConfig, source: str) -> None:
    """Every task of the space is a shipped one or a custom task (before anything starts)."""
    from ray_mtl.data.catalog import TATOEBA_LANGS

    known = [f"eng-{lang}" for lang in TATOEBA_LANGS] + [t.name for t in space.data.custom_tasks]
    for group in ("high", "low"):
        for i, task in enumerate(getattr(space.tasks, group)):
            if task not in known:
                raise UserError(
                    f"{source}: tasks.{group}[{i}]: unknown task {task!r} "
                    f"(expected one of {', '.join(known)}, or a data.custom_tasks entry)"
                )


def sweep_uri_of(space: SpaceConfig) -> str:
    if "://" in space.storage:
        return f"{space.storage.rstrip('/')}/{space.name}"
    root = ensure_writable_dir(space.storage, "storage path").resolve()
    return str(root / space.name)


def _connect_ray(dashboard: bool) -> None:
    # Tune's compact table (segment, step, lr, tokens/s) rather than every reported metric.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    if ray.is_initialized():
        return
    # RAY_ADDRESS (set by `ray job submit`) joins the cluster; otherwise an embedded local Ray,
    # its dashboard (if any) on localhost only. Workers' logs stay in Ray's session dir.
    ray.init(
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
    )


def max_concurrent(space: SpaceConfig) -> int | None:
    """Trials (segments or chains of them) to run at once: the space's setting, else what the
    cluster fits now.

    Each trial holds its workers plus 0.01 CPU for the Tune trial that drives it; starting
    more than fit makes worker groups time out and retry. On GPUs with an autoscaler the cluster
    may have none yet: then Tune's pending trials are what makes it scale up (None: no cap).
    """
    import ray

    if space.max_concurrent:
        return space.max_concurrent
    res, total = space.resources, ray.cluster_resources()
    if res.use_gpu:
        gpus = int(total.get("GPU", 0) // res.num_workers)
        return gpus or None
    fits = int(total.get("CPU", 0) // (res.num_workers * res.cpus_per_worker + 0.01))
    if fits < 1:
        raise UserError(
            f"resources: a segment needs {res.num_workers} x {res.cpus_per_worker} CPUs "
            f"but the cluster has {total.get('CPU', 0):g}"
        )
    return fits


def run_sweep(
    space: SpaceConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dashboard: bool = False,
    no_sharing: bool = False,
) -> str:
    """Run (or resume) the sweep of ``space``; returns its results URI.

    A new sweep refuses a dir that already holds one (its segments' checkpoints would be taken up
    as if resumed) unless ``overwrite`` deletes it first. ``no_sharing`` runs every trial from
    scratch (the naive grid), for benchmarks.
    """
    from ray import tune

    from ray_mtl.train import validate

    tree = naive(space) if no_sharing else plan(space)
    sweep_uri = sweep_uri_of(space)
    if not resume and is_file(f"{sweep_uri}/plan.json"):
        if not overwrite:
            raise UserError(
                f"{sweep_uri}: a sweep is already there; --resume {sweep_uri} continues it, "
                "--overwrite starts it again"
            )
        remove_tree(sweep_uri)
    prepared = validate(segment_config(space, next(iter(tree.segments.values())), sweep_uri))
    write_text(f"{sweep_uri}/space.yaml", yaml.safe_dump(to_dict(space), sort_keys=False))
    write_text(f"{sweep_uri}/plan.json", json.dumps(tree.to_dict(), indent=1))
    write_text(
        f"{sweep_uri}/results.json",
        json.dumps({"schema": SCHEMA, "name": space.name, "manifest_hash": prepared.manifest_hash}),
    )
    print(describe(tree).splitlines()[-1], flush=True)

    _connect_ray(dashboard)
    scheme = space.storage.split("://")[0] + "://" if "://" in space.storage else ""
    segments = {
        s.id: {
            "parent": s.parent,
            "start_step": s.start_step,
            "steps": s.steps,
            "train": to_dict(segment_config(space, s, sweep_uri)),
        }
        for s in tree.segments.values()
    }
    trainable = tune.with_resources(run_chain, {"CPU": 0.01})
    fs, tune_dir = ray_storage(sweep_uri)
    if resume:
        tuner = tune.Tuner.restore(
            f"{tune_dir}/tune", trainable, resume_errored=True, storage_filesystem=fs
        )
    else:
        slots = max_concurrent(space)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher_class()(segments, scheme, slots),
                num_samples=-1,
                max_concurrent_trials=slots,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
                # Segments follow one another in the same trial process: its imports stay.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=tune_dir,
                storage_filesystem=fs,
                callbacks=[_tree_progress_callback(tree, sweep_uri)],
                progress_reporter=tune.CLIReporter(
                    metric_columns=["segment", "step", "lr", "tokens_per_s"],
                    parameter_columns=[],
                    max_report_frequency=30,
                ),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    collect_results(space, tree, sweep_uri, prepared.manifest_hash)
    errors = [r.error for r in grid if r.error]
    if errors:
        print(f"{len(errors)} trial(s) failed; first: {errors[0]}", file=sys.stderr)
    return sweep_uri


@cli
def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m ray_mtl.tune", description=doc)
    p.add_argument("--space", help="a search space YAML (tune_spaces/*.yaml)")
    p.add_argument("--storage", help="override the space's storage path (dir, NFS, s3://, gs://)")
    p.add_argument("--dry-run", action="store_true", help="print the segment tree and exit")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="resume the sweep in this dir")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier sweep of this name")
    p.add_argument("--no-report", action="store_true", help="skip the frontier report")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (localhost)")
    args = p.parse_args(argv)
    if bool(args.space) == bool(args.resume):
        raise UserError("give exactly one of --space FILE or --resume SWEEP_DIR")
    if args.resume:
        sweep = args.resume.rstrip("/")
        space_file = f"{sweep}/space.yaml"
        if not is_file(space_file):
            raise UserError(
                f"{space_file}: not found (is this a sweep dir written by ray_mtl.tune?)"
            )
        space = load(SpaceConfig, space_file)
        space.storage = sweep.rsplit("/", 1)[0] if "/" in sweep else "."
    else:
        space = load(SpaceConfig, args.space)
    check_tasks(space, args.space or f"{args.resume}/space.yaml")
    if args.storage:
        space.storage = args.storage
    if args.max_concurrent is not None:
        check(
            args.max_concurrent >= 1, "--max-concurrent", "a positive integer", args.max_concurrent
        )
        space.max_concurrent = args.max_concurrent
    if args.dry_run:
        print(describe(plan(space)))
        return 0
    sweep_uri = run_sweep(
        space, resume=bool(args.resume), overwrite=args.overwrite, dashboard=args.dashboard
    )
    print(f"results: {sweep_uri}")
    if not args.no_report:
        from ray_mtl import frontier, report

        results = frontier.load_results(sweep_uri)
        frontier.write_frontier(results, sweep_uri)
        print(f"report: {report.build_report(sweep_uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
