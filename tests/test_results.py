"""The results module's pure parts: trial status from segment progress, rows keyed by step.

.venv/bin/python -m pytest -q tests/test_results.py
"""

from __future__ import annotations

import pyarrow.parquet as pq

from ray_mtl.results import SegmentRows, metric_rows, trial_status

TRUNK_THEN_BRANCH = [
    {"segment": "pt", "from_step": 0, "to_step": 100},
    {"segment": "tp", "from_step": 100, "to_step": 200},
]


def test_trial_status_follows_its_lineage():
    status = lambda ends, diverged={}, failed=set(): trial_status(  # noqa: E731
        TRUNK_THEN_BRANCH, ends, diverged, failed
    )
    assert status({}) == "pending"
    assert status({"pt": 50}) == "running"
    assert status({"pt": 200, "tp": 200}) == "finished"
    # The trunk diverged after the fork: this trial's piece of it (0..100) is fine.
    assert status({"pt": 150, "tp": 200}, diverged={"pt": 150}) == "finished"
    assert status({"pt": 80}, diverged={"pt": 80}) == "diverged"  # before the fork: never runs
    assert status({"pt": 200, "tp": 150}, diverged={"tp": 150}) == "diverged"
    pruned = {"tp": 150}  # stopped at a rung: its trial has ended, not failed
    assert trial_status(TRUNK_THEN_BRANCH, {"pt": 200, "tp": 150}, {}, set(), pruned) == "pruned"
    assert trial_status(TRUNK_THEN_BRANCH, {"pt": 200, "tp": 200}, {}, set(), {"pt": 200}) == (
        "finished"  # a trunk stopped past this trial's piece of it
    )
    assert status({"pt": 200, "tp": 120}, failed={"tp"}) == "failed"
    assert status({"pt": 200, "tp": 200}, failed={"tp"}) == "finished"  # failed after its end


def test_segment_rows_replace_a_repeated_step_and_keep_earlier_rows(tmp_path):
    template = str(tmp_path / "{segment}" / "metrics.parquet")
    rows = SegmentRows(template)
    rows.add({"segment": "s", "step": 10, "dev/a/ce": 3.0, "lr": 0.1})
    rows.add({"segment": "s", "step": 20, "dev/a/ce": 2.0, "lr": 0.1})
    again = SegmentRows(template)  # a restarted run: the rows before its checkpoint stay
    again.add({"segment": "s", "step": 20, "dev/a/ce": 2.5, "lr": 0.1})
    table = pq.read_table(tmp_path / "s" / "metrics.parquet").to_pandas()
    ce = table[table.metric == "ce"].set_index("step")["value"].to_dict()
    assert ce == {10: 3.0, 20: 2.5}


def test_metric_rows_keep_numbers_and_the_divergence_flag():
    rows = metric_rows("s", {"step": 5, "dev/a/ce": float("nan"), "diverged": 1, "x": "sig"})
    assert {(r["task"], r["metric"]) for r in rows} == {("a", "ce"), ("*", "diverged")}


def test_rows_replaced_while_read_are_read_whole(tmp_path):
    """A running sweep renames each segment's rows file over the last at every report; a reader
    (the live report) sees one version whole, never "Page was smaller than expected"."""
    import threading

    from ray_mtl.results import write_rows
    from ray_mtl.storage import read_parquet

    uri = str(tmp_path / "metrics.parquet")
    versions = [metric_rows("pt", {"step": s, "dev/a/ce": 1.0, "lr": 0.1}) * s for s in (1, 7)]
    write_rows(uri, versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            write_rows(uri, versions[i % 2])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        lengths = {read_parquet(uri).num_rows for _ in range(300)}
    finally:
        stop.set()
        thread.join()
    assert lengths <= {len(v) for v in versions}


def test_trials_name_the_code_of_the_sweep_start_and_of_each_resume(tmp_path):
    """A sweep records the code it started with; a resume under other code adds its version,
    under the same code nothing; every trial names them in order."""
    import json

    import pandas as pd

    from ray_mtl.results import code_version, read_meta, trials_table, write_meta

    sweep = str(tmp_path)
    write_meta(sweep, "toy", "h")
    write_meta(sweep, "toy", "h")  # resumed, same code
    assert read_meta(sweep)["code_versions"] == [code_version()]
    meta = json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps(meta | {"code_versions": ["0abc"]}))
    write_meta(sweep, "toy", "h")  # resumed under the code of now, after "0abc"
    meta = read_meta(sweep)
    assert meta["code_versions"] == ["0abc", code_version()]
    trial = {"id": "t", "method": "scalarization", "L": 0, "F": 4, "seed": 0}
    trial |= {"w": 0.5, "temperature": None, "max_epochs": None}
    trial["lineage"] = [{"segment": "s", "from_step": 0, "to_step": 4}]
    rows = trials_table({"trials": [trial]}, pd.DataFrame(), set(), meta)
    assert rows.code_version.tolist() == [f"0abc then {code_version()}"]
    assert rows.manifest_hash.tolist() == ["h"]
