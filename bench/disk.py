"""Peak disk of a sweep's checkpoints: every checkpoint kept vs only those the tree needs.

    .venv/bin/python -m bench.disk            # ~6 min on 2 cores; writes bench/results/disk.json

Measured: the smoke sweep (512 tokens a step and one worker: what is on disk does not depend on
either) run twice on an embedded local Ray, ``keep_checkpoints: all`` (the baseline, what main
did) and ``needed``, sampling the bytes under ``<sweep>/segments`` every 0.2 s (the best-per-task
weights each trial end keeps are there too, the same in both). Computed: ``paper_fr_ro.yaml``
from its plan (the real ``Tree`` driven in simulated time, each segment starting when its fork
exists, one step per time unit, unlimited slots) and the measured size of one checkpoint of its
model (weights, AdamW state, and the best-per-task weights at other steps, one per task: the most
a checkpoint holds).
"""

from __future__ import annotations

import contextlib
import heapq
import io
import os
import threading
import time
from pathlib import Path

import torch

from bench.record import write_result
from ray_mtl.config import SpaceConfig, load
from ray_mtl.model import Transformer
from ray_mtl.plan import plan
from ray_mtl.scheduler import Tree
from ray_mtl.tune import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def tree_bytes(d: Path) -> int:
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            with contextlib.suppress(OSError):  # deleted between the listing and the stat
                total += os.path.getsize(os.path.join(root, f))
    return total


def measure(space: SpaceConfig, keep: str, storage: Path) -> dict:
    space.keep_checkpoints, space.storage = keep, str(storage / keep)
    sweep = Path(storage / keep / space.name)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_bytes(sweep / "segments"))
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    run_sweep(space, overwrite=True)
    stop.set()
    watcher.join()
    return {
        "peak_bytes": peak[0],
        "final_bytes": tree_bytes(sweep / "segments"),
        "checkpoints_left": len(list(sweep.glob("segments/*/checkpoint_*"))),
        "wall_s": time.perf_counter() - t0,
    }


def checkpoint_bytes(space: SpaceConfig, vocab: int) -> int:
    """One checkpoint of ``space``'s model at its largest: weights, AdamW moments, one
    best-per-task copy of the weights per task at another step."""
    model = Transformer(space.model, vocab)
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    weights = model.state_dict()
    state = {
        "model_state": weights,
        "optimizer": opt.state_dict(),
        "best_weights": {str(i): weights for i in range(len(space.tasks.all))},
    }
    buf = io.BytesIO()
    torch.save({k: v for k, v in state.items() if k != "best_weights"}, buf)
    once = buf.tell()
    return once + len(space.tasks.all) * sum(t.numel() * t.element_size() for t in weights.values())


def simulated_peak(space: SpaceConfig, collect: bool) -> dict:
    """Checkpoints alive at once when the tree runs with unlimited slots, one step a tick."""
    p = plan(space)
    tree = Tree(p.segments, slots=None, storage="", collect=collect)
    events: list[tuple[int, str, int]] = []

    def start(t: int) -> None:
        while (got := tree.suggest(f"t{len(tree.running)}-{t}")) is not None:
            for seg in got:
                s = p.segments[seg]
                every = space.checkpoint_every
                steps = set(s.fork_steps) | {s.end_step}
                if every:
                    steps |= set(range(s.start_step + every, s.end_step, every))
                for k in sorted(x for x in steps if s.start_step < x <= s.end_step):
                    heapq.heappush(events, (t + k - s.start_step, seg, k))

    start(0)
    alive, peak, total = set(), 0, 0
    while events:
        t, seg, k = heapq.heappop(events)
        tree.on_result({"segment": seg, "step": k, "checkpoint_path": f"/{seg}/{k}"})
        alive.add(f"/{seg}/{k}")
        total += 1
        alive -= set(tree.collectable())
        peak = max(peak, len(alive))
        start(t)
    return {"checkpoints_written": total, "peak_alive": peak, "left": len(alive)}


def main() -> None:
    out = ROOT / "bench" / "out" / "disk"
    smoke = load(SpaceConfig, ROOT / "tune_spaces" / "smoke.yaml")
    # What is on disk depends on the tree and the model, not on tokens per step or on workers.
    smoke.batch_tokens = 512
    smoke.resources.num_workers, smoke.resources.cpus_per_worker = 1, 0.9
    measured = {keep: measure(smoke, keep, out) for keep in ("all", "needed")}
    paper = load(SpaceConfig, ROOT / "tune_spaces" / "paper_fr_ro.yaml")
    size = checkpoint_bytes(paper, paper.data.vocab_size)
    computed = {}
    for keep, collect in (("all", False), ("needed", True)):
        sim = simulated_peak(paper, collect)
        computed[keep] = sim | {"peak_bytes": sim["peak_alive"] * size}
    doc = {
        "smoke_measured": measured,
        "paper_fr_ro_computed": {"checkpoint_bytes": size, **computed},
        "ratio_smoke_peak": measured["all"]["peak_bytes"]
        / max(measured["needed"]["peak_bytes"], 1),
        "ratio_paper_peak": computed["all"]["peak_bytes"]
        / max(computed["needed"]["peak_bytes"], 1),
    }
    path = write_result("disk", doc)
    for name, m in measured.items():
        mb = {k: f"{m[k] / 1e6:.1f} MB" for k in ("peak_bytes", "final_bytes")}
        print(f"smoke, keep {name}: peak {mb['peak_bytes']}, left {mb['final_bytes']}")
    for name, c in computed.items():
        alive = f"{c['peak_alive']} of {c['checkpoints_written']}"
        print(
            f"paper_fr_ro, keep {name}: {alive} checkpoints alive at the peak, "
            f"{c['peak_bytes'] / 1e9:.1f} GB"
        )
    ratios = f"smoke {doc['ratio_smoke_peak']:.2f}x, paper {doc['ratio_paper_peak']:.2f}x"
    print(f"peak ratio all/needed: {ratios}")
    print(path)


if __name__ == "__main__":
    main()
