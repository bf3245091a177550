"""Training runs (segments): the loop, on Ray Train workers or as a plain function.

    python -m ray_mtl.train --config run.yaml [--num-workers 2] [--init-from CKPT] [--no-ray]

``train_loop_per_worker(config)`` is the whole loop, in one place: phases with optimizer/LR
resets, the task-mixture sampler, DDP (gloo on CPU, nccl + bf16 autocast on GPU), evaluation
with per-task best tracking, and checkpoints at fork steps. Ray Train's ``TorchTrainer`` runs it
on N workers, one segment after another as a sweep hands them out (Ray Train's start-up is then
paid once for many); ``run(cfg)`` runs it in this process with world size 1 and no Ray
at all (how the GPU path is checked on a machine that has torch but not Ray).

Global steps continue across forks: a branch from its trunk's checkpoint at step L starts at L,
restores the trunk's sampler and RNG state, and then follows its first phase (reset or not), so a
branch is step for step the run that would have gone on from L.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ray_mtl import data as data_lib
from ray_mtl.config import TrainConfig, check, from_dict, load, to_dict
from ray_mtl.errors import UserError, cli
from ray_mtl.evaluate import autocast, evaluate_task
from ray_mtl.mixture import MixtureSampler, rates
from ray_mtl.model import Transformer, token_losses
from ray_mtl.schedule import Schedule
from ray_mtl.storage import atomic_write_bytes, atomic_write_json, filesystem

STATE_FILE = "state.pt"
META_FILE = "meta.json"

# report(metrics, state) sends metrics (and, from rank 0, a checkpoint's state) to wherever the
# run is recorded: Ray Train's report, or files under run_dir when running without Ray.
Report = Callable[[dict[str, Any], dict[str, Any] | None], None]


@dataclass
class Worker:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint_dir(directory: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint (``state.pt`` + ``meta.json``) so that it appears whole or not at all."""
    buf = io.BytesIO()
    torch.save(state, buf)
    directory = Path(directory)
    atomic_write_bytes(directory / STATE_FILE, buf.getvalue())
    keys = ("segment", "step", "model", "vocab_size", "manifest_hash")
    meta = {k: state[k] for k in keys if k in state}
    atomic_write_json(directory / META_FILE, meta)


def load_checkpoint(uri: str, cfg: TrainConfig, vocab_size: int) -> dict[str, Any]:
    """Load a checkpoint dir (local path or storage URI) with ``weights_only=True``.

    The model it holds must match ``cfg.model`` and the vocabulary, or the error says how not.
    """
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
            blob = f.read()
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{uri}: no checkpoint there ({STATE_FILE} not readable: {e})") from None
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        first = (str(e).splitlines() or [""])[0]  # torch's messages run to several lines
        raise UserError(f"{uri}: corrupt checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or "model_state" not in state:
        raise UserError(f"{uri}: not a ray_mtl checkpoint (no model_state)")
    theirs, ours = state.get("model"), to_dict(cfg.model)
    if theirs != ours or state.get("vocab_size") != vocab_size:
        diff = sorted(k for k in ours if (theirs or {}).get(k) != ours[k])
        if state.get("vocab_size") != vocab_size:
            diff.append(f"vocab_size ({state.get('vocab_size')} vs {vocab_size})")
        raise UserError(f"{uri}: checkpoint is for another model config (differs in {diff})")
    return state


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    worker: Worker,
    report: Report,
    resume: dict | None = None,
    prepared: data_lib.Prepared | None = None,
) -> dict:
    """Run ``cfg`` on this worker. ``resume`` is the state of this same run (fault recovery);
    ``prepared`` is ``cfg.data`` already prepared (segments of a chain share it).

    Returns the last metrics reported.
    """
    torch.manual_seed(cfg.seed)
    prepared = prepared or data_lib.prepare(cfg.data, verbose=False)
    tasks = prepared.tasks
    vocab = prepared.vocab_size
    on_gpu = worker.device.type == "cuda"

    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 matmuls outside autocast
        # cuDNN's attention is slow on our short, padded sequences: on an H200 (base preset,
        # 64k-token batches, eager) it ran 434k tok/s against 914k with the efficient kernel.
        # Compiled, it measured the other way round (797k with cuDNN, 417k without).
        torch.backends.cuda.enable_cudnn_sdp(cfg.compile)
    model = Transformer(cfg.model, vocab).to(worker.device)
    raw_model = model  # evaluation, decoding and checkpoints use the plain module
    if worker.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[worker.device.index] if on_gpu else None
        )
    losses = token_losses
    if cfg.compile:
        # Packed batches have one shape; bucketed ones change shape every step, so compile for
        # dynamic shapes once instead of recompiling per shape.
        model = torch.compile(model, dynamic=not cfg.pack_length)
        # Fused with the float upcast: never materialises float32 logits.
        losses = torch.compile(token_losses, dynamic=not cfg.pack_length)

    def new_optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            raw_model.parameters(),
            lr=cfg.optim.lr,
            betas=tuple(cfg.optim.betas),
            weight_decay=cfg.optim.weight_decay,
            fused=on_gpu,
        )

    sizes = {t: prepared.size(t) for t in tasks}
    shards = {t: prepared.shard(t, "train") for t in tasks}
    sampler = MixtureSampler(
        {t: (s.column("src"), s.column("tgt")) for t, s in shards.items()},
        rates=rates(sizes, cfg.phases[0].mixture),
        batch_tokens=cfg.batch_tokens,
        seed=cfg.seed,
        rank=worker.rank,
        world_size=worker.world_size,
        pack_length=cfg.pack_length,
    )

    # Where this run starts: fresh, from a fork checkpoint of another segment, or from its own
    # latest checkpoint after a fault (then the schedule is the segment's own, from its start).
    start = resume or (load_checkpoint(cfg.init_from, cfg, vocab) if cfg.init_from else None)
    start_step = 0 if start is None else int(start["step"])
    since_reset = 0 if start is None else int(start["steps_since_reset"])
    schedule = Schedule(cfg.phases, start_step=start_step, steps_since_reset_at_start=since_reset)
    if resume is not None:
        schedule.load_state_dict(resume["schedule"])
    optimizer = new_optimizer()
    best: dict[str, dict[str, Any]] = {}
    best_weights: dict[int, dict[str, torch.Tensor]] = {}
    if start is not None:
        raw_model.load_state_dict(start["model_state"])
        optimizer.load_state_dict(start["optimizer"])  # replaced below if the phase resets
        sampler.load_state_dict(start["sampler"])
        torch.set_rng_state(start["rng"])
    if resume is not None:
        best = resume["best"]
        best_weights = {int(k): v for k, v in resume["best_weights"].items()}

    eval_at = set(range(start_step + 1, schedule.end_step + 1))
    eval_at = {s for s in eval_at if s % cfg.eval.every == 0}
    eval_at |= {
        s for s in [*cfg.eval_steps, *cfg.fork_steps] if start_step < s <= schedule.end_step
    }
    eval_at.add(schedule.end_step)
    ckpt_at = {s for s in cfg.fork_steps if start_step < s <= schedule.end_step}
    if cfg.checkpoint_every:
        ckpt_at |= {s for s in eval_at if s % cfg.checkpoint_every == 0}
    ckpt_at.add(schedule.end_step)

    mixed_precision = autocast(worker.device)
    task_index = {t: i for i, t in enumerate(tasks)}
    loss_sum = torch.zeros(len(tasks), device=worker.device)
    loss_tokens = torch.zeros(len(tasks), device=worker.device)
    tokens_seen, t0 = 0, time.perf_counter()
    metrics: dict[str, Any] = {}
    phase = -1

    for step in range(start_step, schedule.end_step):
        if schedule.phase_at(step) != phase:
            phase = schedule.phase_at(step)
            sampler.set_rates(rates(sizes, cfg.phases[phase].mixture))
        if schedule.resets_at(step):
            optimizer = new_optimizer()
        lr = schedule.lr(step, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr

        batch = sampler.next_batch()
        # Counted on the host and copied from pinned memory: nothing in a step waits for the
        # GPU, so the sampler builds the next batch while this one runs.
        tokens_seen += int((batch.src != data_lib.PAD).sum()) + batch.n_tokens
        batch = batch.to(worker.device)
        # Normalise by the tokens of the whole global batch so that N workers take exactly the
        # step that one worker would take on the same examples (DDP averages over ranks).
        n_global: torch.Tensor | int = max(batch.n_tokens, 1)
        if worker.world_size > 1:
            n_global = torch.tensor(float(batch.n_tokens), device=worker.device)
            dist.all_reduce(n_global)
            n_global = n_global.clamp(min=1)
        with mixed_precision:
            logits = model(batch.src, batch.tgt_in, batch.src_seg, batch.tgt_seg)
        per_token = losses(logits, batch.tgt_out, cfg.optim.label_smoothing)
        loss = per_token.sum() * worker.world_size / n_global
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

        task_ids = batch.task_ids.flatten()
        loss_sum.index_add_(0, task_ids, per_token.detach().flatten())
        loss_tokens.index_add_(0, task_ids, (batch.tgt_out != data_lib.PAD).flatten().float())

        done = step + 1
        if done not in eval_at:
            continue
        if worker.world_size > 1:
            dist.all_reduce(loss_sum)
            dist.all_reduce(loss_tokens)
        if on_gpu:
            torch.cuda.synchronize(worker.device)  # time the steps, not just their launches
        elapsed = time.perf_counter() - t0
        metrics = {
            "step": done,
            "lr": lr,
            "phase": phase,
            "tokens_per_s": tokens_seen * worker.world_size / max(elapsed, 1e-9),
        }
        for t, acc in sampler.accounting().items():
            for k, v in acc.items():
                metrics[f"train/{t}/{k}"] = float(v)
            i = task_index[t]
            if loss_tokens[i] > 0:
                metrics[f"train/{t}/loss"] = float(loss_sum[i] / loss_tokens[i])
        loss_sum.zero_()
        loss_tokens.zero_()
        if worker.is_main:
            metrics.update(_evaluate(cfg, raw_model, prepared, "dev", worker.device))
            for t in tasks:
                ce = metrics[f"dev/{t}/ce"]
                if t not in best or ce < best[t]["ce"]:
                    best[t] = {"ce": ce, "step": done}
                    best_weights[done] = {
                        k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()
                    }
            keep = {b["step"] for b in best.values()}
            best_weights = {s: w for s, w in best_weights.items() if s in keep}
            if done == schedule.end_step and cfg.eval.test_at_end:
                metrics.update(
                    _test_best(cfg, raw_model, prepared, best, best_weights, worker.device)
                )
            _print_progress(metrics, tasks, schedule.end_step)
        state = None
        if done in ckpt_at and worker.is_main:
            state = {
                "step": done,
                "steps_since_reset": schedule.steps_since_reset(step) + 1,
                "schedule": schedule.state_dict(),
                "model": to_dict(cfg.model),
                "vocab_size": vocab,
                "manifest_hash": prepared.manifest_hash,
                "model_state": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sampler": sampler.state_dict(),
                "rng": torch.get_rng_state(),
                "best": best,
                "best_weights": {str(k): v for k, v in best_weights.items()},
            }
        report(metrics, state)
        tokens_seen, t0 = 0, time.perf_counter()
    return metrics


def _evaluate(cfg, model, prepared, split, device, tasks=None) -> dict[str, float]:
    """``split/task/metric`` of each task (``evaluate_task`` sets eval mode and autocast)."""
    out: dict[str, float] = {}
    for t in tasks or prepared.tasks:
        res = evaluate_task(
            model,
            prepared.shard(t, split),
            prepared.decode,
            eval_pairs=cfg.eval.pairs,
            bleu_pairs=cfg.eval.bleu_pairs,
            batch_tokens=cfg.batch_tokens,
            beam_size=cfg.eval.beam_size,
            device=device,
        )
        for k, v in res.items():
            out[f"{split}/{t}/{k}"] = v
    return out


def _test_best(cfg, model, prepared, best, best_weights, device) -> dict[str, Any]:
    """Per-task early stopping: each task's test metrics come from its best dev checkpoint."""
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, Any] = {}
    for t in prepared.tasks:
        model.load_state_dict(best_weights[best[t]["step"]])
        out |= _evaluate(cfg, model, prepared, "test", device, tasks=[t])
        out[f"test/{t}/best_step"] = best[t]["step"]
    model.load_state_dict(final)
    return out


def _print_progress(metrics: dict[str, Any], tasks: list[str], end: int) -> None:
    parts = [f"step {metrics['step']}/{end}", f"lr {metrics['lr']:.2e}"]
    for t in tasks:
        ce = metrics.get(f"dev/{t}/ce")
        bleu = metrics.get(f"dev/{t}/bleu")
        parts.append(f"{t} ce {ce:.3f}" + (f" bleu {bleu:.1f}" if bleu is not None else ""))
    parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
    print(" | ".join(parts), flush=True)


# --------------------------------------------------------------------------------------------
# Results as long-format rows (what metrics.parquet holds)
# --------------------------------------------------------------------------------------------


def metric_rows(segment: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat reported metrics -> rows (segment, step, task, split, metric, value).

    ``split/task/metric`` keys become per-task rows; ``lr`` and ``tokens_per_s`` become run-level
    rows with task ``*``; strings (sacrebleu signatures) are not rows.
    """
    step = int(metrics["step"])
    rows = []
    for key, value in metrics.items():
        if isinstance(value, str | bool) or value is None:
            continue
        parts = key.split("/")
        if len(parts) == 3:
            split, task, metric = parts
        elif key in ("lr", "tokens_per_s"):
            split, task, metric = "train", "*", key
        else:
            continue
        rows.append(
            dict(
                segment=segment,
                step=step,
                task=task,
                split=split,
                metric=metric,
                value=float(value),
            )
        )
    return rows


def signatures(metrics: dict[str, Any]) -> dict[str, str]:
    """The sacrebleu signatures among reported metrics (one per metric kind is enough)."""
    return {
        key.rsplit("/", 1)[-1]: v
        for key, v in metrics.items()
        if isinstance(v, str) and key.endswith("_signature")
    }


# --------------------------------------------------------------------------------------------
# Running it: Ray Train workers, or one plain process
# --------------------------------------------------------------------------------------------


def validate(cfg: TrainConfig) -> data_lib.Prepared:
    """Everything that can be checked before workers start: data, mixtures, init checkpoint."""
    prepared = data_lib.prepare(cfg.data)
    sizes = {t: prepared.size(t) for t in prepared.tasks}
    for i, phase in enumerate(cfg.phases):
        try:
            rates(sizes, phase.mixture)
        except UserError as e:
            raise UserError(f"phases[{i}].mixture: {e}") from None
    if cfg.init_from:
        load_checkpoint(cfg.init_from, cfg, prepared.vocab_size)
    return prepared


def segment_finished(cfg: TrainConfig, state: dict[str, Any]) -> bool:
    """Whether a checkpoint ``state`` of segment ``cfg`` is its last (every segment keeps one)."""
    schedule = Schedule(cfg.phases)
    schedule.load_state_dict(state["schedule"])
    return int(state["step"]) == schedule.end_step


def train_chain(
    chain: dict[str, TrainConfig],
    worker: Worker,
    report: Report,
    resume: dict | None = None,
    more: Callable[[], dict[str, TrainConfig]] | None = None,
) -> None:
    """Train the segments of ``chain`` (id -> config) in order on this worker, then those that
    ``more()`` gives while it gives any. Each report's metrics and checkpoint state name their
    segment (``"segment"``); segments with the same data config share it, prepared once.

    ``resume`` is the latest checkpoint state of this run (fault recovery): its segment goes on
    from it, or, if it is that segment's last, the next one starts; those before it are done.
    """
    todo = list(chain)
    if resume is not None:
        todo = todo[todo.index(resume["segment"]) :]
        if segment_finished(chain[todo[0]], resume):
            todo, resume = todo[1:], None
    prepared: dict[str, data_lib.Prepared] = {}
    while todo:
        for seg in todo:
            cfg = chain[seg]

            def tagged(metrics: dict[str, Any], state: dict | None, seg: str = seg) -> None:
                report(metrics | {"segment": seg}, state and state | {"segment": seg})

            key = json.dumps(to_dict(cfg.data), sort_keys=True)
            if key not in prepared:
                prepared[key] = data_lib.prepare(cfg.data, verbose=False)
            train(cfg, worker, tagged, resume, prepared[key])
            resume = None
        new = more() if more else {}
        chain, todo = chain | new, list(new)


def _from_rank0(worker: Worker, fn: Callable[[], Any]) -> Any:
    """``fn()`` called on rank 0 only; every rank gets its value."""
    box = [fn() if worker.is_main else None]
    if worker.world_size > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: one DDP rank of ``config["segments"]`` (id -> plain TrainConfig), or,
    with ``config["dispatcher"]`` (actor name, Tune trial id), of the segments that dispatcher
    hands this trial (see ``ray_mtl.tune.Tree``)."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    worker = Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())

    def configs(plain: dict[str, dict]) -> dict[str, TrainConfig]:
        return {seg: from_dict(TrainConfig, c) for seg, c in plain.items()}

    chain, more = configs(config["segments"]), None
    if config.get("dispatcher"):
        name, trial = config["dispatcher"]
        actor = ray.get_actor(name)

        def ask(method: str) -> dict[str, TrainConfig] | None:
            plain = _from_rank0(worker, lambda: ray.get(actor.call.remote(method, trial)))
            return None if plain is None else configs(plain)

        chain = ask("chain")  # after a restart, the segments it had been given since it began

        def more() -> dict[str, TrainConfig]:
            # None while this trial's own last fork checkpoints are on their way to the
            # dispatcher (through Ray Train's controller and Tune): their branches may be next.
            for _ in range(150):
                new = ask("more")
                if new is not None:
                    return new
                time.sleep(0.2)
            return {}

    torch.set_num_threads(max(1, int(next(iter(chain.values())).resources.cpus_per_worker)))
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)

    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        metrics = metrics | {"node_id": node_id}  # where it ran: the sweep's timeline.json
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint_dir(d, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    train_chain(chain, worker, report, resume, more)


def rows_callback(template: str):
    """A Ray Train callback that keeps ``template.format(segment=...)`` (Parquet) holding every
    row reported so far for that segment (each report names its segment).

    It runs in the Train controller after each report, so a finished segment's rows are on
    storage before Tune hears of them, and a crash loses at most the report in flight. A run
    restarted after its driver died starts from the rows already in the files: the steps before
    its checkpoint are not reported again and must not be dropped.
    """
    import pyarrow as pa
    from ray.train import UserCallback

    from ray_mtl.storage import is_file, read_parquet, write_parquet

    def existing(uri: str) -> dict[int, list[dict[str, Any]]]:
        if not is_file(uri):
            return {}
        rows: dict[int, list[dict[str, Any]]] = {}
        for r in read_parquet(uri).to_pylist():
            rows.setdefault(int(r["step"]), []).append(r)
        return rows

    class RowsCallback(UserCallback):
        def __init__(self) -> None:
            self.rows: dict[str, dict[int, list[dict[str, Any]]]] = {}

        def after_report(self, run_context, metrics, checkpoint) -> None:
            m = metrics[0]
            seg = m["segment"]
            uri = template.format(segment=seg)
            if seg not in self.rows:  # read in the controller, just before the first write
                self.rows[seg] = existing(uri)
            # keyed by step: a report repeated after a restart replaces, never duplicates
            self.rows[seg][int(m["step"])] = metric_rows(seg, m)
            rows = [r for step in sorted(self.rows[seg]) for r in self.rows[seg][step]]
            write_parquet(uri, pa.Table.from_pylist(rows))

    return RowsCallback()


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


def ray_trainer(
    segments: dict[str, TrainConfig],
    name: str,
    storage_path: str,
    callbacks: tuple = (),
    storage_filesystem: Any = None,
    dispatcher: tuple[str, str] | None = None,
):
    """A ``TorchTrainer`` running ``segments`` (id -> config) one after another on the same
    workers (those of the first, which all must share), then any more that ``dispatcher``
    (actor name, Tune trial id) hands it."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)

    cfg = next(iter(segments.values()))
    res = cfg.resources
    if any(c.resources != res for c in segments.values()):
        raise ValueError("the segments of one Train run must ask for the same resources")
    per_worker = {"CPU": res.cpus_per_worker} | ({"GPU": 1} if res.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "segments": {seg: to_dict(c) for seg, c in segments.items()},
            "dispatcher": dispatcher,
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
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Run ``cfg`` in this process (world size 1, no Ray); files go under ``cfg.run_dir``."""
    run_dir = Path(cfg.run_dir)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    rows: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        rows.extend(metric_rows("run", metrics))
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if state is not None:
            save_checkpoint_dir(run_dir / "checkpoints" / f"step_{metrics['step']:08d}", state)

    run_dir.mkdir(parents=True, exist_ok=True)
    final = train(cfg, Worker(device=device), report)
    _write_rows(run_dir / "metrics.parquet", rows)
    return final


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    from ray_mtl.storage import atomic_write_parquet

    atomic_write_parquet(path, pa.Table.from_pylist(rows))


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ray_mtl.train", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config", required=True, help="a TrainConfig YAML file")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (overrides the config)")
    p.add_argument("--init-from", help="start from this fork checkpoint (dir or URI)")
    p.add_argument("--run-dir", help="where metrics and checkpoints go")
    p.add_argument("--no-ray", action="store_true", help="run in this process, world size 1")
    args = p.parse_args(argv)

    cfg = load(TrainConfig, args.config)
    if args.num_workers is not None:
        check(args.num_workers >= 1, "--num-workers", "a positive integer", args.num_workers)
        cfg.resources.num_workers = args.num_workers
    if args.init_from:
        cfg.init_from = args.init_from
    if args.run_dir:
        cfg.run_dir = args.run_dir
    from ray_mtl.storage import ensure_writable_dir

    run_dir = ensure_writable_dir(cfg.run_dir, "run dir").resolve()
    cfg.run_dir = str(run_dir)
    validate(cfg)
    if args.no_ray:
        final = run(cfg)
        print(f"run dir: {run_dir}")
        return 0 if final else 1

    import ray

    ray.init(include_dashboard=False, configure_logging=False)
    rows_uri = str(run_dir / "metrics.parquet")
    trainer = ray_trainer(
        {"run": cfg},
        name="train",
        storage_path=str(run_dir),
        callbacks=(rows_callback(rows_uri),),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    print(f"run dir: {run_dir}\nmetrics: {rows_uri}\ncheckpoint: {result.checkpoint.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
