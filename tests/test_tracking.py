"""TensorBoard runs per trial, read back with TensorBoard's own reader."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_frontier import toy  # noqa: F401  (the fixture: a trunk, a branch, a partial branch)

from ray_mtl.results import load_results
from ray_mtl.tracking import main, write_tensorboard


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_one_run_per_trial_over_its_lineage(toy, tmp_path):  # noqa: F811
    out = write_tensorboard(load_results(toy), str(tmp_path / "tb"))
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["run", "sc", "tp"]
    tp = scalars(f"{out}/tp")
    # The branch's curve from step 0: the trunk's steps up to its fork at 10, then its own.
    assert [s for s, _ in tp["dev/eng-fra/ce"]] == [0, 10, 20, 30]
    assert [v for _, v in tp["dev/eng-fra/ce"]] == pytest.approx([5.0, 3.9, 3.5, 3.6])
    assert {"dev/eng-ron/ce", "dev/eng-ron/chrf", "train/lr"} <= set(tp)
    assert [v for _, v in scalars(f"{out}/sc")["dev/eng-ron/ce"]] == pytest.approx([6.0, 5.0, 5.5])
    # Written again, each trial's run is replaced, not doubled.
    assert main([str(toy), "--out", str(tmp_path / "tb")]) == 0
    assert len(scalars(f"{out}/tp")["dev/eng-fra/ce"]) == 4


def test_one_mlflow_run_per_trial_read_back_with_mlflow(toy, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    for _ in range(2):  # written again: each trial's earlier run is replaced
        assert main([str(toy), "--out", str(tmp_path / "tb"), "--mlflow", uri]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("toy")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["run", "sc", "tp"]
    tp = runs["tp"]
    assert tp.data.params["method"] == "two_phase" and tp.data.params["L"] == "10"
    history = client.get_metric_history(tp.info.run_id, "dev/eng-fra/ce")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 5.0), (10, 3.9), (20, 3.5), (30, 3.6)
    ]  # fmt: skip


def test_an_unreachable_mlflow_server_is_named_before_anything_runs(toy, tmp_path):  # noqa: F811
    from ray_mtl.errors import UserError
    from ray_mtl.tracking import check_mlflow

    with pytest.raises(UserError, match=r"cannot reach the tracking server http://127\.0\.0\.1:9"):
        check_mlflow("http://127.0.0.1:9", str(tmp_path))
    with pytest.raises(UserError, match="true keeps a local store"):
        check_mlflow(True, "s3://bucket/sweeps")
