"""Faults injected for real: SIGKILLed writers, a killed Ray Train worker, a killed sweep driver.

    .venv/bin/python -m pytest -q tests/test_faults.py

- Writes: a child process rewriting a large Parquet file and writing checkpoints through
  ``ray_mtl.storage`` / ``checkpoint.save_dir`` is SIGKILLed at random moments while a reader
  keeps reading; every file it left is absent or whole, and the reader never saw a torn one.
- Worker: a Ray Train worker is SIGKILLed mid-segment; the run recovers from its latest
  checkpoint and ends with the same weights and dev CE as an uninterrupted run (deterministic
  CPU), with every eval step in metrics.parquet exactly once.
- Driver: ``python -m ray_mtl.tune`` is SIGKILLed with one segment finished and another running,
  then ``--resume``d: nothing finished runs again, every trial finishes, no row is lost or doubled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch

from ray_mtl import checkpoint, ray_train, train, tune
from ray_mtl.config import (
    DataConfig,
    EvalConfig,
    MixtureConfig,
    ModelConfig,
    OptimConfig,
    PhaseConfig,
    ResourcesConfig,
    TrainConfig,
)
from ray_mtl.results import TIMINGS
from ray_mtl.storage import read_parquet

ROOT = Path(__file__).resolve().parents[1]
KEY = ["segment", "step", "task", "split", "metric"]

# ----------------------------------------------------------------------------- crash during writes

WRITER = r"""
import sys, time
import pyarrow as pa, torch
from ray_mtl.storage import atomic_write_parquet
from ray_mtl.checkpoint import save_dir as save_checkpoint_dir

out = sys.argv[1]
print("ready", flush=True)
for i in range(10**9):
    n = 200_000
    atomic_write_parquet(f"{out}/big.parquet", pa.table({
        "version": pa.array([i] * n, pa.int64()),
        "row": pa.array(range(n), pa.int64()),
        "text": pa.array([f"row {r} of version {i}" for r in range(n)]),
    }))
    save_checkpoint_dir(f"{out}/ckpt/step_{i:06d}", {
        "step": i, "model": {"d": 1}, "vocab_size": 7, "manifest_hash": str(i),
        "model_state": {"w": torch.full((1024, 1024), float(i))},
    })
"""


KILLS = 5


def check_parquet(path: Path) -> int:
    """A whole big.parquet: every row of one version. Returns the version."""
    t = pq.read_table(path)
    versions = set(t.column("version").to_pylist())
    assert t.num_rows == 200_000 and len(versions) == 1, (t.num_rows, versions)
    assert t.column("row").to_pylist() == list(range(200_000))
    return versions.pop()


def check_checkpoint(d: Path) -> None:
    """state.pt absent or whole (weights_only); meta.json absent or naming the same step."""
    state_file, meta_file = d / checkpoint.STATE_FILE, d / checkpoint.META_FILE
    if not state_file.exists():
        assert not meta_file.exists(), d  # meta is written after the state
        return
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    w = state["model_state"]["w"]
    assert w.shape == (1024, 1024) and bool((w == state["step"]).all()), d
    if meta_file.exists():
        assert json.loads(meta_file.read_text())["step"] == state["step"]


def test_sigkill_during_writes_leaves_whole_files(tmp_path):
    rng = random.Random(0)
    stop, seen, errors = threading.Event(), set(), []

    def reader() -> None:  # reads while the writer replaces the file under it
        while not stop.is_set():
            try:
                if (tmp_path / "big.parquet").exists():
                    seen.add(check_parquet(tmp_path / "big.parquet"))
            except FileNotFoundError:
                pass
            except Exception as e:  # a torn read: recorded, the test fails below
                errors.append(repr(e))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    kills = 0
    try:
        for _ in range(KILLS):
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(tmp_path)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.2, 1.5))
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            kills += 1
            if (tmp_path / "big.parquet").exists():
                check_parquet(tmp_path / "big.parquet")
            for d in sorted((tmp_path / "ckpt").glob("step_*")):
                check_checkpoint(d)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert kills == KILLS and not errors, errors[:3]
    # Some writes completed and some were cut: the kills landed mid-write, not between runs.
    assert seen and list((tmp_path / "ckpt").glob("step_*"))
    # A kill mid-write leaves its temp file (hidden, never the target's name): proof they landed.
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert all(p.startswith(".") for p in leftovers), leftovers


# ----------------------------------------------------------------------------- worker fault


STEPS, EVERY = (30, 30), 5  # pre-train then fine-tune with a reset; eval every 5 steps


def fault_config(data_cfg: DataConfig, run_dir: Path) -> TrainConfig:
    pre = MixtureConfig(rule="explicit", rates={"eng-fra": 1.0})
    joint = MixtureConfig(rule="explicit", rates={"eng-fra": 0.5, "eng-ron": 0.5})
    return TrainConfig(
        phases=[
            PhaseConfig(steps=STEPS[0], mixture=pre, name="pretrain"),
            PhaseConfig(steps=STEPS[1], mixture=joint, reset=True, name="finetune"),
        ],
        data=data_cfg,
        model=ModelConfig(preset="tiny", dropout=0.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=8),
        eval=EvalConfig(every=EVERY, pairs=64, bleu_pairs=0, test_at_end=True),
        resources=ResourcesConfig(num_workers=1, cpus_per_worker=1.0),
        batch_tokens=1024,
        checkpoint_every=10,
        max_failures=2,
        seed=0,
        run_dir=str(run_dir),
    )


def max_step(uri: Path) -> int:
    try:
        return max(read_parquet(str(uri)).column("step").to_pylist(), default=0)
    except FileNotFoundError:
        return 0


def checkpoint_steps(root: Path, segment: str | None = None) -> list[int]:
    """Steps of the checkpoint dirs under ``root`` (Ray Train run dirs), registered or not;
    ``segment``'s only, if given (a run may train several)."""
    metas = [json.loads(m.read_text()) for m in root.rglob(checkpoint.META_FILE)]
    return sorted(m["step"] for m in metas if segment in (None, m["segment"]))


def assert_resumed_from_latest(root: Path, segment: str, expected: list[int]) -> None:
    """Work redone after a kill starts at the latest recorded checkpoint: at most one step is
    checkpointed twice (one the dead worker had written but not yet reported), never more."""
    steps = checkpoint_steps(root, segment)
    twice = [s for s in set(steps) if steps.count(s) > 1]
    assert sorted(set(steps)) == expected and len(twice) <= 1 and steps.count(expected[0]) == 1


def our_processes(marker: str) -> list[psutil.Process]:
    """Descendants of this test process whose title names ``marker`` (never anyone else's)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_worker_sigkill_recovers_exactly(ray_session, data_cfg, tmp_path):
    """A chain of two segments, its workers killed mid-way through the second: the first is not
    trained again, and the second goes on from its latest checkpoint to the same result."""
    end = sum(STEPS)
    ref_cfg = fault_config(data_cfg, tmp_path / "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker (cpus_per_worker = 1)
    try:
        reference = train.run(ref_cfg)
    finally:
        torch.set_num_threads(threads)

    cfg = fault_config(data_cfg, tmp_path / "faulty")
    rows = tmp_path / "faulty" / "metrics.parquet"
    first = fault_config(data_cfg, tmp_path / "first")
    first.phases = first.phases[:1]
    first.phases[0].steps = 5
    first.seed = 1
    first_rows = tmp_path / "first" / "metrics.parquet"
    killed: dict = {}

    def kill_mid_segment() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and max_step(rows) < 25:
            time.sleep(0.05)
        workers = our_processes("RayTrainWorker")
        killed["step"], killed["pids"] = max_step(rows), [w.pid for w in workers]
        killed["first"] = first_rows.stat().st_mtime_ns
        for w in workers:
            os.kill(w.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_segment, daemon=True)
    killer.start()
    trainer = ray_train.ray_trainer(
        {"first": first, "faulty": cfg},
        name="chain",
        storage_path=str(tmp_path),
        callbacks=(ray_train.RowsCallback(str(tmp_path / "{segment}" / "metrics.parquet")),),
    )
    result = trainer.fit()
    killer.join(timeout=10)
    assert result.error is None
    # The kill landed mid-segment, on a live worker, after a checkpoint and before the end.
    assert len(killed["pids"]) == 1 and 20 <= killed["step"] < end, killed
    assert not psutil.pid_exists(killed["pids"][0])
    # One run dir holds both segments' checkpoints: the first's end once, not trained again.
    assert_resumed_from_latest(tmp_path / "chain", "faulty", [10, 20, 30, 40, 50, 60])
    assert checkpoint_steps(tmp_path / "chain", "first") == [5]
    assert first_rows.stat().st_mtime_ns == killed["first"]

    final = torch.load(
        Path(result.checkpoint.path) / checkpoint.STATE_FILE, map_location="cpu", weights_only=True
    )
    ref_final = torch.load(
        tmp_path / "reference" / "checkpoints" / f"step_{end:08d}" / checkpoint.STATE_FILE,
        map_location="cpu",
        weights_only=True,
    )
    assert final["step"] == end
    for k, v in ref_final["model_state"].items():
        assert torch.equal(final["model_state"][k], v), k
    assert final["best"] == ref_final["best"]

    got = pq.read_table(rows).to_pandas()
    assert not got.duplicated(KEY).any()
    assert sorted(got["step"].unique()) == list(range(EVERY, end + 1, EVERY))
    # Every row but timings equals the uninterrupted run's: dev/test CE, losses, accounting.
    ref = pq.read_table(tmp_path / "reference" / "metrics.parquet").to_pandas()
    on = ["step", "task", "split", "metric"]
    both = got.merge(ref, on=on, how="outer", suffixes=("", "_ref"), indicator=True)
    both = both[~both.metric.isin(TIMINGS)]
    assert (both["_merge"] == "both").all(), both[both["_merge"] != "both"]
    differ = both[both.value != both.value_ref]
    assert differ.empty, differ[[*on, "value", "value_ref"]]
    last_ce = both[(both.step == end) & (both.split == "dev") & (both.metric == "ce")]
    assert sorted(last_ce.value) == sorted(reference[f"dev/{t}/ce"] for t in ("eng-fra", "eng-ron"))


# ----------------------------------------------------------------------------- driver fault


def experiment_status(sweep: Path) -> dict[str, str]:
    """Segment -> its Tune trial's status, from the newest experiment state the driver saved and
    the tree state (which segments each trial was handed)."""
    states = sorted((sweep / "tune").glob("experiment_state-*.json"))
    if not states or not (sweep / "tree_state.json").is_file():
        return {}
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
        issued = json.loads((sweep / "tree_state.json").read_text())["issued"]
    except (OSError, ValueError, KeyError):  # being rewritten right now
        return {}
    out = {}
    for data, _ in trials:
        t = json.loads(data)
        for seg in issued.get(t["trial_id"], []):
            out[seg] = t["status"]
    return out


def segment_files(sweep: Path, segment: str) -> dict[Path, int]:
    """A segment's rows and checkpoint files (whichever trial's run they are in) -> mtime."""
    dirs = [sweep / "segments" / segment]
    for meta in (sweep / "segments").rglob(checkpoint.META_FILE):
        if json.loads(meta.read_text())["segment"] == segment:
            dirs.append(meta.parent)
    return {p: p.stat().st_mtime_ns for d in dirs for p in d.rglob("*")}


def rows_by_segment(sweep: Path) -> dict:
    out = {}
    for f in sweep.glob("segments/*/metrics.parquet"):
        out[f.parent.name] = read_parquet(str(f)).to_pandas()  # one handle: the file is live
    return out


def kill_driver(driver: subprocess.Popen, ray_tmpdir: str) -> int:
    """SIGKILL a sweep driver and the Ray it started: its process tree, plus any process whose
    environment points at its own RAY_TMPDIR (nobody else's). Returns how many were killed."""
    if driver.poll() is not None:
        return 0
    procs = {p.pid: p for p in psutil.Process(driver.pid).children(recursive=True)}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid not in procs and p.environ().get("RAY_TMPDIR") == ray_tmpdir:
                procs[p.pid] = p
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(procs.values()), timeout=30)
    return 1 + len(procs)


def tune_cli(args: list[str], ray_tmpdir: str, log: Path) -> subprocess.Popen:
    env = os.environ | {
        "RAY_TMPDIR": ray_tmpdir,  # its own embedded Ray, found by this dir alone
        "TUNE_GLOBAL_CHECKPOINT_S": "1",  # save the experiment state often
        "PYTHONPATH": str(ROOT),
    }
    env.pop("RAY_ADDRESS", None)  # never join another cluster
    return subprocess.Popen(
        [sys.executable, "-m", "ray_mtl.tune", *args, "--no-report"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def short_dir():
    """Short temp dirs for Ray (AF_UNIX paths must fit 107 bytes), removed afterwards."""
    made = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="rd", dir="/tmp"))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def driver_space(data_cfg: DataConfig, tmp_path: Path, **fields) -> dict:
    """A small two-task space on the prepared test data, written to ``tmp_path/space.yaml``;
    its sweep goes to ``tmp_path/runs/<name>``."""
    import yaml

    space = (
        dict(
            tasks={"high": ["eng-fra"], "low": ["eng-ron"]},
            data=dict(
                data_dir=data_cfg.data_dir,
                out_dir=data_cfg.out_dir,
                max_pairs=data_cfg.max_pairs,
                vocab_size=data_cfg.vocab_size,
            ),
            model={"preset": "tiny", "dropout": 0.0},
            optim={"lr": 0.003, "warmup_steps": 8},
            eval={"every": 10, "pairs": 64, "bleu_pairs": 0},
            resources={"num_workers": 1, "cpus_per_worker": 0.5},
            batch_tokens=1024,
            max_concurrent=2,
            storage=str(tmp_path / "runs"),
        )
        | fields
    )
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return space


def test_driver_sigkill_then_resume(data_cfg, tmp_path, short_dir):
    space = driver_space(
        data_cfg,
        tmp_path,
        name="drv",
        methods=["two_phase"],
        grid={"pretrain_steps": [20], "finetune_steps": 80, "low_rates": [0.3, 0.5]},
        checkpoint_every=20,
        keep_checkpoints="all",  # the checks below read which checkpoints were written
        prune={"rule": "rank", "eta": 2},  # rungs at 40 and 60: decisions on both sides of the kill
    )
    sweep = tmp_path / "runs" / "drv"
    ray_tmpdir = short_dir()

    driver = tune_cli(["--space", str(tmp_path / "space.yaml")], ray_tmpdir, tmp_path / "1.log")
    try:
        # Kill once Tune has recorded the trunk as finished and a branch is past a checkpoint.
        deadline, running = time.time() + 240, None
        while time.time() < deadline and driver.poll() is None and not running:
            status = experiment_status(sweep)
            steps = {s: int(df.step.max()) for s, df in rows_by_segment(sweep).items()}
            # step 50 reported: the step-40 checkpoint was recorded a report earlier
            mid = [s for s in steps if s != "pt-s0" and 50 <= steps[s] < 100]
            if steps.get("pt-s0") == 20 and status.get("pt-s0") and mid:
                running = mid[0]
            else:
                time.sleep(0.2)
        trunk = segment_files(sweep, "pt-s0")
        before = rows_by_segment(sweep)
        decided = json.loads((sweep / "tree_state.json").read_text())["decisions"]
        killed = kill_driver(driver, ray_tmpdir)
    finally:
        kill_driver(driver, ray_tmpdir)
    assert running and killed, (tmp_path / "1.log").read_text()[-3000:]
    assert max(int(df.step.max()) for s, df in before.items() if s != "pt-s0") < 100

    ray_tmpdir = short_dir()
    resumed = tune_cli(["--resume", str(sweep)], ray_tmpdir, tmp_path / "2.log")
    try:
        rc = resumed.wait(timeout=300)
    finally:
        kill_driver(resumed, ray_tmpdir)
    assert rc == 0, (tmp_path / "2.log").read_text()[-3000:]

    # Nothing finished ran again: the trunk's files (rows, checkpoints) are untouched.
    assert segment_files(sweep, "pt-s0") == trunk
    # The branch cut short went on from its own latest checkpoint, not from its fork.
    tree = json.loads((sweep / "tree_state.json").read_text())
    last = tree["pruned"].get(running, 100)
    assert_resumed_from_latest(
        sweep / "segments", running, [s for s in (40, 60, 80, 100) if s <= last]
    )
    # Every pruning decision made before the kill stands, and no branch was judged twice.
    assert decided and tree["decisions"].items() >= decided.items()
    for points in tree["rung_points"].values():
        assert len({seg for seg, _ in points}) == len(points)
    # Every trial ended, each segment exactly once in Tune.
    status = experiment_status(sweep)
    plan = json.loads((sweep / "plan.json").read_text())
    assert status == {s["id"]: "TERMINATED" for s in plan["segments"]}
    # Rows: unique, no eval step missing against the plan, nothing seen before the kill lost.
    rows = pq.read_table(sweep / "metrics.parquet").to_pandas()
    assert not rows.duplicated(KEY).any()
    every = space["eval"]["every"]
    for seg in plan["segments"]:
        start = seg["start_step"]
        end = tree["pruned"].get(seg["id"], start + sum(p["steps"] for p in seg["phases"]))
        want = {s for s in range(start + 1, end + 1) if s % every == 0}
        want |= {s for s in seg["fork_steps"] + seg["eval_steps"] if start < s <= end} | {end}
        assert set(rows[rows.segment == seg["id"]].step) == want, seg["id"]
    for seg, df in before.items():
        df = df[~df.metric.isin(TIMINGS)]
        merged = df.merge(rows, on=KEY, how="left", suffixes=("", "_after"))
        assert merged.value_after.notna().all(), f"{seg}: rows lost"
        assert (merged.value == merged.value_after).all(), f"{seg}: rows changed"
    trials = pq.read_table(sweep / "trials.parquet").to_pandas()
    assert set(trials.trial[trials.status != "finished"]) == set(tree["pruned"])


def test_ctrl_c_then_resume(data_cfg, tmp_path, short_dir, capsys):
    """Ctrl-C (SIGINT) of a running sweep exits non-zero with the project's own --resume line;
    a second sweep in the same dir is refused while it runs (--overwrite too). The interrupt
    lands the moment the trunk's rows for its fork checkpoint are on storage: Tune may not have
    recorded that checkpoint yet, and no row may be lost. A moved copy is refused on resume,
    naming where it was written; the sweep resumes where it was written with --max-concurrent 1,
    and every trial finishes, each row once."""
    driver_space(
        data_cfg,
        tmp_path,
        name="intr",
        methods=["two_phase", "scalarization"],
        grid={"pretrain_steps": [20], "finetune_steps": 40, "low_rates": [0.5]},
    )
    sweep = tmp_path / "runs" / "intr"
    ray_tmpdir = short_dir()
    driver = tune_cli(["--space", str(tmp_path / "space.yaml")], ray_tmpdir, tmp_path / "1.log")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None and not rows_by_segment(sweep):
            time.sleep(0.2)
        assert rows_by_segment(sweep), (tmp_path / "1.log").read_text()[-3000:]
        for extra in ([], ["--overwrite"]):
            assert tune.main(["--space", str(tmp_path / "space.yaml"), *extra]) == 2
            assert "a sweep is running in this dir" in capsys.readouterr().err
        rows = sweep / "segments" / "pt-s0" / "metrics.parquet"
        while time.time() < deadline and driver.poll() is None and max_step(rows) < 20:
            time.sleep(0.02)
        before = rows_by_segment(sweep)
        os.kill(driver.pid, signal.SIGINT)
        rc = driver.wait(timeout=120)
    finally:
        kill_driver(driver, ray_tmpdir)
    log = (tmp_path / "1.log").read_text()
    assert rc == 130, log[-3000:]
    assert f"python -m ray_mtl.tune --resume {sweep}" in log
    assert not (sweep / "lock").exists() and not (sweep / "report").exists()

    moved = tmp_path / "elsewhere" / "intr"
    moved.parent.mkdir()
    sweep.rename(moved)
    assert tune.main(["--resume", str(moved)]) == 2
    assert f"this sweep was written at {sweep}" in capsys.readouterr().err
    moved.rename(sweep)
    ray_tmpdir = short_dir()
    resumed = tune_cli(
        ["--resume", str(sweep), "--max-concurrent", "1"], ray_tmpdir, tmp_path / "2.log"
    )
    try:
        rc = resumed.wait(timeout=300)
    finally:
        kill_driver(resumed, ray_tmpdir)
    assert rc == 0, (tmp_path / "2.log").read_text()[-3000:]
    assert json.loads((sweep / "tree_state.json").read_text())["slots"] == 1
    trials = pq.read_table(sweep / "trials.parquet").to_pandas()
    assert (trials.status == "finished").all()
    after = pq.read_table(sweep / "metrics.parquet").to_pandas()
    assert not after.duplicated(KEY).any()
    for seg, df in before.items():
        kept = df[df.metric != "tokens_per_s"].merge(after, on=KEY, how="left")
        assert kept.value_y.notna().all(), f"{seg}: rows lost"
