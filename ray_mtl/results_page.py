"""A results page's figures and tables, and the JSON they are drawn from (``docs/results.md``).

    python -m ray_mtl.results_page runs/cpu_paper --out docs/results       # from a sweep
    python -m ray_mtl.results_page docs/results/page.json --out /tmp/again  # from the JSON alone

Writes ``page.json`` (the sweep's trials and the metric rows the figures read), the report's
figures drawn from it (fronts on dev and on test, learning curves, rates and epochs,
hypervolume per seed) and ``tables.md``: the statistics over seeds on dev and on test
(``frontier``'s ``statistics``, in the report's words and tables), the front members and the
epochs each task reached. Everything is drawn from ``page.json``, so a page rebuilt from the
committed JSON has the same figures and numbers as the sweep's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from ray_mtl import report
from ray_mtl.errors import UserError, cli
from ray_mtl.frontier import frontier, trial_curves, trial_points
from ray_mtl.results import Results, load_results
from ray_mtl.storage import atomic_write_json, write_text

PAGE_METRICS = ("ce", "bleu", "chrf", "bpb", "ppl", "loss", "epochs", "target_rate")
PAGE_METRICS += ("realized_rate",)
"""The metrics the page's figures and tables read; the rest of a sweep's rows stay out of it."""
SPLITS = ("dev", "test")
KNOBS = ("method", "L", "F", "w", "temperature", "max_epochs")
"""What a trial's setting is, seeds apart."""


def page_data(results: Results) -> dict:
    """What the page is drawn from: the sweep's trials and its rows of ``PAGE_METRICS``."""
    m = results.metrics[results.metrics["metric"].isin(PAGE_METRICS)]
    return {
        "schema": 1,
        "sweep": {"name": results.name, "tasks": results.tasks, "kind": results.kind},
        "signatures": results.signatures,
        "trials": json.loads(results.trials.to_json(orient="records")),
        "metrics": {c: m[c].tolist() for c in m.columns},
    }


def results_from_data(doc: dict, source: str) -> Results:
    """The ``Results`` a ``page.json`` holds (``source`` names it in errors)."""
    if not isinstance(doc, dict) or doc.get("schema") != 1:
        raise UserError(
            f"{source}: expected a page.json of schema 1 (python -m ray_mtl.results_page)"
        )
    metrics = pd.DataFrame(doc["metrics"]).astype({"step": "int64", "value": "float64"})
    s = doc["sweep"]
    return Results(
        source, s["name"], s["tasks"], metrics, pd.DataFrame(doc["trials"]),
        signatures=doc["signatures"], kind=s["kind"],
    )  # fmt: skip


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)\n"
    df = df.loc[:, [c for c in df.columns if df[c].map(_cell).any()]]  # another method's knobs
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(False)]
    return "\n".join(lines) + "\n"


def epochs_table(results: Results, curves: pd.DataFrame) -> pd.DataFrame:
    """Epochs over each task's training data at each trial's end, per method, L and w (the
    mean over seeds)."""
    e = curves[(curves["metric"] == "epochs") & (curves["task"] != "*")].sort_values("step")
    e = e.groupby(["trial", "task"])["value"].last().unstack("task")
    cols = [c for c in KNOBS if c in results.trials]
    t = results.trials.set_index("trial")[cols].join(e)
    keys = [c for c in cols if t[c].notna().any()]
    return t.groupby(keys, dropna=False).mean().reset_index()


def settings_table(results: Results, fr: dict, curves: pd.DataFrame) -> pd.DataFrame:
    """Per method and setting, each axis' mean ± std over seeds (``fr``'s split and axes)."""
    pts = trial_points(results, fr["axes"], fr["at"], fr["split"], curves)
    keys = [c for c in KNOBS if c in pts and pts[c].notna().any()]
    g = pts.groupby(keys, dropna=False)[fr["axes"]]
    mean, std, n = g.mean(), g.std(), g.size()
    out = mean.copy()
    for a in fr["axes"]:
        pairs = zip(mean[a], std[a], strict=True)
        out[a] = [f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}" for m, s in pairs]
    return out.assign(seeds=n).reset_index()


def tables(results: Results, fronts: dict[str, dict], curves: pd.DataFrame) -> str:
    """``tables.md``: per split the statistics in words and tables; front members; epochs."""
    out = [f"# {report.title(results)}\n"]
    for split, fr in fronts.items():
        what = "at each task's best dev weights" if split == "test" else "where settings are chosen"
        out.append(f"## {split}: {what}\n")
        out += [f"- {s}" for s in report.summary_text(fr)]
        methods, pairs = report.statistics_tables(fr)
        out += ["", "Per method:\n", markdown_table(methods), "Per pair:\n", markdown_table(pairs)]
        out += ["Per setting, mean ± std over seeds:\n"]
        out.append(markdown_table(settings_table(results, fr, curves)))
        out += ["Front members:\n", markdown_table(report.front_table(fr))]
    out += ["## Epochs at each trial's end (mean over seeds)\n"]
    out.append(markdown_table(epochs_table(results, curves)))
    return "\n".join(out)


def write_page(results: Results, out: str | Path) -> Path:
    """Write page.json, the figures and tables.md under ``out``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = page_data(results)
    atomic_write_json(out / "page.json", doc)
    results = results_from_data(doc, str(out / "page.json"))  # draw from what is committed
    curves = trial_curves(results)
    fronts = {split: frontier(results, split=split) for split in SPLITS}
    figs = {
        f"fronts_{split}": report.plot_fronts(results, curves=curves, split=split)
        for split in SPLITS
    }
    figs |= {
        "curves": report.plot_curves(results, curves=curves),
        "rates": report.plot_rates(results, curves=curves),
        "hypervolume": report.plot_hypervolume(results, fronts["dev"]),
    }
    report.write_pngs(figs, str(out))
    write_text(str(out / "tables.md"), tables(results, fronts, curves))
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ray_mtl.results_page", description=__doc__.split("\n")[0]
    )
    p.add_argument("source", help="a sweep dir written by ray_mtl.tune, or a page.json")
    p.add_argument("--out", required=True, help="output dir (page.json, figures, tables.md)")
    args = p.parse_args(argv)
    src = Path(args.source)
    if src.suffix == ".json":
        try:
            doc = json.loads(src.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{src}: file not found") from None
        except ValueError as e:
            raise UserError(f"{src}: not JSON ({e})") from None
        results = results_from_data(doc, str(src))
    else:
        results = load_results(args.source)
    print(write_page(results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
