"""Time ``prepare`` on all five shipped pairs: a cold build in a fresh dir, then a warm re-run.

    .venv/bin/python -m bench.prepare          # from the project root -> bench/results/prepare.json

Goal: cold <= 60 s on 2 cores; warm (cache hit) < 2 s. The ratio warm/cold is printed.
"""

from __future__ import annotations

import tempfile
import time

from bench.record import write_result
from ray_mtl.config import DataConfig
from ray_mtl.data import prepare, table

TASKS = ["eng-deu", "eng-fra", "eng-spa", "eng-ron", "eng-ind"]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as out:
        cfg = DataConfig(tasks=TASKS, out_dir=out)
        start = time.perf_counter()
        data = prepare(cfg)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        again = prepare(cfg, verbose=False)
        warm = time.perf_counter() - start
        assert again.built == [] and again.root == data.root
        counts = data.manifest["tasks"]
        raw = sum(c["counts"]["raw"] for c in counts.values())
        result = dict(
            tasks=TASKS,
            cold_s=round(cold, 2),
            warm_s=round(warm, 3),
            warm_over_cold=round(warm / cold, 4),
            raw_pairs=raw,
            train_pairs=sum(c["counts"]["train"] for c in counts.values()),
            pairs_per_s=round(raw / cold),
            vocab_size=data.vocab_size,
        )
        print(table(data))
    path = write_result("prepare", result)
    print(
        f"cold {cold:.1f} s ({raw / cold:,.0f} pairs/s), warm {warm:.2f} s, "
        f"warm/cold {warm / cold:.4f} -> {path}"
    )


if __name__ == "__main__":
    main()
