"""The cluster configs and the README's "On a cluster" section hold together; offline, no cluster.

    .venv/bin/python -m pytest -q tests/test_cluster_config.py
    RAY_MTL_README=draft.md .venv/bin/python -m pytest -q tests/test_cluster_config.py

cluster.yaml and cluster_onprem.yaml are validated with Ray's own schema, as `ray up` does. Every
command they and the README section show is checked against the code: `python -m ray_mtl.<verb>`
modules answer --help, `ray <command>`s exist in Ray's CLI, `ray job submit` lines parse with
Ray's own parser and their sweep plans (--dry-run). RAY_MTL_README points at a draft section.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
AWS, ONPREM = "cluster.yaml", "cluster_onprem.yaml"
SETUP = ROOT / "cluster_setup.sh"  # the node setup both files run
CONFIGS = (AWS, ONPREM)
SECRETS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key setting": r"(?i)aws_secret_access_key|aws_session_token",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "Ray token value": r"RAY_AUTH_TOKEN\s*[=:]",
}


def config(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def readme_section() -> str:
    path = Path(os.environ.get("RAY_MTL_README") or ROOT / "README.md")
    text = path.read_text(encoding="utf-8")
    found = re.search(r"^## On a cluster\n.*?(?=^## |\Z)", text, re.M | re.S)
    assert found, f"{path}: no '## On a cluster' section"
    return found.group(0)


def texts() -> dict[str, str]:
    """Every text that shows commands: both configs (comments included), their setup script and
    the README section."""
    out = {name: (ROOT / name).read_text(encoding="utf-8") for name in (*CONFIGS, SETUP.name)}
    return out | {"README section": readme_section()}


def commands(cfg: dict, *keys: str) -> str:
    return "\n".join(cmd for key in keys for cmd in cfg.get(key, []))


def job_submissions(text: str) -> list[list[str]]:
    """The `ray job submit` command lines of ``text``, comment marks and continuations removed."""
    text = re.sub(r"(?m)^\s*# ?", "", text).replace("\\\n", " ")
    command = re.compile(r"(?:[A-Z_]+=\S+\s+)*ray job submit\s")
    return [shlex.split(line) for line in text.splitlines() if command.match(line.strip())]


@pytest.mark.parametrize("name", CONFIGS)
def test_validates_against_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = config(name)
    validate_config(cfg)
    validate_config(prepare_config(cfg))  # with Ray's defaults filled in, as `ray up` sees it


@pytest.mark.parametrize("name", CONFIGS)
def test_required_keys(name):
    cfg = config(name)
    for key in ("cluster_name", "provider", "auth", "setup_commands", "file_mounts"):
        assert cfg.get(key), f"{name}: {key} missing or empty"
    assert cfg["auth"]["ssh_user"]
    if cfg["provider"]["type"] == "local":
        assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
        assert cfg["auth"]["ssh_private_key"].startswith(("~", "/")), "a key path, not a key"
    else:
        assert cfg["head_node_type"] in cfg["available_node_types"]


def test_aws_cpu_head_and_gpu_workers():
    cfg = config(AWS)
    types = cfg["available_node_types"]
    head = types.pop(cfg["head_node_type"])
    assert head["resources"].get("GPU", 0) == 0, "training must not land on the head"
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r")), "a CPU head"
    gpu_types = {t["node_config"]["InstanceType"] for t in types.values()}
    assert {"g5.xlarge", "p4d.24xlarge"} <= gpu_types
    for name, t in types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    # S3 through instance profiles: every node has one, given by ARN.
    for name, t in (types | {"head": head}).items():
        arn = t["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), name


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_on_localhost(name):
    cfg = config(name)
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert head and all("--head" in c and "--dashboard-host=127.0.0.1" in c for c in head)
    started = commands(cfg, "head_start_ray_commands", "worker_start_ray_commands")
    assert "0.0.0.0" not in started


@pytest.mark.parametrize("name", CONFIGS)
def test_token_auth_stays_on(name):
    cfg, text = config(name), (ROOT / name).read_text(encoding="utf-8")
    assert "bash ~/ray_mtl/cluster_setup.sh" in commands(cfg, "setup_commands")
    # Ray's command runner sources ~/.bashrc for every command, `ray start` included.
    assert re.search(r"echo '[^']*\bRAY_AUTH_MODE=token\b[^']*' >> ~/.bashrc", SETUP.read_text())
    assert "RAY_AUTH_MODE=disabled" not in text
    # The token reaches the nodes as a file from the user's machine, not as text in the config.
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_same_setup_everywhere_pinned_to_this_checkout():
    aws, onprem = config(AWS), config(ONPREM)
    assert aws["setup_commands"] == onprem["setup_commands"]
    assert aws["file_mounts"] == onprem["file_mounts"]
    # The settings of cluster_setup.sh: torch's CUDA build, the project from the synced copy.
    settings = dict(
        a.split("=", 1) for a in shlex.split(commands(aws, "setup_commands")) if "=" in a
    )
    assert re.fullmatch(
        r"https://download\.pytorch\.org/whl/cu\d+", settings["RAY_MTL_TORCH_INDEX"]
    )
    assert (
        settings["RAY_MTL_INSTALL"] == "-e $HOME/ray_mtl" and aws["file_mounts"]["~/ray_mtl"] == "."
    )
    setup = SETUP.read_text()
    torch = importlib.metadata.version("torch").split("+")[0]
    assert f"pip install -q torch=={torch} " in setup
    assert f'"ray[default]=={importlib.metadata.version("ray")}"' in setup
    assert "RAY_MTL_DATA=$HOME/shared/data" in setup and "~/shared/data" in aws["file_mounts"]
    # The script refuses to guess a setting the file does not give.
    run = subprocess.run(
        ["bash", SETUP], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert run.returncode != 0 and "set RAY_MTL_TORCH_INDEX" in run.stderr


def test_no_secrets():
    for where, text in texts().items():
        for what, pattern in SECRETS.items():
            assert not re.search(pattern, text), f"{where}: looks like a {what}"


def test_ray_commands_exist_in_rays_cli():
    from ray.scripts.scripts import cli

    for where, text in texts().items():
        for command, sub in re.findall(r"(?<![\w.-])ray ([a-z][a-z-]*)(?: ([a-z]+))?", text):
            assert command in cli.commands, f"{where}: `ray {command}` is no Ray command"
            if command == "job":
                assert sub in cli.commands["job"].commands, f"{where}: `ray job {sub}`"


def test_module_commands_exist_and_answer_help():
    found = {(w, verb) for w, t in texts().items() for verb in re.findall(r"-m ray_mtl\.(\w+)", t)}
    assert {verb for _, verb in found} >= {"tune", "report"}
    for where, verb in sorted(found):
        assert (ROOT / "ray_mtl" / f"{verb}.py").is_file(), f"{where}: ray_mtl/{verb}.py missing"
    for verb in sorted({verb for _, verb in found}):
        run = subprocess.run(
            [sys.executable, "-m", f"ray_mtl.{verb}", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, f"python -m ray_mtl.{verb} --help: {run.stderr[-2000:]}"


def test_spaces_mentioned_exist():
    for where, text in texts().items():
        for space in re.findall(r"tune_spaces/[\w.-]+\.yaml", text):
            assert (ROOT / space).is_file(), f"{where}: {space} does not exist"


def test_job_submissions_parse_and_plan():
    from ray.scripts.scripts import cli

    storages = {}
    for where, text in texts().items():
        for argv in job_submissions(text):
            env = dict(a.split("=", 1) for a in argv[: argv.index("ray")])
            assert env == {"RAY_AUTH_MODE": "token", "RAY_ADDRESS": "http://127.0.0.1:8265"}, where
            assert argv[argv.index("ray") : argv.index("ray") + 3] == ["ray", "job", "submit"]
            args = argv[argv.index("submit") + 1 :]
            params = cli.commands["job"].commands["submit"].make_context("submit", args).params
            entry = list(params["entrypoint"])
            assert params["working_dir"] == ".", where
            assert entry[:5] == [
                "python",
                "-m",
                "ray_mtl.tune",
                "--space",
                "tune_spaces/paper_fr_ro.yaml",
            ]
            storages.setdefault(where, []).append(entry[entry.index("--storage") + 1])
            # The sweep the line launches plans: same arguments, a real bucket name, --dry-run.
            entry = [a.replace("<bucket>", "example-bucket") for a in entry]
            run = subprocess.run(
                [sys.executable, *entry[1:], "--dry-run"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, f"{where}: {shlex.join(entry)}: {run.stderr[-2000:]}"
    assert any(s.startswith("s3://") for s in storages["README section"])
    assert any(s.startswith("/mnt/nfs/") for s in storages["README section"])
    assert all(s.startswith("s3://") for s in storages[AWS])
    assert all(s.startswith("/mnt/nfs/") for s in storages[ONPREM])


def test_the_install_has_the_jobs_cli():
    """`make install` gives `ray job submit` what it needs (ray[default]): it reaches for the
    cluster, rather than stopping at "The Ray jobs CLI & SDK require the ray[default]"."""
    from ray.dashboard.modules.job.sdk import JobSubmissionClient

    with pytest.raises(ConnectionError, match="Failed to connect to Ray"):
        JobSubmissionClient("http://127.0.0.1:9")  # discard: nothing listens there
