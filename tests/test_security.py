"""What ray_mtl trusts: YAML, checkpoints, pickles, names in paths, dashboards, Ray's auth.

    .venv/bin/python -m pytest -q tests/test_security.py

Static checks read the source with ``ast`` (calls, not strings in comments); behavioural checks
feed real hostile files (a YAML tag that runs a command, a checkpoint whose pickle runs one) and
check that nothing runs. ray_mtl unpickles nothing itself (the sweep's tree state is JSON), but
Tune's own experiment state in a sweep's ``tune/`` dir is a pickle: a sweep dir is trusted like
code, and a sweep dir from elsewhere should be treated as such.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from ray_mtl import config
from ray_mtl.checkpoint import load as load_checkpoint
from ray_mtl.config import DataConfig, SpaceConfig, TaskSpec, from_dict, load_yaml
from ray_mtl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "ray_mtl").rglob("*.py"))


def calls(name: str):
    """(file, innermost enclosing function, Call node) for every call to ``name``."""
    for path in SOURCES:
        found: list = []

        def visit(node: ast.AST, fn: str, path: Path = path, found: list = found) -> None:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                fn = node.name
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.append((str(path.relative_to(ROOT)), fn, node))
            for child in ast.iter_child_nodes(node):
                visit(child, fn)

        visit(ast.parse(path.read_text(), str(path)), "")
        yield from found


def keyword(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return ast.literal_eval(k.value) if isinstance(k.value, ast.Constant) else k.value
    return None


def test_yaml_is_only_safe_loaded():
    for path in SOURCES:
        text = path.read_text()
        for bad in ("yaml.load(", "yaml.unsafe_load", "yaml.full_load", "Loader=", "UnsafeLoader"):
            assert bad not in text, f"{path}: {bad}"
    assert list(calls("yaml.safe_load")), "expected YAML to be read with yaml.safe_load"


def test_hostile_yaml_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "run.yaml"
    path.write_text(f'phases: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(UserError, match=r"run.yaml:1: invalid YAML"):
        load_yaml(path)
    assert not marker.exists()


def test_torch_load_is_weights_only():
    loads = list(calls("torch.load"))
    assert loads, "expected checkpoints to be read with torch.load"
    for file, fn, call in loads:
        assert keyword(call, "weights_only") is True, f"{file}:{call.lineno} in {fn}"


class RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "ckpt").mkdir()
    torch.save({"model_state": RunsCommand(marker)}, tmp_path / "ckpt" / "state.pt")
    cfg = config.TrainConfig(phases=[config.PhaseConfig(steps=1)])
    with pytest.raises(UserError, match="corrupt checkpoint"):
        load_checkpoint(str(tmp_path / "ckpt"), cfg, vocab_size=100, manifest_hash="m")
    assert not marker.exists()


def test_nothing_is_unpickled():
    found = set()
    for name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads"):
        found |= {(file, fn) for file, fn, _ in calls(name)}
    assert not found, f"unpickling in {found}"
    for path in SOURCES:  # no other way in: marshal, shelve, dill, numpy pickles
        text = path.read_text()
        for bad in ("marshal.load", "shelve.open", "dill.load", "allow_pickle=True"):
            assert bad not in text, f"{path}: {bad}"


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "", "x/../y", "a\\b", "~root"])
def test_names_in_paths_are_refused(name):
    space = {
        "name": "ok",
        "tasks": {"high": ["eng-fra"], "low": ["eng-ron"]},
        "grid": {"pretrain_steps": [4], "finetune_steps": 4, "low_rates": [0.5]},
    }
    with pytest.raises(UserError, match=r"space\.yaml: name: expected a name"):
        from_dict(SpaceConfig, space | {"name": name}, "space.yaml")
    with pytest.raises(UserError, match=r"tasks.low\[0\]: expected a name"):
        from_dict(SpaceConfig, space | {"tasks": {"high": ["eng-fra"], "low": [name]}})
    with pytest.raises(UserError, match=r"tasks\[1\]: expected a name"):
        from_dict(DataConfig, {"tasks": ["eng-fra", name]})
    spec = {"name": name, "src_lang": "eng", "tgt_lang": "ron", "train": ["x.tsv"]}
    with pytest.raises(UserError, match="name: expected a name"):
        from_dict(TaskSpec, spec)


def test_dashboards_listen_on_localhost():
    inits = list(calls("ray.init"))
    assert inits
    for file, _, call in inits:
        if keyword(call, "address") is not None:
            continue  # joins a cluster: the cluster's head decides
        quiet = keyword(call, "include_dashboard") is False
        assert quiet or keyword(call, "dashboard_host") == "127.0.0.1", f"{file}:{call.lineno}"
    for yaml_file in ROOT.glob("cluster*.yaml"):
        text = yaml_file.read_text()
        if "ray start --head" in text:
            hosts = {w for w in text.split() if w.startswith("--dashboard-host")}
            assert hosts == {"--dashboard-host=127.0.0.1"}, f"{yaml_file.name}: {hosts}"


def test_nothing_disables_ray_auth():
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # Tests name the setting only to assert its absence; everything that runs or deploys is read.
    disables = re.compile(r"RAY_AUTH_MODE[\"'\]]*\s*[=:,]\s*[\"']?disabled")
    checked = 0
    for name in files:
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        assert not disables.search(text), f"{name}: {disables.search(text).group()}"
        checked += 1
    assert checked > 20
    assert disables.search('os.environ["RAY_AUTH_MODE"] = "disabled"')
    assert disables.search("RAY_AUTH_MODE=disabled ray start --head")
