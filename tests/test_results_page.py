"""The results page: drawn from its page.json, rebuilt from it alone, dev and test per trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_mtl.errors import UserError
from ray_mtl.frontier import frontier
from ray_mtl.results import load_results
from ray_mtl.results_page import main, results_from_data, write_page

FIGURES = ("fronts_dev", "fronts_test", "curves", "rates", "hypervolume")


def test_results_page_rebuilds_from_its_json(smoke_sweep, tmp_path):
    results = load_results(smoke_sweep)
    first = write_page(results, tmp_path / "a")
    assert main([str(first / "page.json"), "--out", str(tmp_path / "b")]) == 0
    for name in ("page.json", "tables.md"):
        assert (tmp_path / "b" / name).read_text() == (first / name).read_text(), name
    for name in FIGURES:
        assert (tmp_path / "b" / f"{name}.png").stat().st_size > 10_000, name
    tables = (first / "tables.md").read_text()
    assert "## dev" in tables and "## test" in tables and "## Epochs" in tables
    # Every trial has test values, also a static trunk's trials that end inside it (L + F).
    test = frontier(results, split="test")
    assert test["trials"]["with_values"] == len(results.trials) == test["trials"]["finished"]


def test_a_page_json_of_another_kind_is_refused(tmp_path):
    bad = tmp_path / "page.json"
    bad.write_text(json.dumps({"schema": 7}))
    with pytest.raises(UserError, match=r"page\.json: expected a page\.json of schema 1"):
        results_from_data(json.loads(bad.read_text()), str(bad))
    assert main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) != 0


def test_the_committed_results_page_rebuilds_from_its_json(tmp_path):
    """docs/results.md's numbers come from docs/results/page.json: rebuilt, the tables agree."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "results"
    assert main([str(docs / "page.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tables.md").read_text() == (docs / "tables.md").read_text()
