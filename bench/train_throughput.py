"""Tokens/s of a 1-worker Ray Train run against the same loop as a plain function, same run.

    .venv/bin/python -m bench.train_throughput            # -> bench/results/train_throughput.json
    .venv/bin/python -m bench.train_throughput --steps 50 --preset tiny                # quicker

Both sides train the same model on the same sampler stream for the same steps: the plain side
is ``ray_mtl.train.run`` (no Ray), the Ray side ``ray_trainer(...).fit()`` with one worker. Each
reports the trainer's own ``tokens_per_s``: real (non-pad) tokens over the loop's time, start-up
and evaluation excluded (evaluation happens only at the end). Both get the same torch threads.
The plain run goes before and after the Ray one and its mean is the baseline, so that drift in
the load of a shared machine hits both sides alike. Goal: ray / plain >= 0.9.
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
    DataConfig,
    EvalConfig,
    ModelConfig,
    PhaseConfig,
    ResourcesConfig,
    TrainConfig,
)
from ray_mtl.data import prepare  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2, help="torch threads (Ray: CPUs per worker)")
    args = p.parse_args()

    data = DataConfig(tasks=["eng-fra", "eng-ron"])
    prepare(data, verbose=False)  # built once, outside every timing
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = TrainConfig(
        phases=[PhaseConfig(steps=args.steps)],
        data=data,
        model=ModelConfig(preset=args.preset),
        eval=EvalConfig(every=10**9, pairs=50, bleu_pairs=0, test_at_end=False),
        resources=ResourcesConfig(num_workers=1, cpus_per_worker=float(args.threads)),
        batch_tokens=args.batch_tokens,
    )
    torch.set_num_threads(args.threads)

    def plain(i: int) -> float:
        cfg.run_dir = str(tmp / f"plain{i}")
        return train.run(cfg)["tokens_per_s"]

    import ray

    plain_before = plain(0)
    ray.init(num_cpus=args.threads, include_dashboard=False, configure_logging=False)
    start = time.perf_counter()
    result = ray_train.ray_trainer({"bench": cfg}, "bench", str(tmp / "ray")).fit()
    ray_wall = time.perf_counter() - start
    ray.shutdown()
    if result.error:
        raise result.error
    ray_tps = result.metrics["tokens_per_s"]
    plain_after = plain(1)

    baseline = (plain_before + plain_after) / 2
    out = dict(
        preset=args.preset,
        steps=args.steps,
        batch_tokens=args.batch_tokens,
        threads=args.threads,
        plain_tokens_per_s=[round(plain_before), round(plain_after)],
        ray_tokens_per_s=round(ray_tps),
        ray_over_plain=round(ray_tps / baseline, 3),
        ray_fit_wall_s=round(ray_wall, 1),
    )
    path = write_result("train_throughput", out)
    print(
        f"plain {baseline:,.0f} tok/s (before {plain_before:,.0f}, after {plain_after:,.0f}), "
        f"ray {ray_tps:,.0f} tok/s -> ray/plain {ray_tps / baseline:.3f} (goal >= 0.9); "
        f"ray fit {ray_wall:.1f} s with start-up -> {path}"
    )


if __name__ == "__main__":
    main()
