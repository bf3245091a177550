"""Run a sweep: the planner's segment tree as Ray Tune trials, each a Ray Train run.

    python -m ray_mtl.tune --space tune_spaces/smoke.yaml              # embedded local Ray
    python -m ray_mtl.tune --space tune_spaces/paper_fr_ro.yaml --dry-run
    python -m ray_mtl.tune --space tune_spaces/paper_fr_ro.yaml --storage s3://bucket/ray_mtl
    python -m ray_mtl.tune --resume runs/smoke                          # after a crash

Each Tune trial drives a ``TorchTrainer`` whose workers train ready segments back to back and ask
for more when done, so Ray Train's start-up (~10 s a run on 2 cores) is paid about once per slot
rather than once per segment. A ``Tree`` in a named actor hands them out: trunks at once, each
branch the moment its parent reports the fork checkpoint (Ray's ``TuneReportCallback`` puts the
checkpoint's path in the result), each trial its share of the ready work. Results land under
``<storage>/<sweep>/``: ``metrics.parquet`` (long format), ``trials.parquet``, ``frontier.json``
and ``report/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
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
from ray_mtl.storage import (
    ensure_writable_dir,
    is_file,
    ray_storage,
    read_text,
    remove_tree,
    write_text,
)


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


class Tree:
    """Which segments each Tune trial trains: trunks at once, branches once their fork exists.

    A trial takes ready segments in order (those others fork from first) until it holds its
    share of the work known now: the ready segments' steps plus what running trials have left,
    over ``slots`` (trials at once; ``None``: one segment at a time). When it has trained them
    it asks for ``more`` under the same rule, so a trial goes on while there is work for it and
    Ray Train starts about once per slot rather than once per segment.

    The state is plain data: ``to_json``/``from_json`` write and read it whole.
    """

    def __init__(self, segments: dict[str, dict], scheme: str = "", slots: int | None = None):
        # id -> {"parent", "start_step", "steps", "train": plain TrainConfig}
        self.segments = segments
        self.scheme = scheme  # "s3://" etc.: Checkpoint.path drops it
        self.slots = slots
        self.ready = [i for i, s in segments.items() if s["parent"] is None]
        self.issued: dict[str, list[str]] = {}  # Tune trial id -> its segments, in order
        self.running: list[str] = []  # Tune trial ids
        self.progress: dict[str, int] = {}  # segment -> steps done
        self.failed: list[str] = []
        self.forks: dict[str, str] = {}  # "<segment>@<step>" -> checkpoint URI

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Tree:
        tree = cls({})
        tree.__dict__.update(json.loads(text))
        return tree

    def suggest(self, trial_id: str) -> dict[str, dict] | None:
        """A new trial's first segments (id -> plain TrainConfig), or None if none is ready."""
        if not self.ready:
            return None
        self.running.append(trial_id)
        return self.more(trial_id)

    def more(self, trial_id: str) -> dict[str, dict] | None:
        """Segments for a trial that has trained those it was given (empty: none ready, it may
        end; None: forks of its own are still on their way here, ask again)."""
        mine = self.issued.get(trial_id, [])
        for i in mine:  # trained, though their last results may not have arrived yet
            self.progress[i] = self.segments[i]["steps"]
        if any(
            self.segments[i]["parent"] in mine and self._fork(i) not in self.forks
            for i in self.segments
        ):
            return None
        if not self.ready:
            return {}
        take = self._take()
        self.issued.setdefault(trial_id, []).extend(take)
        return {i: self.config(i) for i in take}

    def chain(self, trial_id: str) -> dict[str, dict]:
        """All segments issued to a trial so far, in order (a restarted trial goes on in them)."""
        return {i: self.config(i) for i in self.issued.get(trial_id, [])}

    def config(self, seg: str) -> dict:
        train = dict(self.segments[seg]["train"])
        if self.segments[seg]["parent"] is not None:
            train["init_from"] = self.forks[self._fork(seg)]
        return train

    def _fork(self, seg: str) -> str:
        """The key in ``forks`` of the checkpoint ``seg`` starts from."""
        spec = self.segments[seg]
        return f"{spec['parent']}@{spec['start_step']}"

    def finished(self) -> bool:
        """Every segment issued, or unreachable behind a failure."""
        issued = sum(len(c) for c in self.issued.values())
        return issued + len(self.unreachable()) >= len(self.segments)

    def _left(self, seg: str) -> int:
        return self.segments[seg]["steps"] - self.progress.get(seg, 0)

    def _take(self) -> list[str]:
        parents = {s["parent"] for s in self.segments.values()}
        order = sorted(self.ready, key=lambda i: i not in parents)  # stable
        take = order[:1]
        if self.slots:
            running = sum(self._left(i) for t in self.running for i in self.issued.get(t, []))
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

    def on_result(self, result: dict) -> bool:
        """Records progress; True when the result is a new fork (its branches are ready)."""
        seg, step = result["segment"], int(result["step"])
        self.progress[seg] = step - self.segments[seg]["start_step"]
        path = result.get("checkpoint_path")
        key = f"{seg}@{step}"
        if not path or key in self.forks:
            return False
        self.forks[key] = self.scheme + path if "://" not in path else path
        self.ready += [i for i in self.segments if self._fork(i) == key]
        return True

    def resumed(self, live: Tree) -> Tree:
        """The tree to resume with, from this one (saved by Tune with its trials) and ``live``
        (written at every change, so possibly newer): each trial Tune saved keeps every segment
        ``live`` had handed it; those handed to trials Tune never saved are ready again."""
        tree = Tree.from_json(live.to_json())
        lost = [i for t, c in live.issued.items() if t not in self.issued for i in c]
        tree.issued = {t: c for t, c in live.issued.items() if t in self.issued}
        tree.running = [t for t in live.running if t in self.issued]
        tree.ready = lost + [i for i in live.ready if i not in lost]
        tree.failed = [i for i in live.failed if i not in lost]
        for i in lost:
            tree.progress.pop(i, None)
        return tree

    def on_complete(self, trial_id: str, error: bool) -> None:
        if trial_id in self.running:
            self.running.remove(trial_id)
        chain = self.issued.get(trial_id, [])
        if error:  # the segment that failed and those after it in the trial
            self.failed += [i for i in chain if self._left(i) > 0 and i not in self.failed]
        else:  # a rerun (Tuner.restore with resume_errored) that got through
            self.failed = [i for i in self.failed if i not in chain]


def dispatcher(name: str, state_uri: str, tree: Tree):
    """A named actor holding the sweep's ``Tree``: Tune's searcher (in the driver) and each
    trial's rank-0 worker ask it for segments through ``call(method, *args)``. Every change is
    written to ``state_uri`` before it is answered, so a sweep resumed after a crash knows each
    segment it had handed out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class Dispatcher:
        def __init__(self, tree_json: str) -> None:
            self.tree = Tree.from_json(tree_json)

        def call(self, method: str, *args):
            out = getattr(self.tree, method)(*args)
            # progress alone is not worth a write: it only balances the next hand-outs
            if method in ("suggest", "more", "on_complete") or (method == "on_result" and out):
                write_text(state_uri, self.tree.to_json())
            return out

    state = tree.to_json()
    write_text(state_uri, state)
    # On the driver's node, as Ray Train's controller: a local state file is where --resume looks.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Dispatcher.options(name=name, scheduling_strategy=here).remote(state)


def _searcher_class():
    import ray
    from ray.tune.search import Searcher

    class TreeSearcher(Searcher):
        """Tune's side of the ``Tree``: new trials, results and ends go to the dispatcher actor.

        Tune saves the tree with its experiment state (``save``); ``restore`` takes the trials
        Tune saved, gives each every segment the live state file says it was handed since, and
        makes segments handed to trials Tune never saved ready again.
        """

        def __init__(self, name: str, state_uri: str, tree: Tree | None = None) -> None:
            super().__init__(metric="step", mode="max")
            self.name, self.state_uri = name, state_uri
            self.actor = dispatcher(name, state_uri, tree) if tree else None

        def __getstate__(self) -> dict:  # Tune pickles this object; the actor is this run's
            return self.__dict__ | {"actor": None}

        def _call(self, method: str, *args):
            return ray.get(self.actor.call.remote(method, *args))

        def suggest(self, trial_id: str) -> dict | None:
            segments = self._call("suggest", trial_id)
            if segments:
                return {"segments": segments, "dispatcher": self.name}
            return Searcher.FINISHED if self._call("finished") else None

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            keys = ("segment", "step", "checkpoint_path")
            self._call("on_result", {k: result.get(k) for k in keys})

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            self._call("on_complete", trial_id, error)

        def save(self, checkpoint_path: str) -> None:
            write_text(checkpoint_path, self._call("to_json"))

        def restore(self, checkpoint_path: str) -> None:
            tree = Tree.from_json(read_text(checkpoint_path))
            if is_file(self.state_uri):
                tree = tree.resumed(Tree.from_json(read_text(self.state_uri)))
            self.actor = dispatcher(self.name, self.state_uri, tree)

    return TreeSearcher


def _trial_name(trial) -> str:
    """A trial's name: the first segment it was given (its Train run's adds the trial id)."""
    return next(iter(trial.config["segments"]))


def run_trial(config: dict[str, Any]) -> None:
    """A Tune trial: its segments, and any more the dispatcher gives it, as one Ray Train run
    whose metrics flow to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_mtl.train import ray_trainer, rows_callback

    cfgs = {seg: from_dict(TrainConfig, c) for seg, c in config["segments"].items()}
    # run_dir is <sweep>/segments/<segment>: the Train run sits beside its segments' rows
    segments_dir = next(iter(cfgs.values())).run_dir.rsplit("/", 1)[0]
    fs, storage = ray_storage(segments_dir)
    trial = tune.get_context().get_trial_id()
    trainer = ray_trainer(
        cfgs,
        # the trial id too: a trial lost in a driver crash never shares a run with a later one
        name=f"{next(iter(cfgs))}-{trial}",
        storage_path=storage,
        storage_filesystem=fs,
        callbacks=(
            TuneReportCallback(),
            rows_callback(segments_dir + "/{segment}/metrics.parquet"),
        ),
        dispatcher=(config["dispatcher"], trial),
    )
    result = trainer.fit()
    if result.error:
        raise result.error


def _tree_progress_callback(plan_: Plan, sweep_uri: str):
    from ray.tune import Callback

    total = plan_.tree_steps

    class TreeProgress(Callback):
        """One line of tree progress under Tune's table (segments and steps done of total), and
        ``timeline.json``: when each segment started and ended (wall clock, s), on which node
        and in which trial. A segment starts when its trial does or its trial's previous one
        ends."""

        def __init__(self) -> None:
            self.steps: dict[str, int] = {}
            self.done: set[str] = set()
            self.timeline: dict[str, dict[str, Any]] = {}
            self.free_at: dict[str, float] = {}  # trial id -> when it was last free

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self.free_at[trial.trial_id] = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            seg = plan_.segments[result["segment"]]
            self.steps[seg.id] = int(result["step"]) - seg.start_step
            # timeline.json is written when a segment starts or ends, not at every result
            if seg.id not in self.timeline:
                start = self.free_at.get(trial.trial_id, time.time())
                self.timeline[seg.id] = {"trial": str(trial), "start": start}
                if "node_id" in result:
                    self.timeline[seg.id]["node"] = result["node_id"]
                self._write()
            if int(result["step"]) == seg.end_step and seg.id not in self.done:
                self.done.add(seg.id)
                self.free_at[trial.trial_id] = self.timeline[seg.id]["end"] = time.time()
                self._write()
            self._print()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            for seg, t in self.timeline.items():
                if t["trial"] == str(trial) and seg not in self.done:
                    t["failed"] = time.time()
            self._write()

        def _write(self) -> None:
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
    """Tune trials to run at once (each trains segments one after another): the space's
    setting, else what the cluster fits now.

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


class _NoColumns(dict):
    """Tune's table shows every config key when given no parameter columns, and a trial's config
    is whole TrainConfigs: its name (first segment) and the segment column say enough."""

    def __bool__(self) -> bool:
        return True


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
    import ray
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
    trainable = tune.with_resources(run_trial, {"CPU": 0.01})
    fs, tune_dir = ray_storage(sweep_uri)
    name, state_uri = f"ray_mtl:{sweep_uri}", f"{sweep_uri}/tree_state.json"
    if resume:
        tuner = tune.Tuner.restore(
            f"{tune_dir}/tune", trainable, resume_errored=True, storage_filesystem=fs
        )
    else:
        slots = max_concurrent(space)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher_class()(name, state_uri, Tree(segments, scheme, slots)),
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
                    parameter_columns=_NoColumns(),
                    max_report_frequency=30,
                ),
                verbose=1,
            ),
        )
    try:
        grid = tuner.fit()
    finally:  # the dispatcher's name is free for another sweep of this dir in this Ray session
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name))
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
