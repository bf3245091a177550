"""Training runs (segments): the loop, in this process or on Ray Train workers.

    python -m ray_mtl.train --config run.yaml [--num-workers 2] [--init-from CKPT] [--no-ray]

``train(cfg, worker, report)`` is the whole loop, in one place: phases with optimizer/LR resets,
the task-mixture sampler, DDP (gloo on CPU, nccl + bf16 autocast on GPU), evaluation with
per-task best tracking, and checkpoints at fork steps. It serves both task kinds: ``cfg.kind``
chooses the model (``model.new_model``: encoder-decoder or decoder-only), the batches' inputs
(``Batch.model_inputs``) and the evaluation (BLEU/chrF or bits per byte); the loss is the same
per-token cross-entropy of ``tgt_out`` (targets, or documents). Around it, named pieces:
``setup_model``, ``new_optimizer``, ``BestPerTask``, ``evaluate_split`` and the checkpoint state
(``ray_mtl.checkpoint``). ``run(cfg)`` runs it here with world size 1 and no Ray at all (how the
GPU path is checked on a machine that has torch but not Ray); ``ray_mtl.ray_train`` runs it on N
Ray Train workers, one segment after another as a sweep hands them out (``train_chain``).

Global steps continue across forks: a branch from its trunk's checkpoint at step L starts at L,
restores the trunk's sampler and RNG state, and then follows its first phase (reset or not), so a
branch is step for step the run that would have gone on from L.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ray_mtl import checkpoint
from ray_mtl import data as data_lib
from ray_mtl.config import TrainConfig, check, load, to_dict
from ray_mtl.errors import UserError, cli
from ray_mtl.evaluate import evaluate_lm, evaluate_task
from ray_mtl.model import autocast, new_model, token_losses
from ray_mtl.plan import eval_and_checkpoint_steps
from ray_mtl.rates import rates
from ray_mtl.sampler import MixtureSampler
from ray_mtl.schedule import Schedule

# report(metrics, state) sends metrics (and, from rank 0, a checkpoint's state) to wherever the
# run is recorded: Ray Train's report, or files under run_dir when running without Ray.
Report = Callable[[dict[str, Any], dict[str, Any] | None], None]
# judge(step, ce) at a rung: whether the run stops there (ce: each task's best dev CE so far, on
# rank 0; every rank gets the answer). A sweep's scheduler answers (``scheduler.Tree.judge``).
Judge = Callable[[int, dict[str, float]], bool]


class Diverged(Exception):
    """A non-finite training loss or dev CE at an evaluation: the run stops there, and the
    branches it had not yet forked never start. ``metrics`` are that evaluation's."""

    def __init__(self, step: int, bad: list[str], metrics: dict[str, Any]) -> None:
        super().__init__(f"step {step}: non-finite {', '.join(bad)}")
        self.metrics = metrics


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
# Setup
# --------------------------------------------------------------------------------------------


def setup_model(cfg: TrainConfig, worker: Worker, vocab_size: int):
    """(model to train: DDP and compiled as asked, the plain module, the per-token loss)."""
    on_gpu = worker.device.type == "cuda"
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 matmuls outside autocast
        # cuDNN's attention is slow on our short, padded sequences: on an H200 (base preset,
        # 64k-token batches, eager) it ran 434k tok/s against 914k with the efficient kernel.
        # Compiled, it measured the other way round (797k with cuDNN, 417k without).
        torch.backends.cuda.enable_cudnn_sdp(cfg.compile)
    raw_model = new_model(cfg.kind, cfg.model, vocab_size).to(worker.device)
    model = raw_model  # evaluation, decoding and checkpoints use the plain module
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
    return model, raw_model, losses


def new_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """A fresh AdamW (at the start and at every reset)."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
        fused=next(model.parameters()).is_cuda,
    )


def new_sampler(cfg: TrainConfig, prepared: data_lib.Prepared, worker: Worker) -> MixtureSampler:
    """The sampler over every task's training shard, at the first phase's rates."""
    return MixtureSampler(
        {t: prepared.sequences(t) for t in prepared.tasks},
        rates=rates(prepared.sizes, cfg.phases[0].mixture),
        batch_tokens=cfg.batch_tokens,
        seed=cfg.seed,
        rank=worker.rank,
        world_size=worker.world_size,
        pack_length=cfg.pack_length,
    )


# --------------------------------------------------------------------------------------------
# Evaluation and per-task early stopping
# --------------------------------------------------------------------------------------------


def evaluate_split(cfg, model, prepared, split, device, tasks=None) -> dict[str, float]:
    """``split/task/metric`` of each task (``evaluate_task`` sets eval mode and autocast)."""
    out: dict[str, float] = {}
    for t in tasks or prepared.tasks:
        table = prepared.shard(t, split)
        if cfg.kind == "lm":
            res = evaluate_lm(
                model, table, eval_rows=cfg.eval.pairs, batch_tokens=cfg.batch_tokens, device=device
            )
        else:
            res = evaluate_task(
                model,
                table,
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


class BestPerTask:
    """Each task's best dev CE so far, its step, and the weights at that step (kept once per step
    that is still some task's best): per-task early stopping."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {"best": {}, "best_weights": {}}
        self.best: dict[str, dict[str, Any]] = state["best"]
        self.weights = {int(k): v for k, v in state["best_weights"].items()}
        if any(b["step"] == state.get("step") for b in self.best.values()):
            self.weights[int(state["step"])] = state["model_state"]  # stored once, see below

    def update(self, step: int, metrics: dict[str, Any], tasks: list[str], model) -> None:
        """Take this evaluation's dev CE of every task (``metrics``) and the model's weights."""
        improved = [
            t for t in tasks if t not in self.best or metrics[f"dev/{t}/ce"] < self.best[t]["ce"]
        ]
        for t in improved:
            self.best[t] = {"ce": metrics[f"dev/{t}/ce"], "step": step}
        if improved:
            self.weights[step] = {
                k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            }
        keep = {b["step"] for b in self.best.values()}
        self.weights = {s: w for s, w in self.weights.items() if s in keep}

    def test(self, cfg, model, prepared, device) -> dict[str, Any]:
        """Each task's test metrics, and those of its evaluation sets, from its best dev weights
        (the model is given back as is)."""
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out: dict[str, Any] = {}
        for t in prepared.tasks:
            model.load_state_dict(self.weights[self.best[t]["step"]])
            for split in ("test", *prepared.eval_sets(t)):
                out |= evaluate_split(cfg, model, prepared, split, device, tasks=[t])
            out[f"test/{t}/best_step"] = self.best[t]["step"]
        model.load_state_dict(final)
        return out

    def state_dict(self, step: int) -> dict[str, Any]:
        """The record, for a checkpoint at ``step``: weights of that step are the checkpoint's
        own ``model_state`` and are not stored twice."""
        weights = {str(k): v for k, v in self.weights.items() if k != step}
        return {"best": self.best, "best_weights": weights}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    worker: Worker,
    report: Report,
    resume: dict | None = None,
    prepared: data_lib.Prepared | None = None,
    begun: float | None = None,
    judge: Judge | None = None,
) -> dict:
    """Run ``cfg`` on this worker. ``resume`` is the state of this same run (fault recovery);
    ``prepared`` is ``cfg.data`` already prepared (segments of a chain share it), ``begun`` the
    ``time.perf_counter()`` at which its preparation began (default: now); ``judge`` is asked
    at each of ``cfg.rungs`` whether to stop there (then the report says ``pruned``; at the
    end it only hears the result).

    Returns the last metrics reported; raises ``Diverged`` at a non-finite loss. Reports time
    what is not optimizer steps: ``setup_s`` (the first: data, model, optimizer, sampler,
    checkpoint) and ``eval_s`` (each: evaluation, best-per-task weights, test at the end).
    """
    begun = begun or time.perf_counter()
    torch.manual_seed(cfg.seed)
    prepared = prepared or data_lib.prepare(cfg.data, verbose=False)
    tasks, vocab = prepared.tasks, prepared.vocab_size
    model, raw_model, losses = setup_model(cfg, worker, vocab)
    sampler = new_sampler(cfg, prepared, worker)
    optimizer = new_optimizer(cfg, raw_model)

    # Where this run starts: fresh, from a fork checkpoint of another segment, or from its own
    # latest checkpoint after a fault (then the schedule is the segment's own, from its start).
    fork = cfg.init_from and checkpoint.load(cfg.init_from, cfg, vocab, prepared.manifest_hash)
    start = resume or fork or None
    start_step = 0 if start is None else int(start["step"])
    since_reset = 0 if start is None else int(start["steps_since_reset"])
    schedule = Schedule(cfg.phases, start_step=start_step, steps_since_reset_at_start=since_reset)
    if resume is not None:
        schedule.load_state_dict(resume["schedule"])
    if start is not None:
        checkpoint.restore(start, raw_model, optimizer, sampler)
    best = BestPerTask(resume)
    eval_at, ckpt_at = eval_and_checkpoint_steps(cfg, start_step, schedule.end_step)

    mixed_precision = autocast(worker.device)
    task_index = {t: i for i, t in enumerate(tasks)}
    loss_sum = torch.zeros(len(tasks), device=worker.device)
    loss_tokens = torch.zeros(len(tasks), device=worker.device)
    tokens_seen, t0 = 0, time.perf_counter()
    setup_s = t0 - begun
    metrics: dict[str, Any] = {}
    phase = -1

    for step in range(start_step, schedule.end_step):
        if schedule.phase_at(step) != phase:
            phase = schedule.phase_at(step)
            sampler.set_rates(rates(prepared.sizes, cfg.phases[phase].mixture))
        if schedule.resets_at(step):
            optimizer = new_optimizer(cfg, raw_model)
        lr = schedule.lr(step, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr

        batch = sampler.next_batch()
        # Counted on the host and copied from pinned memory: nothing in a step waits for the
        # GPU, so the sampler builds the next batch while this one runs.
        tokens_seen += batch.real_tokens
        batch = batch.to(worker.device)
        # Normalise by the tokens of the whole global batch so that N workers take exactly the
        # step that one worker would take on the same examples (DDP averages over ranks).
        n_global: torch.Tensor | int = max(batch.n_tokens, 1)
        if worker.world_size > 1:
            n_global = torch.tensor(float(batch.n_tokens), device=worker.device)
            dist.all_reduce(n_global)
            n_global = n_global.clamp(min=1)
        with mixed_precision:
            logits = model(*batch.model_inputs())
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
        if worker.device.type == "cuda":
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
        if setup_s is not None:
            metrics["setup_s"], setup_s = setup_s, None
        evaluated = time.perf_counter()
        if worker.is_main:
            metrics.update(evaluate_split(cfg, raw_model, prepared, "dev", worker.device))
        # Every rank decides alike: rank 0's dev CE and the all-reduced training losses.
        bad = not_finite(metrics, tasks) if worker.is_main else []
        bad = _from_rank0(worker, lambda bad=bad: bad)
        if bad:
            raise Diverged(done, bad, metrics)
        state = None
        if worker.is_main:
            best.update(done, metrics, tasks, raw_model)
            # A trial's point can end inside a segment (a static trunk's L + F): test there too.
            ends = done == schedule.end_step or done in cfg.eval_steps
            if ends and cfg.eval.test_at_end:
                metrics.update(best.test(cfg, raw_model, prepared, worker.device))
            if ends and cfg.eval.keep_weights:
                checkpoint.save_weights(
                    cfg.run_dir,
                    step=done,
                    cfg=cfg,
                    vocab_size=vocab,
                    manifest_hash=prepared.manifest_hash,
                    best=best,
                )
            metrics["eval_s"] = time.perf_counter() - evaluated
            print_progress(metrics, tasks, schedule.end_step)
            if done in ckpt_at:
                state = checkpoint.capture(
                    step=done,
                    steps_since_reset=schedule.steps_since_reset(step) + 1,
                    schedule=schedule,
                    cfg=cfg,
                    vocab_size=vocab,
                    manifest_hash=prepared.manifest_hash,
                    model=raw_model,
                    optimizer=optimizer,
                    sampler=sampler,
                    best=best,
                )
        # At its end the judge hears the run's result (refinement proposes from it): no stop.
        asked = judge is not None and done in cfg.rungs
        stop = asked and judge(done, {t: b["ce"] for t, b in best.best.items()})
        if stop and done < schedule.end_step:
            report(metrics | {"pruned": 1}, state)
            return metrics
        report(metrics, state)
        tokens_seen, t0 = 0, time.perf_counter()
    return metrics


def not_finite(metrics: dict[str, Any], tasks: list[str]) -> list[str]:
    """The training losses and dev CEs of ``metrics`` that are NaN or infinite."""
    keys = [f"{split}/{t}/{m}" for t in tasks for split, m in (("train", "loss"), ("dev", "ce"))]
    return [k for k in keys if k in metrics and not math.isfinite(metrics[k])]


def _from_rank0(worker: Worker, fn: Callable[[], Any]) -> Any:
    """``fn()`` called on rank 0 only; every rank gets its value."""
    box = [fn() if worker.is_main else None]
    if worker.world_size > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def print_progress(metrics: dict[str, Any], tasks: list[str], end: int) -> None:
    parts = [f"step {metrics['step']}/{end}", f"lr {metrics['lr']:.2e}"]
    for t in tasks:
        ce, bleu, bpb = (metrics.get(f"dev/{t}/{m}") for m in ("ce", "bleu", "bpb"))
        parts.append(
            f"{t} ce {ce:.3f}"
            + (f" bleu {bleu:.1f}" if bleu is not None else "")
            + (f" bpb {bpb:.3f}" if bpb is not None else "")
        )
    parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
    print(" | ".join(parts), flush=True)


# --------------------------------------------------------------------------------------------
# Segments one after another (a sweep's trial), and checks before anything starts
# --------------------------------------------------------------------------------------------


def train_chain(
    chain: dict[str, TrainConfig],
    worker: Worker,
    report: Report,
    resume: dict | None = None,
    more: Callable[[], dict[str, TrainConfig]] | None = None,
    judge: Callable[[str, int, dict[str, float]], bool] | None = None,
) -> None:
    """Train the segments of ``chain`` (id -> config, possibly none) in order on this worker,
    then those that ``more()`` gives while it gives any. Each report's metrics and checkpoint
    state name their segment (``"segment"``); segments with the same data config share it,
    prepared once.

    ``resume`` is the latest checkpoint state of this run (fault recovery): its segment goes on
    from it, or, if it is that segment's last, the next one starts; those before it are done.
    A segment that diverges is reported (``"diverged"``) and the next one starts, as does one
    that ``judge(segment, step, ce)`` stops at a rung (``"pruned"``).
    """
    todo = list(chain)
    if resume is not None:
        todo = todo[todo.index(resume["segment"]) :]
        if checkpoint.is_last(chain[todo[0]], resume):
            todo, resume = todo[1:], None
    prepared: dict[str, data_lib.Prepared] = {}
    while True:
        for seg in todo:
            cfg = chain[seg]

            def tagged(metrics: dict[str, Any], state: dict | None, seg: str = seg) -> None:
                report(metrics | {"segment": seg}, state and state | {"segment": seg})

            key = json.dumps(to_dict(cfg.data), sort_keys=True)
            begun = time.perf_counter()
            if key not in prepared:
                prepared[key] = data_lib.prepare(cfg.data, verbose=False)
            at_rung = partial(judge, seg) if judge else None
            try:
                train(cfg, worker, tagged, resume, prepared[key], begun, at_rung)
            except Diverged as e:
                print(f"{seg}: diverged at {e}", flush=True)
                tagged(e.metrics | {"diverged": 1}, None)
            resume = None
        new = more() if more else {}
        if not new:
            return
        chain, todo = chain | new, list(new)


def validate(cfg: TrainConfig) -> data_lib.Prepared:
    """Everything that can be checked before workers start: data, mixtures, init checkpoint."""
    prepared = data_lib.prepare(cfg.data)
    for i, phase in enumerate(cfg.phases):
        try:
            rates(prepared.sizes, phase.mixture)
        except UserError as e:
            raise UserError(f"phases[{i}].mixture: {e}") from None
    if cfg.init_from:
        checkpoint.load(cfg.init_from, cfg, prepared.vocab_size, prepared.manifest_hash)
    return prepared


# --------------------------------------------------------------------------------------------
# One plain process, and the command line
# --------------------------------------------------------------------------------------------


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Run ``cfg`` in this process (world size 1, no Ray); files go under ``cfg.run_dir``."""
    from ray_mtl.results import metric_rows, write_rows

    run_dir = Path(cfg.run_dir)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    rows: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        rows.extend(metric_rows("run", metrics))
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if state is not None:
            checkpoint.save_dir(run_dir / "checkpoints" / f"step_{metrics['step']:08d}", state)

    run_dir.mkdir(parents=True, exist_ok=True)
    final = train(cfg, Worker(device=device), report)
    write_rows(str(run_dir / "metrics.parquet"), rows)
    return final


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
    from ray_mtl.ray_train import fit_one

    print(fit_one(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
