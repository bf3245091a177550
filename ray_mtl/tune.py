"""Run a sweep: the planner's segment tree as Ray Tune trials, each a Ray Train run.

    python -m ray_mtl.tune --space tune_spaces/smoke.yaml              # embedded local Ray
    python -m ray_mtl.tune --space tune_spaces/paper_fr_ro.yaml --dry-run
    python -m ray_mtl.tune --space tune_spaces/paper_fr_ro.yaml --storage s3://bucket/ray_mtl
    python -m ray_mtl.tune --resume runs/smoke                          # after a crash

Ray Tune's side of a sweep. Each Tune trial drives a ``TorchTrainer`` (``ray_mtl.ray_train``)
whose workers train ready segments back to back and ask for more when done, so Ray Train's
start-up (~10 s a run on 2 cores) is paid about once per slot rather than once per segment. A
``Tree`` (``ray_mtl.scheduler``) in the named ``Dispatcher`` actor hands them out: trunks at once,
each branch the moment its parent reports the fork checkpoint (Ray's ``TuneReportCallback`` puts
the checkpoint's path in the result), each trial its share of the ready work. Results land under
``<storage>/<sweep>/`` (``ray_mtl.results``): ``metrics.parquet`` (long format),
``trials.parquet``, ``frontier.json`` and ``report/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import yaml
from ray import tune
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import Searcher
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_mtl import checkpoint, results
from ray_mtl.config import RunSettings, SpaceConfig, TrainConfig, check, from_dict, load, to_dict
from ray_mtl.errors import UserError, cli
from ray_mtl.plan import Plan, Segment, describe, naive, plan, segment_config
from ray_mtl.ray_train import RowsCallback, ray_trainer
from ray_mtl.scheduler import Tree
from ray_mtl.storage import (
    check_storage,
    ensure_writable_dir,
    filesystem,
    is_file,
    join,
    parent,
    ray_storage,
    read_text,
    remove_dir,
    remove_entries,
    remove_file,
    write_text,
)

# --------------------------------------------------------------------------------------------
# The dispatcher: the Tree in a named actor
# --------------------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class Dispatcher:
    """The sweep's ``Tree`` in a named actor: Tune's searcher (in the driver) and each trial's
    rank-0 worker ask it for segments. Every hand-out, fork and end is written to
    ``tree_state.json`` before it is answered, so a sweep resumed after a crash knows each
    segment it had handed out. Segments are answered as plain ``TrainConfig`` dicts."""

    def __init__(self, tree_json: str, space: dict, sweep: str) -> None:
        self.tree = Tree.from_json(tree_json)
        self.space = from_dict(SpaceConfig, space)
        self.sweep = sweep
        self._save()

    def _save(self) -> None:
        write_text(join(self.sweep, "tree_state.json"), self.tree.to_json())

    def _configs(self, segments: list[str] | None) -> dict[str, dict] | None:
        if segments is None:
            return None
        return {
            seg: to_dict(
                segment_config(
                    self.space, self.tree.segments[seg], self.sweep, self.tree.init_from(seg)
                )
            )
            for seg in segments
        }

    def suggest(self, trial_id: str) -> dict[str, dict] | None:
        out = self._configs(self.tree.suggest(trial_id))
        self._save()
        return out

    def more(self, trial_id: str) -> dict[str, dict] | None:
        out = self._configs(self.tree.more(trial_id))
        self._save()
        return out

    def chain(self, trial_id: str) -> dict[str, dict]:
        return self._configs(self.tree.chain(trial_id))

    def on_result(self, result: dict) -> None:
        # progress alone is not worth a write: it only balances the next hand-outs
        if self.tree.on_result(result):
            self._save()
        if result.get("checkpoint_path"):
            done = self.tree.collectable()
            self._save()  # marked deleted before deleting: a crash leaves a file, never a hole
            for uri in done:
                remove_dir(uri)

    def on_complete(self, trial_id: str, error: bool) -> None:
        self.tree.on_complete(trial_id, error)
        self._save()

    def judge(self, seg: str, step: int, ce: dict[str, float]) -> bool:
        """Whether a segment stops at a rung (at its end: none, but refinement may add a
        branch, which plan.json then lists); on storage before it is answered, so a resumed
        sweep keeps every decision."""
        known = len(self.tree.segments)
        stop = self.tree.judge(seg, step, ce)
        new = list(self.tree.segments.values())[known:]
        if new:
            uri = join(self.sweep, "plan.json")
            grown = Plan.from_dict(json.loads(read_text(uri)))
            grown.add_branches(new, self.space.tasks.low)
            write_text(uri, json.dumps(grown.to_dict(), indent=1))
        self._save()
        return stop

    def finished(self) -> bool:
        return self.tree.finished()

    def where(self) -> str:
        """The sweep's URI (a resumed sweep's own, wherever it was first written)."""
        return self.sweep

    def state(self) -> str:
        return self.tree.to_json()


def start_dispatcher(name: str, tree: Tree, space: SpaceConfig, sweep: str):
    # On the driver's node, as Ray Train's controller: a local state file is where --resume looks.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Dispatcher.options(name=name, scheduling_strategy=here).remote(
        tree.to_json(), to_dict(space), sweep
    )


# --------------------------------------------------------------------------------------------
# Tune's side: the searcher, the trial, the progress callback
# --------------------------------------------------------------------------------------------


RESUME_SLOTS = "RAY_MTL_RESUME_SLOTS"


class TreeSearcher(Searcher):
    """Tune's side of the ``Tree``: new trials, results and ends go to the dispatcher actor.

    Tune saves the tree with its experiment state (``save``); ``restore`` takes the trials
    Tune saved, gives each every segment the live state file says it was handed since, and
    makes segments handed to trials Tune never saved ready again.
    """

    def __init__(self, name: str, space: SpaceConfig, sweep: str, tree: Tree | None = None):
        # No metric: Tune would demand it of a trial that ends without a result (one started
        # ahead of a fork that others took).
        super().__init__()
        self.name, self.space, self.sweep = name, to_dict(space), sweep
        self.actor = start_dispatcher(name, tree, space, sweep) if tree else None

    def __getstate__(self) -> dict:  # Tune pickles this object; the actor is this run's
        return self.__dict__ | {"actor": None}

    def suggest(self, trial_id: str) -> dict | None:
        segments = ray.get(self.actor.suggest.remote(trial_id))
        if segments is not None:  # none yet: it starts ahead of a fork and waits for it
            run = {k: self.space[k] for k in ("resources", "max_failures")}
            return {"segments": segments, "run": run, "dispatcher": self.name}
        return Searcher.FINISHED if ray.get(self.actor.finished.remote()) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        keys = ("segment", "step", "checkpoint_path", "diverged", "pruned")
        ray.get(self.actor.on_result.remote({k: result.get(k) for k in keys}))

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        ray.get(self.actor.on_complete.remote(trial_id, error))

    def save(self, checkpoint_path: str) -> None:
        write_text(checkpoint_path, ray.get(self.actor.state.remote()))

    def restore(self, checkpoint_path: str) -> None:
        tree = Tree.from_json(read_text(checkpoint_path))
        state = join(self.sweep, "tree_state.json")
        if is_file(state):
            tree = tree.resumed(Tree.from_json(read_text(state)))
        # --max-concurrent given on resume (this object comes out of Tune's pickle, and from
        # `python -m` its class too: the environment is what reaches it).
        tree.slots = int(os.environ.get(RESUME_SLOTS) or 0) or tree.slots
        tree.adopt(checkpoints_on_storage(self.sweep))
        space = from_dict(SpaceConfig, self.space)
        self.actor = start_dispatcher(self.name, tree, space, self.sweep)


def checkpoints_on_storage(sweep: str) -> dict[str, str]:
    """Every whole checkpoint under ``<sweep>/segments`` (``"<segment>@<step>"`` -> path),
    read from the ``meta.json`` each one ends with."""
    fs, root = filesystem(join(sweep, "segments"))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return {}
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.base_name != checkpoint.META_FILE:
            continue
        d = info.path.rsplit("/", 1)[0]
        if fs.get_file_info(f"{d}/{checkpoint.STATE_FILE}").type != pafs.FileType.File:
            continue
        with fs.open_input_stream(info.path) as f:
            meta = json.loads(f.read())
        if "segment" in meta:
            found[f"{meta['segment']}@{meta['step']}"] = d
    return found


def _trial_name(trial) -> str:
    """A trial's name: the first segment it was given (its Train run's adds the trial id), or
    ``ahead-<trial id>`` for a trial started ahead of a fork."""
    return next(iter(trial.config["segments"]), f"ahead-{trial.trial_id}")


def run_trial(config: dict[str, Any]) -> None:
    """A Tune trial: its segments, and any more the dispatcher gives it, as one Ray Train run
    whose metrics flow to Tune."""
    began = time.time()
    cfgs = {seg: from_dict(TrainConfig, c) for seg, c in config["segments"].items()}
    sweep = ray.get(ray.get_actor(config["dispatcher"]).where.remote())
    fs, storage = ray_storage(join(sweep, "segments"))
    trial = tune.get_context().get_trial_id()
    trainer = ray_trainer(
        cfgs,
        # the trial id too: a trial lost in a driver crash never shares a run with a later one
        name=f"{next(iter(cfgs), 'ahead')}-{trial}",
        storage_path=storage,
        storage_filesystem=fs,
        # rows first: on storage before Tune records the checkpoint a resume starts after
        callbacks=(RowsCallback(results.segment_rows_uri(sweep)), TuneReportCallback()),
        dispatcher=(config["dispatcher"], trial),
        run=from_dict(RunSettings, config["run"]),
        began=began,
    )
    result = trainer.fit()
    if result.error:
        raise result.error


class TreeProgress(Callback):
    """One line of tree progress under Tune's table (segments and steps done of total), and
    ``timeline.json``: when each segment was ready (its fork's result arrived; trunks: at the
    start), started and ended (wall clock, s), on which node and in which trial. A segment starts
    when it is ready and its trial is free: started, or done with its previous segment."""

    def __init__(self, plan_: Plan, sweep: str) -> None:
        self.plan, self.sweep = plan_, sweep
        self.steps: dict[str, int] = {}
        self.done: set[str] = set()
        self.timeline: dict[str, dict[str, Any]] = {}
        self.free_at: dict[str, float] = {}  # trial id -> when it was last free
        now = time.time()
        self.ready = {i: now for i, s in plan_.segments.items() if s.parent is None}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.free_at[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result["segment"] not in self.plan.segments:  # a branch refinement added
            self.plan = Plan.from_dict(json.loads(read_text(join(self.sweep, "plan.json"))))
        seg = self.plan.segments[result["segment"]]
        self.steps[seg.id] = int(result["step"]) - seg.start_step
        if result.get("checkpoint_path"):
            for child in self.plan.children(seg.id):
                if child.start_step == int(result["step"]):
                    self.ready.setdefault(child.id, time.time())
        # timeline.json is written when a segment starts or ends, not at every result
        if seg.id not in self.timeline:
            ready = self.ready.get(seg.id, time.time())
            start = max(self.free_at.get(trial.trial_id, ready), ready)
            self.timeline[seg.id] = {"trial": str(trial), "ready": ready, "start": start}
            if "node_id" in result:
                self.timeline[seg.id]["node"] = result["node_id"]
            self._write()
        stopped = [k for k in ("diverged", "pruned") if result.get(k)]
        if (int(result["step"]) == seg.end_step or stopped) and seg.id not in self.done:
            self.done.add(seg.id)
            self.free_at[trial.trial_id] = self.timeline[seg.id]["end"] = time.time()
            for k in stopped:
                self.timeline[seg.id][k] = True
            self._write()
        self._print()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        for seg, t in self.timeline.items():
            if t["trial"] == str(trial) and seg not in self.done:
                t["failed"] = time.time()
        self._write()

    def _write(self) -> None:
        write_text(join(self.sweep, "timeline.json"), json.dumps(self.timeline, indent=1))

    def _print(self) -> None:
        done, total = sum(self.steps.values()), self.plan.tree_steps
        print(
            f"tree: {len(self.done)}/{len(self.plan.segments)} segments, "
            f"{done:,}/{total:,} steps ({100 * done / max(total, 1):.0f}%)",
            flush=True,
        )


class _NoColumns(dict):
    """Tune's table shows every config key when given no parameter columns, and a trial's config
    is whole TrainConfigs: its name (first segment) and the segment column say enough."""

    def __bool__(self) -> bool:
        return True


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def check_tasks(space: SpaceConfig, source: str) -> None:
    """Every task of the space is a shipped one or a custom task (before anything starts)."""
    from ray_mtl.data.catalog import TATOEBA_LANGS

    if space.kind == "lm":  # a task is a language
        known = [*TATOEBA_LANGS, *(t.name for t in space.data.custom_languages)]
        custom = "custom_languages"
    else:
        known = [f"eng-{lang}" for lang in TATOEBA_LANGS] + [
            t.name for t in space.data.custom_tasks
        ]
        custom = "custom_tasks"
    for group in ("high", "low"):
        for i, task in enumerate(getattr(space.tasks, group)):
            if task not in known:
                raise UserError(
                    f"{source}: tasks.{group}[{i}]: unknown task {task!r} for kind "
                    f"{space.kind!r} (expected one of {', '.join(known)}, or a data.{custom} entry)"
                )


def sweep_uri_of(space: SpaceConfig) -> str:
    """``<storage>/<name>``: a URI as given, a local dir made absolute (and proved writable)."""
    if "://" in space.storage:
        return join(space.storage, space.name)
    root = ensure_writable_dir(space.storage, "storage path").resolve()
    return str(root / space.name)


def _connect_ray(dashboard: bool) -> None:
    # Tune's compact table (segment, step, lr, tokens/s) rather than every reported metric.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
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


class SweepLock:
    """``<sweep>/lock``: the host and PID of the process running the sweep. A second sweep in
    the same dir is refused while that process lives (``--overwrite`` too); a lock left by a
    process that died on this host is taken over."""

    def __init__(self, sweep: str) -> None:
        self.uri = join(sweep, "lock")

    def __enter__(self) -> SweepLock:
        if is_file(self.uri):
            owner = json.loads(read_text(self.uri))
            if owner.get("host") != socket.gethostname() or _alive(owner.get("pid")):
                raise UserError(
                    f"{self.uri}: a sweep is running in this dir (host {owner.get('host')}, "
                    f"pid {owner.get('pid')}, since {owner.get('started')}); expected no live "
                    "sweep there (if that process is gone, delete the lock file)"
                )
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.ctime()}
        write_text(self.uri, json.dumps(me))
        return self

    def __exit__(self, *exc) -> None:
        remove_file(self.uri)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def run_sweep(
    space: SpaceConfig,
    sweep: str | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dashboard: bool = False,
    no_sharing: bool = False,
) -> str:
    """Run (or resume) the sweep of ``space`` in ``sweep`` (default ``<storage>/<name>``);
    returns its URI.

    A new sweep refuses a dir that already holds one (its segments' checkpoints would be taken up
    as if resumed) unless ``overwrite`` deletes it first. ``no_sharing`` runs every trial from
    scratch (the naive grid), for benchmarks. Ctrl-C stops it (KeyboardInterrupt) after saying
    how to resume.
    """
    sweep = sweep or sweep_uri_of(space)
    check_storage(sweep)
    with SweepLock(sweep):
        return _run_sweep(space, sweep, resume, overwrite, dashboard, no_sharing)


def _run_sweep(space, sweep, resume, overwrite, dashboard, no_sharing) -> str:
    from ray_mtl.train import validate

    tree = naive(space) if no_sharing else plan(space)
    if not resume and is_file(join(sweep, "plan.json")):
        if not overwrite:
            raise UserError(
                f"{sweep}: a sweep is already there; --resume {sweep} continues it, "
                "--overwrite starts it again"
            )
        remove_entries(sweep, results.SWEEP_ENTRIES)
    state = join(sweep, "tree_state.json")
    if resume and is_file(state):  # the branches refinement added are the sweep's too
        saved = json.loads(read_text(state))
        added = [s for s in saved["segments"] if s["id"] in saved.get("refined", [])]
        tree.add_branches([from_dict(Segment, s) for s in added], space.tasks.low)
    first = next(iter(tree.segments.values()))
    prepared = validate(segment_config(space, first, sweep))
    write_text(join(sweep, "space.yaml"), yaml.safe_dump(to_dict(space), sort_keys=False))
    write_text(join(sweep, "plan.json"), json.dumps(tree.to_dict(), indent=1))
    results.write_meta(sweep, space.name, prepared.manifest_hash)
    print(describe(tree).splitlines()[-1], flush=True)

    _connect_ray(dashboard)
    # One dispatcher per sweep name in a Ray cluster; not named by its dir, so that a sweep
    # moved elsewhere resumes with the name its saved trials know.
    name = f"ray_mtl:{space.name}"
    with contextlib.suppress(ValueError):
        ray.get_actor(name)
        raise UserError(f"{sweep}: a sweep named {space.name!r} is already running on this Ray")
    # Ctrl-C is ours: Tune's own handler would print its restore hint and return as if done.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    trainable = tune.with_resources(run_trial, {"CPU": 0.01})
    fs, tune_dir = ray_storage(sweep)
    slots = max_concurrent(space)
    if resume:
        os.environ[RESUME_SLOTS] = str(space.max_concurrent)
        tuner = tune.Tuner.restore(
            f"{tune_dir}/tune", trainable, resume_errored=True, storage_filesystem=fs
        )
    else:
        collect = space.keep_checkpoints == "needed"
        p, r = space.prune, space.refine
        prune = {"rule": p.rule, "shrink": p.shrink, "eta": p.eta} if p else None
        refine = (
            {"budget": r.budget_steps, "methods": r.methods, "between": r.new_pretrain_steps}
            | to_dict(space.tasks)
            if r
            else None
        )
        scheduler = Tree(tree.segments, slots, sweep, collect, prune=prune, refine=refine)
        searcher = TreeSearcher(name, space, sweep, scheduler)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # The Tree holds trials to its slots (so --max-concurrent holds on resume too).
                search_alg=searcher,
                num_samples=-1,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
                # Segments follow one another in the same trial process: its imports stay.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=tune_dir,
                storage_filesystem=fs,
                callbacks=[TreeProgress(tree, sweep)],
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
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished segments are kept; continue with\n"
            f"  python -m ray_mtl.tune --resume {sweep}",
            file=sys.stderr,
            flush=True,
        )
        raise
    finally:  # the dispatcher's name is free for another sweep in this Ray session
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name))
    results.collect(sweep)
    errors = [r.error for r in grid if r.error]
    if errors:
        print(f"{len(errors)} trial(s) failed; first: {errors[0]}", file=sys.stderr)
    return sweep


@cli
def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m ray_mtl.tune", description=doc)
    p.add_argument("--space", help="a search space YAML (tune_spaces/*.yaml)")
    p.add_argument("--storage", help="override the space's storage path (dir, NFS, s3://, gs://)")
    p.add_argument("--dry-run", action="store_true", help="print the segment tree and exit")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="resume the sweep in this dir or URI")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier sweep of this name")
    p.add_argument("--no-report", action="store_true", help="skip the frontier report")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (localhost)")
    args = p.parse_args(argv)
    if bool(args.space) == bool(args.resume):
        raise UserError("give exactly one of --space FILE or --resume SWEEP_DIR")
    sweep = None
    if args.resume:
        sweep = args.resume if "://" in args.resume else str(Path(args.resume).resolve())
        space_file = join(sweep, "space.yaml")
        if not is_file(space_file):
            raise UserError(
                f"{space_file}: not found (is this a sweep dir written by ray_mtl.tune?)"
            )
        space = load(SpaceConfig, space_file)
        space.storage = parent(sweep)
        written = results.read_meta(sweep).get("sweep", sweep)
        if written.partition("?")[0] != sweep.partition("?")[0]:
            raise UserError(
                f"{sweep}: this sweep was written at {written}, and Ray Tune's saved state names "
                "that path; expected it there: move it back (or resume it where it was written)"
            )
    else:
        space = load(SpaceConfig, args.space)
    check_tasks(space, args.space or join(args.resume, "space.yaml"))
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
    if space.tracking.mlflow:
        from ray_mtl.tracking import check_mlflow

        check_mlflow(space.tracking.mlflow, space.storage)
    sweep = run_sweep(
        space, sweep, resume=bool(args.resume), overwrite=args.overwrite, dashboard=args.dashboard
    )
    print(f"results: {sweep}")
    res = results.load_results(sweep)
    if not args.no_report:
        from ray_mtl import report

        results.write_frontier(res, sweep)
        print(f"report: {report.build_report(sweep)}")
    if space.tracking.tensorboard:
        from ray_mtl.tracking import write_tensorboard

        print(f"tensorboard: {write_tensorboard(res)}")
    if space.tracking.mlflow:
        from ray_mtl.tracking import mlflow_uri, write_mlflow

        print(f"mlflow: {write_mlflow(res, mlflow_uri(sweep, space.tracking.mlflow))}")
    counts = res.trials["status"].value_counts().to_dict()
    if counts.get("diverged"):
        print(f"{counts['diverged']} trial(s) diverged (non-finite loss): see trials.parquet")
    if counts.get("pruned"):
        print(f"{counts['pruned']} trial(s) pruned (beaten at a rung): see trials.parquet")
    if set(counts) - {"finished", "diverged", "pruned"}:
        shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "finished")
        print(
            f"error: not every trial finished ({shown}); fix the cause, then "
            f"python -m ray_mtl.tune --resume {sweep}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
