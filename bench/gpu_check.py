"""GPU check of the trainer's plain-function path: tokens/s and MFU, eager against compiled.

    python -m bench.gpu_check --data-dir D --cache C --out $OUT/gpu_check.json   # on the GPU
    .venv/bin/python -m bench.gpu_check --device cpu --preset tiny --steps 6 --every 2 \\
        --runs eager:1024 --out bench/out/gpu_check_cpu.json                    # smoke test

Each run is ``ray_mtl.train.run`` (world size 1, no Ray) with ``resources.use_gpu`` (bf16
autocast, fused AdamW) on eng-fra + eng-ron, evaluating every ``--every`` steps. Throughput is
the median of the trainer's own ``tokens_per_s`` over the intervals after the first (which holds
start-up and compilation); evaluation is outside every interval.

MFU counts the matmul FLOPs of the batches the run actually trains on (the sampler's stream is
deterministic, so it is replayed here for their padded shapes): forward + backward = 3 × 2 × MACs,
with the encoder on source positions, the decoder and tied output layer on target positions,
cross-attention keys on source positions, and attention scores. ``mfu_6pt`` is the brief's
convention, 6 × params × target tokens, for comparison; it is close to the exact count when
sources and targets have similar lengths. Peak: 989 TFLOP/s dense bf16 (H100 SXM / H200 spec).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch

from ray_mtl import train
from ray_mtl.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    PhaseConfig,
    ResourcesConfig,
    TrainConfig,
)
from ray_mtl.data import prepare
from ray_mtl.mixture import PAD, MixtureSampler, rates
from ray_mtl.model import Transformer

PEAK_BF16 = 989e12  # dense bf16, H100 SXM and H200 (the same chip); ~790e12 measured here


def step_flops(cfg: ModelConfig, vocab: int, b: int, s: int, t: int) -> float:
    """Matmul FLOPs of one training step (forward + backward) on a [b, s] -> [b, t] batch."""
    d, ff = cfg.d_model, cfg.d_ff
    enc = cfg.encoder_layers * (b * s * (4 * d * d + 2 * d * ff) + 2 * b * s * s * d)
    dec = cfg.decoder_layers * (
        b * t * (6 * d * d + 2 * d * ff)  # self q/k/v/out, cross q/out, MLP
        + b * s * 2 * d * d  # cross-attention keys and values of the source
        + b * t * t * d  # causal self-attention scores and values (half of 2·t·t·d)
        + 2 * b * t * s * d  # cross-attention scores and values
    )
    return 6.0 * (enc + dec + b * t * d * vocab)


def stream_shapes(cfg: TrainConfig, steps: int) -> dict[str, float]:
    """Mean padded shapes and real tokens of the first ``steps`` batches the run trains on."""
    prepared = prepare(cfg.data, verbose=False)
    sizes = {t: prepared.size(t) for t in prepared.tasks}
    columns = {}
    for t in prepared.tasks:
        shard = prepared.shard(t, "train")
        columns[t] = (shard.column("src"), shard.column("tgt"))
    sampler = MixtureSampler(
        columns, rates(sizes, cfg.phases[0].mixture), cfg.batch_tokens, seed=cfg.seed
    )
    model = Transformer(cfg.model, prepared.vocab_size)
    flops = src_real = tgt_real = 0.0
    for _ in range(steps):
        batch = sampler.next_batch()
        (b, s), t = batch.src.shape, batch.tgt_out.size(1)
        flops += step_flops(cfg.model, prepared.vocab_size, b, s, t)
        src_real += int((batch.src != PAD).sum())
        tgt_real += batch.n_tokens
    return {
        "flops_per_step": flops / steps,
        "real_tokens_per_step": (src_real + tgt_real) / steps,
        "tgt_tokens_per_step": tgt_real / steps,
        "params": float(model.num_params()),
    }


def one_run(args, mode: str, batch_tokens: int, root: Path) -> dict:
    cfg = TrainConfig(
        phases=[PhaseConfig(steps=args.steps, name="bench")],
        data=DataConfig(tasks=["eng-fra", "eng-ron"], data_dir=args.data_dir, out_dir=args.cache),
        model=ModelConfig(preset=args.preset),
        eval=EvalConfig(every=args.every, pairs=100, bleu_pairs=0, test_at_end=False),
        resources=ResourcesConfig(use_gpu=args.device == "cuda"),
        batch_tokens=batch_tokens,
        compile=mode == "compile",
        run_dir=str(root / f"{mode}_{batch_tokens}"),
    )
    start = time.perf_counter()
    train.run(cfg)
    wall = time.perf_counter() - start
    lines = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
    intervals = [json.loads(line)["tokens_per_s"] for line in lines]
    tokens_per_s = statistics.median(intervals[1:] or intervals)
    shapes = stream_shapes(cfg, args.steps)
    steps_per_s = tokens_per_s / shapes["real_tokens_per_step"]
    flops_per_s = steps_per_s * shapes["flops_per_step"]
    return {
        "mode": mode,
        "batch_tokens": batch_tokens,
        "steps": args.steps,
        "wall_s": round(wall, 1),
        "tokens_per_s": round(tokens_per_s),
        "interval_tokens_per_s": [round(x) for x in intervals],
        "step_ms": round(1000 / steps_per_s, 2),
        "tflops": round(flops_per_s / 1e12, 1),
        "mfu": round(flops_per_s / PEAK_BF16, 4),
        "mfu_6pt": round(
            6 * shapes["params"] * shapes["tgt_tokens_per_step"] * steps_per_s / PEAK_BF16, 4
        ),
        **{k: round(v) for k, v in shapes.items()},
    }


def profile(args, root: Path, path: Path) -> None:
    """Where a step's time goes: torch.profiler over 10 eager steps, top ops by CPU and GPU."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps, args.steps = args.steps, 10
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        one_run(args, "eager", 65536, root)
    args.steps = steps
    table = prof.key_averages()
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    text = (
        table.table(sort_by=sort, row_limit=30)
        + "\n"
        + table.table(sort_by="self_cpu_time_total", row_limit=30)
    )
    path.write_text(text)
    print(text[:6000])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--preset", default="base")
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--every", type=int, default=30, help="steps per timed interval")
    p.add_argument(
        "--runs", default="eager:65536,compile:65536", help="mode:batch_tokens, comma-separated"
    )
    p.add_argument("--data-dir", help="corpus root (default: ../shared/data)")
    p.add_argument("--cache", help="prepared-data dir (default: a temp dir)")
    p.add_argument("--out", default="bench/out/gpu_check.json")
    p.add_argument("--profile", action="store_true", help="also profile 10 eager steps")
    args = p.parse_args()
    args.cache = args.cache or tempfile.mkdtemp(prefix="gpu-check-data-")
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "peak_tflops": PEAK_BF16 / 1e12,
        "runs": [],
    }
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec in args.runs.split(","):
        mode, tokens = spec.split(":")
        try:
            run = one_run(args, mode, int(tokens), root)
        except Exception as e:  # record and go on: one device call must bring back every run
            traceback.print_exc()
            run = {"mode": mode, "batch_tokens": int(tokens), "error": repr(e)}
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if args.profile:
        profile(args, root, out.with_name("gpu_profile.txt"))
    for run in result["runs"]:
        if "mfu" in run:
            print(
                f"{run['mode']:>8} {run['batch_tokens']:>7} tok/batch: "
                f"{run['tokens_per_s']:>12,} tok/s  {run['step_ms']:7.1f} ms/step  "
                f"{run['tflops']:6.1f} TFLOP/s  MFU {run['mfu']:.1%} (6PT {run['mfu_6pt']:.1%})"
            )
    print(f"-> {out} (cpus {os.cpu_count()})")


if __name__ == "__main__":
    main()
