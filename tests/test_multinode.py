"""A sweep on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``) with shared storage.

Three nodes on this machine: a head with no CPUs (the sweep's driver), and two 1-CPU worker
nodes (a Train worker takes 0.9 CPU, so each fits one beside a few trial drivers). While the
trunk trains on one worker node, its branch must land on the other, and it finds its fork
checkpoint through the shared storage path (as on NFS or S3 in a cluster). The cluster runs in
a child process: one Ray per process, and the session fixture may hold ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SPACE = """
name: multinode
tasks: {high: [eng-fra], low: [eng-ron]}
methods: [two_phase]
grid: {pretrain_steps: [10, 150], finetune_steps: 10, low_rates: [0.5]}
data: {max_pairs: 3000, vocab_size: 500, out_dir: %(cache)s}
model: {preset: small, dropout: 0.0}
optim: {warmup_steps: 5}
batch_tokens: 1024
eval: {every: 1000, pairs: 50, bleu_pairs: 0, test_at_end: false}
resources: {num_workers: 1, cpus_per_worker: 0.9}
"""

DRIVER = """
import sys, ray
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args=dict(
    num_cpus=0, object_store_memory=100 * 2**20, include_dashboard=False))
for _ in range(2):
    cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
ray.init(address=cluster.address, log_to_driver=False)
from ray_mtl.tune import main
rc = main(["--space", sys.argv[1], "--storage", sys.argv[2], "--no-report"])
ray.shutdown()
cluster.shutdown()
sys.exit(rc)
"""


@pytest.mark.slow
def test_branch_on_another_node_finds_its_fork(tmp_path, shared_data):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE % {"cache": tmp_path / "cache"})
    storage = tmp_path / "shared-storage"
    env = os.environ | {"RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp")}
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DRIVER), str(space), str(storage)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    timeline = json.loads((storage / "multinode" / "timeline.json").read_text())
    trunk, branch = timeline["pt-s0"], timeline["tp-L10-w0.5-s0"]
    assert branch["start"] < trunk["end"], "the branch should start while its trunk trains"
    assert branch["node"] != trunk["node"], "...and so on the other worker node"
    # the branch really started from the fork: its rows begin after step 10
    import pyarrow.parquet as pq

    rows = pq.read_table(storage / "multinode" / "segments" / "tp-L10-w0.5-s0" / "metrics.parquet")
    assert min(rows.column("step").to_pylist()) > 10
    trials = pq.read_table(storage / "multinode" / "trials.parquet").to_pylist()
    assert {t["status"] for t in trials} == {"finished"}
