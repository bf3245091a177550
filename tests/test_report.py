"""The report and the notebook on a small hand-made sweep (two methods, shared segments).

.venv/bin/python -m pytest -q tests/test_report.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_frontier import write_sweep

from ray_mtl.report import FIGURES, main

ROOT = Path(__file__).resolve().parents[1]
EVAL_EVERY, BUDGET = 10, 80


def simulate(rate_low: list[float], seed: int) -> dict[int, dict[str, float]]:
    """Toy dynamics per eval step: the high task learns with exposure, the low task learns with
    exposure plus transfer from the high task and overfits once it has seen its data many times."""
    e_high = e_low = 0.0
    out = {}
    for step in range(BUDGET + 1):
        if step % EVAL_EVERY == 0:
            noise = 0.03 * math.sin(7 * step + 3 * seed + 11 * rate_low[min(step, BUDGET - 1)])
            ce_high = 2.0 + 3.0 * math.exp(-e_high / 30) + noise
            overfit = 0.003 * max(0.0, e_low - 20) ** 2
            ce_low = 2.6 + 3.0 * math.exp(-(e_low + 0.3 * e_high) / 15) + overfit + noise
            out[step] = {
                "ce_high": ce_high,
                "ce_low": ce_low,
                "epochs_high": e_high / 60,
                "epochs_low": e_low / 6,
                "share_low": e_low / max(e_high + e_low, 1e-9),
                "rate": rate_low[min(step, BUDGET - 1)],
            }
        if step < BUDGET:
            e_high, e_low = e_high + 1 - rate_low[step], e_low + rate_low[step]
    return out


def rows_of(segment: str, sim: dict, steps: range) -> list[tuple]:
    rows = []
    for s in steps:
        v = sim[s]
        for task, ce, ep, share, rate in [
            ("eng-fra", v["ce_high"], v["epochs_high"], 1 - v["share_low"], 1 - v["rate"]),
            ("eng-ron", v["ce_low"], v["epochs_low"], v["share_low"], v["rate"]),
        ]:
            rows += [
                (segment, s, task, "dev", "ce", ce),
                (segment, s, task, "dev", "chrf", 100 - 12 * ce),
                (segment, s, task, "dev", "bleu", 60 - 10 * ce),
                (segment, s, task, "train", "loss", ce - 0.3),
                (segment, s, task, "train", "target_rate", rate),
                (segment, s, task, "train", "realized_rate", share),
                (segment, s, task, "train", "epochs", ep),
            ]
        rows.append((segment, s, "*", "train", "lr", 1e-3))
    return rows


def piece(segment, a, b):
    return {"segment": segment, "from_step": a, "to_step": b}


def make_sweep(path: Path, pruned: bool = False) -> Path:
    """Two-phase (L x w x seed, one trunk per seed, one trial still running, or ``pruned`` at
    step 60) and scalarization."""
    rows, trials, steps = [], [], range(0, BUDGET + 1, EVAL_EVERY)
    for seed in (0, 1):
        trunk = f"pt-s{seed}"
        rows += rows_of(trunk, simulate([0.0] * BUDGET, seed), range(0, 41, EVAL_EVERY))
        for L in (20, 40):
            for w in (0.3, 0.6):
                seg = f"ft-L{L}-w{w}-s{seed}"
                running = seed == 1 and L == 40 and w == 0.6
                sim = simulate([0.0] * L + [w] * (BUDGET - L), seed)
                rows += rows_of(seg, sim, range(L, 61 if running else BUDGET + 1, EVAL_EVERY))
                rows += [(seg, 60, "*", "train", "pruned", 1.0)] if running and pruned else []
                status = ("pruned" if pruned else "running") if running else "finished"
                trials.append({
                    "trial": f"tp-L{L}-w{w}-s{seed}", "method": "two_phase", "L": L,
                    "F": BUDGET - L, "w": w, "seed": seed, "final_step": BUDGET,
                    "status": status,
                    "lineage": [piece(trunk, 0, L), piece(seg, L, BUDGET)],
                })  # fmt: skip
        for w in (0.1, 0.3, 0.6):
            seg = f"sc-w{w}-s{seed}"
            rows += rows_of(seg, simulate([w] * BUDGET, seed), steps)
            trials.append({
                "trial": f"sc-w{w}-s{seed}", "method": "scalarization", "F": BUDGET, "w": w,
                "seed": seed, "final_step": BUDGET, "lineage": [piece(seg, 0, BUDGET)],
            })  # fmt: skip
    return write_sweep(path, rows, trials, name="toy-sweep")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("report") / "toy-sweep")


def test_report_writes_figures_and_html(sweep, capsys):
    assert main([str(sweep)]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == sweep / "report" / "index.html"
    page = index.read_text()
    for name in FIGURES:
        png = sweep / "report" / f"{name}.png"
        assert png.stat().st_size > 10_000, name
        assert f'href="{name}.png"' in page and f'alt="{name}.png"' in page
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert "partial: 13 of 14 trials finished" in page
    assert "front weakly dominates" in page and "tp-L" in page
    assert "Statistics over seeds" in page and "The seeds cannot tell" in page
    fr = json.loads((sweep / "report" / "frontier.json").read_text())
    assert set(fr["methods"]) == {"two_phase", "scalarization"}


def test_a_pruned_trial_is_listed_as_such_and_never_on_a_front(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "toy-sweep", pruned=True)
    assert main([str(sweep)]) == 0
    page = (sweep / "report" / "index.html").read_text()
    assert "PARTIAL" not in page and "partial:" not in page  # a pruned trial has ended
    table = page.split("Pruned trials")[1].split("</table>")[0]
    assert "tp-L40-w0.6-s1" in table and "<td>60</td>" in table and "<td>20</td>" in table
    fr = json.loads((sweep / "report" / "frontier.json").read_text())
    assert fr["trials"]["pruned"] == 1
    members = {m["trial"] for v in fr["methods"].values() for m in v["front"]}
    assert "tp-L40-w0.6-s1" not in members


def test_report_options(sweep, tmp_path):
    out = tmp_path / "r"
    args = [str(sweep), "--out", str(out), "--at", "final", "--axes", "eng-fra/chrf", "eng-ron/ce"]
    assert main(args) == 0
    fr = json.loads((out / "frontier.json").read_text())
    assert fr["at"] == "final" and fr["axes"] == ["eng-fra/chrf", "eng-ron/ce"]
    assert fr["senses"] == [1, -1]
    assert main([str(sweep), "--out", str(out), "--axes", "eng-ron"]) == 2


def test_bad_inputs_exit_nonzero(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: sweep dir not found" in capsys.readouterr().err
    old = make_sweep(tmp_path / "old")
    (old / "results.json").write_text('{"schema": 0}')
    assert main([str(old)]) == 2
    assert "written by schema 0, this ray_mtl reads schema 1" in capsys.readouterr().err
    empty = write_sweep(tmp_path / "empty", [], [])
    assert main([str(empty)]) == 2
    assert "no trials" in capsys.readouterr().err
    # As a command: one line on stderr, exit 2, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "ray_mtl.report", str(old)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


def run_notebook(sweep: Path, monkeypatch) -> list[dict]:
    """Execute the notebook headless on ``sweep``; returns its PNG outputs."""
    monkeypatch.setenv("RAY_MTL_SWEEP", str(sweep))
    # The kernel imports ray_mtl from this checkout even where it is not pip-installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "notebooks" / "frontier_report.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]


def test_notebook_runs(sweep, monkeypatch):
    assert len(run_notebook(sweep, monkeypatch)) >= len(FIGURES)


def test_notebook_on_smoke_sweep(smoke_sweep, monkeypatch):
    """The notebook on a real sweep (the shipped smoke space, run once per session)."""
    assert len(run_notebook(smoke_sweep, monkeypatch)) >= len(FIGURES)


def test_report_replaces_only_its_own_files(sweep, tmp_path, capsys):
    """Run twice into one dir, the report replaces its own files; a dir that holds anything
    else (the sweep itself, the user's notes) is refused and left as it was."""
    out = tmp_path / "r"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert main([str(sweep), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(f"{n}.png" for n in FIGURES), "frontier.json", "index.html"]
    )
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    before = {p: p.stat().st_mtime_ns for p in Path(sweep).rglob("*")}
    for target in (notes.parent, Path(sweep)):
        assert main([str(sweep), "--out", str(target)]) == 2
        assert "--out holds files the report did not write" in capsys.readouterr().err
    assert notes.read_text() == "mine" and sorted(notes.parent.iterdir()) == [notes]
    assert {p: p.stat().st_mtime_ns for p in Path(sweep).rglob("*")} == before


def test_report_of_a_sweep_that_has_not_ended(smoke_sweep, tmp_path, capsys):
    """A running or crashed sweep has only its per-segment rows: the report is drawn from them,
    says on its first line that it is partial, and marks the trials that are not done."""
    import shutil

    import pandas as pd

    from ray_mtl.results import load_results

    live = tmp_path / "live"
    shutil.copytree(smoke_sweep, live, ignore=shutil.ignore_patterns("report", "tune"))
    for merged in ("metrics.parquet", "trials.parquet", "frontier.json", "frontier.parquet"):
        (live / merged).unlink()
    rows = live / "segments" / "tp-L200-w0.5-s0" / "metrics.parquet"
    df = pd.read_parquet(rows)
    df[df.step < df.step.max()].to_parquet(rows)  # its last evaluation not reported yet
    (live / "segments" / "tp-L200-w0.3-s0" / "metrics.parquet").unlink()  # not started
    res = load_results(live)
    status = res.trials.set_index("trial")["status"]
    assert res.live and status["tp-L200-w0.5-s0"] == "running"
    assert status["tp-L200-w0.3-s0"] == "running"  # its trunk piece has rows
    assert status["tp-L100-w0.3-s0"] == "finished" and res.partial
    assert main([str(live)]) == 0
    page = (live / "report" / "index.html").read_text()
    body = page.split("<body>", 1)[1]
    assert body.startswith('<p style="background:#fde68a;padding:6px"><b>PARTIAL REPORT</b>')
    assert f"{res.finished} of {len(res.trials)} trials finished" in body
