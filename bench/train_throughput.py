"""Tokens/s of a 1-worker Ray Train run against the same loop as a plain function and against
a bare PyTorch loop, same model and data, one run.

    .venv/bin/python -m bench.train_throughput            # -> bench/results/train_throughput.json
    .venv/bin/python -m bench.train_throughput --steps 50 --preset tiny                # quicker
    .venv/bin/python -m bench.train_throughput --kind lm # -> bench/results/train_throughput_lm.json

Every side trains the same model on the same sampler stream for the same steps: the plain side
is ``ray_mtl.train.run`` (no Ray), the Ray side ``ray_trainer(...).fit()`` with one worker, and
the bare side a plain PyTorch loop (model, AdamW, the sampler's batches, forward, loss,
backward, clip, step; nothing else). The first two report the trainer's own ``tokens_per_s``:
real (non-pad) tokens over the loop's time, start-up and evaluation excluded (evaluation happens
only at the end); the bare loop counts the same tokens over its steps after a few warm-up ones.
All get the same torch threads. The plain and bare runs go before and after the Ray one and
their means are the baselines, so that drift in the load of a shared machine hits every side
alike. ``--kind lm`` trains the decoder-only LM on French and Romanian documents (the target
sides of the pairs). Goal: ray / plain >= 0.9 and ray / bare >= 0.9.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: E402,F401  (the quiet local-Ray settings the tests use)

from bench.record import write_result  # noqa: E402
from ray_mtl import ray_train, train  # noqa: E402
from ray_mtl.config import (  # noqa: E402
    KINDS,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PhaseConfig,
    ResourcesConfig,
    TrainConfig,
)
from ray_mtl.data import prepare  # noqa: E402
from ray_mtl.model import new_model, token_losses  # noqa: E402


def bare_loop(cfg: TrainConfig, warmup: int = 5) -> float:
    """Tokens/s of a plain PyTorch loop over the run's model, optimizer settings and batches."""
    prepared = prepare(cfg.data, verbose=False)
    torch.manual_seed(cfg.seed)
    model = new_model(cfg.kind, cfg.model, prepared.vocab_size)
    sampler = train.new_sampler(cfg, prepared, train.Worker())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    steps = cfg.phases[0].steps
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        if step == warmup:
            tokens, start = 0, time.perf_counter()
        batch = sampler.next_batch()
        tokens += batch.real_tokens
        loss = token_losses(model(*batch.model_inputs()), batch.tgt_out).sum() / batch.n_tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2, help="torch threads (Ray: CPUs per worker)")
    p.add_argument("--kind", default="translation", choices=KINDS)
    p.add_argument("--pack-length", type=int, default=0, help="packed rows (0: padded rows)")
    args = p.parse_args()

    lm = args.kind == "lm"
    data = DataConfig(kind=args.kind, tasks=["fra", "ron"] if lm else ["eng-fra", "eng-ron"])
    prepare(data, verbose=False)  # built once, outside every timing
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = TrainConfig(
        kind=args.kind,
        phases=[PhaseConfig(steps=args.steps)],
        data=data,
        model=ModelConfig(preset=args.preset),
        eval=EvalConfig(every=10**9, pairs=50, bleu_pairs=0, test_at_end=False),
        resources=ResourcesConfig(num_workers=1, cpus_per_worker=float(args.threads)),
        batch_tokens=args.batch_tokens,
        pack_length=args.pack_length,
    )
    torch.set_num_threads(args.threads)

    def plain(i: int) -> float:
        cfg.run_dir = str(tmp / f"plain{i}")
        return train.run(cfg)["tokens_per_s"]

    import ray

    plain_before, bare_before = plain(0), bare_loop(cfg)
    ray.init(num_cpus=args.threads, include_dashboard=False, configure_logging=False)
    start = time.perf_counter()
    result = ray_train.ray_trainer({"bench": cfg}, "bench", str(tmp / "ray")).fit()
    ray_wall = time.perf_counter() - start
    ray.shutdown()
    if result.error:
        raise result.error
    ray_tps = result.metrics["tokens_per_s"]
    plain_after, bare_after = plain(1), bare_loop(cfg)

    baseline = (plain_before + plain_after) / 2
    bare = (bare_before + bare_after) / 2
    out = dict(
        kind=args.kind,
        pack_length=args.pack_length,
        preset=args.preset,
        steps=args.steps,
        batch_tokens=args.batch_tokens,
        threads=args.threads,
        plain_tokens_per_s=[round(plain_before), round(plain_after)],
        ray_tokens_per_s=round(ray_tps),
        ray_over_plain=round(ray_tps / baseline, 3),
        bare_tokens_per_s=[round(bare_before), round(bare_after)],
        ray_over_bare=round(ray_tps / bare, 3),
        ray_fit_wall_s=round(ray_wall, 1),
    )
    path = write_result(f"train_throughput{'_lm' if lm else ''}", out)
    print(
        f"plain {baseline:,.0f} tok/s (before {plain_before:,.0f}, after {plain_after:,.0f}), "
        f"bare loop {bare:,.0f} tok/s, ray {ray_tps:,.0f} tok/s -> ray/plain "
        f"{ray_tps / baseline:.3f}, ray/bare {ray_tps / bare:.3f} (goal >= 0.9); "
        f"ray fit {ray_wall:.1f} s with start-up -> {path}"
    )


if __name__ == "__main__":
    main()
