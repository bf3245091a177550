"""Sweeps whose storage is a URI: a real S3 API on localhost (moto_server) and ``file://``.

    .venv/bin/python -m pytest -q tests/test_storage_sweep.py

A two-segment sweep runs through the real CLI with ``--storage s3://...?endpoint_override=...``:
checkpoints, rows, trials, frontier and report all land in the bucket, and ``--resume`` from
that URI works. A storage that cannot be reached, or a missing bucket, is refused before
anything starts, naming the URI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from conftest import sized_space

from ray_mtl.storage import filesystem, join, read_text
from ray_mtl.tune import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_spaces" / "smoke.yaml"


def listing(uri: str) -> list[str]:
    """Every file under ``uri``, relative to it."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path[len(path) + 1 :] for i in infos if i.type == pafs.FileType.File)


def small_space(tmp_path: Path) -> Path:
    """The test smoke space cut to one trunk and one branch (two segments)."""
    grid = {"pretrain_steps": [50], "finetune_steps": 50, "low_rates": [0.3], "seeds": [0]}
    return sized_space(tmp_path, "tiny", methods=["two_phase"], grid=grid, eval={"every": 25})


@pytest.mark.slow
def test_sweep_on_s3_then_resume(ray_session, shared_data, s3, tmp_path, capsys):
    storage = f"s3://ray-mtl/runs?{s3}"
    sweep = f"s3://ray-mtl/runs/tiny?{s3}"
    assert main(["--space", str(small_space(tmp_path)), "--storage", storage]) == 0
    files = listing(sweep)
    for name in ("space.yaml", "plan.json", "results.json", "tree_state.json", "timeline.json"):
        assert name in files
    for name in ("metrics.parquet", "trials.parquet", "frontier.json", "frontier.parquet"):
        assert name in files
    assert {"report/index.html", "report/fronts.png", "report/frontier.json"} <= set(files)
    plan = json.loads(read_text(join(sweep, "plan.json")))
    for seg in plan["segments"]:
        assert f"segments/{seg['id']}/metrics.parquet" in files
    states = [f for f in files if f.startswith("segments/") and f.endswith("/state.pt")]
    assert len(states) >= len(plan["segments"])  # every segment's last checkpoint, in the bucket
    assert f"report: {sweep.replace('?', '/report/index.html?')}" in capsys.readouterr().out

    assert main(["--resume", sweep]) == 0  # finished: nothing to train, the report again
    assert "report/index.html" in listing(sweep)


def test_sweep_on_a_file_uri(smoke_sweep):
    """The session's smoke sweep ran with ``--storage file://...``: its files are where a path
    would have put them."""
    assert (smoke_sweep / "report" / "index.html").is_file()
    assert (smoke_sweep / "trials.parquet").is_file()
    assert (smoke_sweep / "segments" / "pt-s0" / "metrics.parquet").is_file()
    assert yaml.safe_load((smoke_sweep / "space.yaml").read_text())["name"] == "smoke"


def test_unreachable_storage_is_refused_before_anything_runs(tmp_path, capsys):
    from conftest import free_port

    uri = f"s3://ray-mtl/runs?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    assert main(["--space", str(SMOKE), "--storage", uri]) == 2
    err = capsys.readouterr().err
    assert "s3://ray-mtl/runs/smoke?endpoint_override=" in err and "cannot reach storage" in err


def test_missing_bucket_is_refused(s3, capsys):
    assert main(["--space", str(SMOKE), "--storage", f"s3://no-such-bucket/x?{s3}"]) == 2
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket' not found" in err and "s3://no-such-bucket/x/smoke?" in err
