"""Ray Train's side of a training run: the per-worker entry, the rows callback, the trainer.

    trainer = ray_trainer({"pt-s0": cfg}, name="pt-s0-abc", storage_path=..., callbacks=[...])
    result = trainer.fit()

``train_loop_per_worker`` runs ``ray_mtl.train.train_chain`` as one DDP rank: the segments it was
given and, in a sweep, those the dispatcher actor (``ray_mtl.tune.Dispatcher``) hands its trial
next. Checkpoints go to Ray Train; ``RowsCallback`` writes each segment's rows in the controller.
The loop itself knows nothing of Ray.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import UserCallback

from ray_mtl import checkpoint
from ray_mtl.config import RunSettings, TrainConfig, from_dict, to_dict
from ray_mtl.results import SegmentRows
from ray_mtl.scheduler import POLL_S, WAIT_S
from ray_mtl.train import Worker, _from_rank0, train_chain

# Read by Ray Train in the process that calls fit() and passed on to its controller and workers;
# a value already in the environment wins. Ray Train's controller polls its workers every 2 s by
# default, and a finished run waits for two polls: 4 s of a segment's ~14 s of fixed cost on
# this 2-core machine (measured). The preemption watcher (one more process per run; only spot
# instances need it) and Ray Train's own metrics cost another ~0.5-1 s.
RAY_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def _configs(plain: dict[str, dict]) -> dict[str, TrainConfig]:
    return {seg: from_dict(TrainConfig, c) for seg, c in plain.items()}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One DDP rank of ``config["segments"]`` (id -> plain TrainConfig), or, with
    ``config["dispatcher"]`` (actor name, Tune trial id), of the segments that dispatcher hands
    this trial (see ``ray_mtl.scheduler.Tree``; none yet for a trial started ahead of a fork)."""
    ctx = ray.train.get_context()
    worker = Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    chain, more, judge = _configs(config["segments"]), None, None
    if config.get("dispatcher"):
        name, trial = config["dispatcher"]
        actor = ray.get_actor(name)
        # After a restart: the segments it had been given since it began.
        chain = _configs(_from_rank0(worker, lambda: ray.get(actor.chain.remote(trial))))

        def more() -> dict[str, TrainConfig]:
            # None while a fork still to come has a segment for this trial: one of its own on
            # its way to the dispatcher (through Ray Train's controller and Tune), or another
            # trial's.
            for _ in range(int(WAIT_S / POLL_S)):
                plain = _from_rank0(worker, lambda: ray.get(actor.more.remote(trial)))
                if plain is not None:
                    return _configs(plain)
                time.sleep(POLL_S)
            return {}

        def judge(seg: str, step: int, ce: dict[str, float]) -> bool:
            return _from_rank0(worker, lambda: ray.get(actor.judge.remote(seg, step, ce)))

    # The first report carries how long the run took to start: from the Tune trial's start (or
    # the trainer's) to this rank's loop (Ray Train's controller, workers, process group).
    started = {"train_start_s": time.time() - config["began"]} if config.get("began") else {}
    torch.set_num_threads(config["threads"])
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = checkpoint.read_dir(d)

    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        nonlocal started
        metrics = metrics | started | {"node_id": node_id}  # node: the sweep's timeline.json
        started = {}
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save_dir(d, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    train_chain(chain, worker, report, resume, more, judge)


class RowsCallback(UserCallback):
    """Writes each report's rows to ``template.format(segment=...)`` (``results.SegmentRows``).

    It runs in the Train controller after each report and is listed before Tune's report
    callback, so a segment's rows are on storage before Tune records the checkpoint that a
    resumed run starts after: a driver crash between the two loses no row.
    """

    def __init__(self, template: str) -> None:
        self.rows = SegmentRows(template)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.rows.add(metrics[0])


def ray_trainer(
    segments: dict[str, TrainConfig],
    name: str,
    storage_path: str,
    callbacks: tuple = (),
    storage_filesystem: Any = None,
    dispatcher: tuple[str, str] | None = None,
    run: RunSettings | None = None,
    began: float | None = None,
):
    """A ``TorchTrainer`` running ``segments`` (id -> config) one after another on the same
    workers, then any more that ``dispatcher`` (actor name, Tune trial id) hands it. Its
    workers and restarts are ``run``'s (default: the first segment's), which every segment
    must share. ``began`` (``time.time()``; default: now) is when its caller started it: the
    first report's ``train_start_s`` is counted from there."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)

    run = run or next(iter(segments.values()))
    res = run.resources
    if any(c.resources != res for c in segments.values()):
        raise ValueError("the segments of one Train run must ask for the same resources")
    per_worker = {"CPU": res.cpus_per_worker} | ({"GPU": 1} if res.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "segments": {seg: to_dict(c) for seg, c in segments.items()},
            "dispatcher": dispatcher,
            "threads": max(1, int(res.cpus_per_worker)),
            "began": began or time.time(),
        },
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )


def fit_one(cfg: TrainConfig) -> str:
    """``python -m ray_mtl.train`` on Ray: ``cfg`` on its workers, rows and checkpoints under
    ``cfg.run_dir``; returns what it wrote, as lines to print."""
    ray.init(include_dashboard=False, configure_logging=False)
    trainer = ray_trainer(
        {"run": cfg},
        name="train",
        storage_path=cfg.run_dir,
        callbacks=(RowsCallback(os.path.join(cfg.run_dir, "metrics.parquet")),),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    rows = os.path.join(cfg.run_dir, "metrics.parquet")
    return f"run dir: {cfg.run_dir}\nmetrics: {rows}\ncheckpoint: {result.checkpoint.path}"
