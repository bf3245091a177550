"""GPU check of the trainer's plain-function path: tokens/s and MFU, eager against compiled.

    python -m bench.gpu_check --data-dir D --cache C --out $OUT/gpu_check.json   # on the GPU
    python -m bench.gpu_check --kind lm --preset gpt2 --data-dir D --cache C \\
        --out $OUT/gpu_check_lm.json            # the decoder-only LM (defaults below), on the GPU
    .venv/bin/python -m bench.gpu_check --device cpu --preset tiny --steps 6 --every 2 \\
        --runs eager:1024,eager:1024:128 --reference 0 --out bench/out/gpu_check_cpu.json
    .venv/bin/python -m bench.gpu_check --kind lm --device cpu --preset tiny --steps 6 --every 2 \\
        --runs eager:2048:256,compile:2048:256 --reference 8 --vocab-size 2000 \\
        --out bench/out/gpu_check_lm_cpu.json

Each run (``--runs``, ``mode:batch_tokens[:pack_length]``) is ``ray_mtl.train.run`` (world size
1, no Ray) with ``resources.use_gpu`` (bf16 autocast, fused AdamW) on eng-fra + eng-ron (lm: below),
evaluating every ``--every`` steps; ``pack_length`` packs pairs into fixed-shape rows. Mode
``chain`` trains three compiled segments back to back in one process instead, as a sweep's trial
does, and records at each report the graphs compiled so far and the GPU memory held. Throughput
is the median of the trainer's own ``tokens_per_s`` (real source + target tokens) over the
intervals after the first (which holds start-up and compilation); evaluation is outside every
interval. ``--reference B`` also times the model alone, compiled, on random [B, 64] -> [B, 64]
batches (the issue's reference shape): the ceiling of this model on this GPU.

``--kind lm`` runs the decoder-only language model on the five shipped languages (the target
sides of the pairs; ``--vocab-size``, default 32000 there: the ``gpt2`` preset then has 110M
parameters, 85M of them in its 12 layers), by default compiled on packed rows of 1024 tokens
(``compile:131072:1024``: 128 rows, documents separated by EOS, attention within a document),
and its reference is the compiled model alone on fixed random [B, 1024] rows, plainly causal.

MFU counts the matmul FLOPs of the batches the run actually trains on (the sampler's stream is
deterministic, so it is replayed here for their padded shapes): forward + backward = 3 × 2 × MACs,
with the encoder on source positions, the decoder and tied output layer on target positions,
cross-attention keys on source positions, and attention scores (causal ones counted half; the
LM: its layers and output layer on its positions, causal scores counted half). The issue's
convention, 6 × params × tokens, is given two ways: ``mfu_6pt`` counts target tokens (close to
the exact count when sources and targets have similar lengths), ``mfu_6pt_all`` counts source +
target tokens, which is about twice the exact count for an encoder-decoder (a token passes
through one half of the parameters); for the LM both count its tokens. The issue's reference
figure (47.6% for a compiled loop at 512 x 64) matches ``mfu_6pt_all`` of ``--reference 512`` on
an H200 (50.1%; exact 25.6%). Peak: 989 TFLOP/s dense bf16 (H100 SXM / H200 spec).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from ray_mtl.model import new_model
from ray_mtl.rates import rates
from ray_mtl.sampler import MixtureSampler

PEAK_BF16 = 989e12  # dense bf16, H100 SXM and H200 (the same chip); ~790e12 measured here


def step_flops(cfg: ModelConfig, vocab: int, b: int, s: int, t: int) -> float:
    """Matmul FLOPs of one training step (forward + backward) on a [b, s] -> [b, t] batch
    (``s == 0``: the decoder-only LM on [b, t] rows)."""
    d, ff = cfg.d_model, cfg.d_ff
    if s == 0:
        layers = cfg.decoder_layers * (b * t * (4 * d * d + 2 * d * ff) + b * t * t * d)
        return 6.0 * (layers + b * t * d * vocab)
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
    columns = {t: prepared.sequences(t) for t in prepared.tasks}
    w = rates(prepared.sizes, cfg.phases[0].mixture)
    sampler = MixtureSampler(
        columns, w, cfg.batch_tokens, seed=cfg.seed, pack_length=cfg.pack_length
    )
    model = new_model(cfg.kind, cfg.model, prepared.vocab_size)
    flops = src_real = tgt_real = 0.0
    for _ in range(steps):
        batch = sampler.next_batch()
        (b, t), s = batch.tgt_out.shape, 0 if batch.src is None else batch.src.size(1)
        flops += step_flops(cfg.model, prepared.vocab_size, b, s, t)
        src_real += batch.real_tokens - batch.n_tokens
        tgt_real += batch.n_tokens
    return {
        "flops_per_step": flops / steps,
        "real_tokens_per_step": (src_real + tgt_real) / steps,
        "tgt_tokens_per_step": tgt_real / steps,
        "params": float(model.num_params()),
    }


LM_TASKS = ["fra", "deu", "spa", "ron", "ind"]


def run_config(args, mode: str, batch_tokens: int, pack_length: int, root: Path) -> TrainConfig:
    lm = args.kind == "lm"
    data = DataConfig(
        tasks=LM_TASKS if lm else ["eng-fra", "eng-ron"],
        data_dir=args.data_dir,
        out_dir=args.cache,
        **({"vocab_size": args.vocab_size} if args.vocab_size else {}),
    )
    return TrainConfig(
        kind=args.kind,
        phases=[PhaseConfig(steps=args.steps, name="bench")],
        data=data,
        model=ModelConfig(preset=args.preset, dropout=args.dropout, max_len=max(128, pack_length)),
        eval=EvalConfig(every=args.every, pairs=100, bleu_pairs=0, test_at_end=False),
        resources=ResourcesConfig(use_gpu=args.device == "cuda"),
        batch_tokens=batch_tokens,
        pack_length=pack_length,
        compile=mode == "compile",
        run_dir=str(root / f"{mode}_{batch_tokens}_{pack_length}"),
    )


def one_run(args, mode: str, batch_tokens: int, pack_length: int, root: Path) -> dict:
    if mode == "chain":
        return chain_run(args, batch_tokens, pack_length, root)
    cfg = run_config(args, mode, batch_tokens, pack_length, root)
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
        "pack_length": pack_length,
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
        "mfu_6pt_all": round(6 * shapes["params"] * tokens_per_s / PEAK_BF16, 4),
        **{k: round(v) for k, v in shapes.items()},
    }


def chain_run(args, batch_tokens: int, pack_length: int, root: Path, n: int = 3) -> dict:
    """``n`` compiled segments (seeds 0..n-1) back to back in one process, as a trial's workers
    train them (``train.train_chain``): does each compile again, and is memory given back?"""
    from torch._dynamo.utils import counters

    base = run_config(args, "compile", batch_tokens, pack_length, root)
    chain = {f"seed{i}": dataclasses.replace(base, seed=i) for i in range(n)}
    cuda = args.device == "cuda"
    reports: list[dict] = []
    start = time.perf_counter()

    def report(metrics: dict, state: dict | None) -> None:
        reports.append(
            {
                "segment": metrics["segment"],
                "step": metrics["step"],
                "t_s": round(time.perf_counter() - start, 2),
                "tokens_per_s": round(metrics["tokens_per_s"]),
                "unique_graphs": counters["stats"]["unique_graphs"],
                "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else 0,
            }
        )

    torch._dynamo.reset()
    train.train_chain(chain, train.Worker(device=torch.device(args.device)), report)
    return {
        "mode": "chain",
        "batch_tokens": batch_tokens,
        "pack_length": pack_length,
        "segments": n,
        "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0,
        "reports": reports,
    }


def reference(args, rows: int, length: int = 64, steps: int = 30) -> dict:
    """The model alone, compiled, on fixed random [rows, length] batches (no PAD, no masks; the
    LM plainly causal, at ``--ref-length``)."""
    lm = args.kind == "lm"
    length = args.ref_length if lm else length
    device = torch.device(args.device)
    cfg = ModelConfig(preset=args.preset, dropout=args.dropout, max_len=max(128, length))
    vocab = args.vocab_size or 8000
    torch.manual_seed(0)
    model = new_model(args.kind, cfg, vocab).to(device)
    step_model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device == "cuda")
    src, tgt_in, tgt_out = torch.randint(4, vocab, (3, rows, length), device=device)
    inputs = (tgt_in,) if lm else (src, tgt_in)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16)

    def step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(
                step_model(*inputs).flatten(0, 1).float(), tgt_out.flatten()
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # compile and warm up
        step()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    flops = step_flops(cfg, vocab, rows, 0 if lm else length, length)
    sides = 1 if lm else 2
    return {
        "mode": "reference",
        "batch": [rows, length],
        "params": model.num_params(),
        "step_ms": round(1000 * seconds, 2),
        "tokens_per_s": round(sides * rows * length / seconds),
        "tflops": round(flops / seconds / 1e12, 1),
        "mfu": round(flops / seconds / PEAK_BF16, 4),
        "mfu_6pt": round(6 * model.num_params() * rows * length / seconds / PEAK_BF16, 4),
        "mfu_6pt_all": round(
            6 * model.num_params() * sides * rows * length / seconds / PEAK_BF16, 4
        ),
    }


def profile(args, root: Path, path: Path) -> None:
    """Where a step's time goes: torch.profiler over 10 steps of run ``--profile``, top ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps, args.steps = args.steps, 10
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        one_run(args, *parse(args.profile), root)
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


def parse(spec: str) -> tuple[str, int, int]:
    """``mode:batch_tokens[:pack_length]`` -> (mode, batch_tokens, pack_length)."""
    mode, tokens, *pack = spec.split(":")
    return mode, int(tokens), int(pack[0]) if pack else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="translation", choices=["translation", "lm"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--preset", help="model preset (default: base; lm: gpt2)")
    p.add_argument("--vocab-size", type=int, help="tokenizer size (default: 8000; lm: 32000)")
    p.add_argument("--ref-length", type=int, default=1024, help="lm: the reference's row length")
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--dropout", type=float, default=0.1, help="the model's (residual) dropout")
    p.add_argument("--every", type=int, default=30, help="steps per timed interval")
    p.add_argument(
        "--runs",
        help="mode:batch_tokens[:pack_length], comma-separated (default: eager:65536,"
        "eager:65536:128,compile:65536:128,compile:131072:128; lm: compile:131072:1024)",
    )
    p.add_argument(
        "--reference", type=int, help="rows of the reference (0: skip; default 512, lm: 128)"
    )
    p.add_argument("--data-dir", help="corpus root (default: ../shared/data)")
    p.add_argument("--cache", help="prepared-data dir (default: a temp dir)")
    p.add_argument("--out", default="bench/out/gpu_check.json")
    p.add_argument("--profile", metavar="SPEC", help="also profile 10 steps of this run")
    args = p.parse_args()
    lm = args.kind == "lm"
    args.preset = args.preset or ("gpt2" if lm else "base")
    args.vocab_size = args.vocab_size or (32000 if lm else None)
    default_runs = (
        "compile:131072:1024"
        if lm
        else ("eager:65536,eager:65536:128,compile:65536:128,compile:131072:128")
    )
    args.runs = args.runs or default_runs
    args.reference = (128 if lm else 512) if args.reference is None else args.reference
    args.cache = args.cache or tempfile.mkdtemp(prefix="gpu-check-data-")
    result = {
        "kind": args.kind,
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "peak_tflops": PEAK_BF16 / 1e12,
        "dropout": args.dropout,
        "runs": [],
    }
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    specs = args.runs.split(",")
    jobs = [(spec, lambda spec=spec: one_run(args, *parse(spec), root)) for spec in specs]
    if args.reference:
        jobs.append((f"reference:{args.reference}", lambda: reference(args, args.reference)))
    for spec, job in jobs:
        try:
            run = job()
        except Exception as e:  # record and go on: one device call must bring back every run
            traceback.print_exc()
            run = {"spec": spec, "error": repr(e)}
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if args.profile:
        profile(args, root, out.with_name("gpu_profile.txt"))
    for run in result["runs"]:
        if "mfu" in run:
            shape = run.get("batch") or f"{run['batch_tokens']}:{run['pack_length']}"
            print(
                f"{run['mode']:>9} {shape!s:>12}: "
                f"{run['tokens_per_s']:>12,} tok/s  {run['step_ms']:7.1f} ms/step  "
                f"{run['tflops']:6.1f} TFLOP/s  MFU {run['mfu']:.1%} "
                f"(6PT target {run['mfu_6pt']:.1%}, all {run['mfu_6pt_all']:.1%})"
            )
    print(f"-> {out} (cpus {os.cpu_count()})")


if __name__ == "__main__":
    main()
