"""Shared fixtures: one real local Ray for the whole session, and the shipped corpora.

The corpora are ../shared/data when it is there, else the repo's data/ slices (the first 20k lines
of eng-fra, eng-ron, eng-ind: what the tests read); a test never skips for want of them.

Ray starts only when a test asks for ``ray_session``; pure tests (rates, planner, frontier) run
in milliseconds without it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
SLICES = ROOT / "data"
NEEDED = [
    f"tatoeba/{s}/eng-{lang}.tsv.gz" for s in ("train", "test") for lang in ("fra", "ron", "ind")
]

# Settings for a small, fast, quiet local Ray (see DEVELOPERS.md): short AF_UNIX paths, no usage
# stats, worker groups that fail fast instead of retrying for minutes.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# The S3 API of moto_server on 127.0.0.1 (``s3`` below) takes any credentials; set before Ray
# starts, so its workers (which write checkpoints and rows) see the same.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "moto-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "moto-test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def pytest_collection_modifyitems(items):
    """Tests marked `cluster` start a Ray cluster of their own (`ray up`): they run last, and shut
    the session's Ray down first, since two Ray clusters on 2 cores starve each other."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The corpus root the tests read: ../shared/data, else the in-repo slices."""
    root = SHARED_DATA if (SHARED_DATA / "tatoeba").is_dir() else SLICES
    missing = [f for f in NEEDED if not (root / f).is_file()]
    if missing:
        pytest.fail(f"{root}: missing {', '.join(missing)} (the in-repo slices are in {SLICES})")
    return root


@pytest.fixture
def lone_clone(tmp_path, monkeypatch) -> Path:
    """A clone with no ../shared beside it: a copy of data/ stands in for the repo's slices, the
    working dir is the copy's repo, $RAY_MTL_DATA is unset and the cache is tmp_path/cache."""
    from ray_mtl.data import catalog

    repo = tmp_path / "ws" / "repo"
    shutil.copytree(catalog.REPO_DATA, repo / "data")
    monkeypatch.setattr(catalog, "REPO_DATA", repo / "data")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("RAY_MTL_DATA", raising=False)
    monkeypatch.setenv("RAY_MTL_CACHE", str(tmp_path / "cache"))
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 API (moto_server) on 127.0.0.1 with an empty bucket ``ray-mtl``; yields the
    URI options that reach it. Stopped by its PID at the end of the session."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ray-mtl")
        yield f"endpoint_override=127.0.0.1:{port}&scheme=http"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_tmpdir():
    # AF_UNIX socket paths must fit in 107 bytes: keep Ray's temp dir short.
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    os.environ["RAY_TMPDIR"] = d
    yield d


@pytest.fixture(scope="session")
def ray_session(ray_tmpdir):
    """One real local Ray for every test that needs it."""
    import ray

    ray.init(
        num_cpus=2,  # as CI: every test must fit 2 CPUs
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        _temp_dir=ray_tmpdir,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def sized_space(tmp_path: Path, name: str, base: str = "smoke", **changes) -> Path:
    """A shipped smoke space (``tune_spaces/<base>.yaml``) at test size, as
    ``tmp_path/<name>.yaml``: the same tree (ids, steps, forks) on a quarter of the tokens per
    step and one worker per segment, the fewest processes a 2-core machine has to start (DDP runs
    in ``test_train``, ``test_lm`` and the cluster test)."""
    import yaml

    space = yaml.safe_load((ROOT / "tune_spaces" / f"{base}.yaml").read_text())
    space |= {"name": name, "batch_tokens": space["batch_tokens"] // 4}
    space["eval"] |= {"pairs": 64} | ({} if space.get("kind") == "lm" else {"bleu_pairs": 16})
    space["resources"] = {"num_workers": 1, "cpus_per_worker": 0.9}
    for key, value in changes.items():
        space[key] = space.get(key, {}) | value if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture(scope="session")
def smoke_sweep(ray_session, shared_data, tmp_path_factory) -> Path:
    """The smoke sweep (``sized_space``), run once per session through the real CLI entry point
    with a ``file://`` storage URI.

    Returns the sweep dir (``<storage>/smoke``) with results, frontier, report and the trials'
    TensorBoard runs and MLflow store. eng-ron has an extra evaluation set, ``extra``: the first
    50 lines of its training file, so they are held out of training.
    """
    from ray_mtl.tune import main

    storage = tmp_path_factory.mktemp("sweeps")
    with gzip.open(shared_data / "tatoeba" / "train" / "eng-ron.tsv.gz", "rt") as f:
        (storage / "extra.tsv").write_text("".join(next(f) for _ in range(50)))
    extra = {"eval_sets": {"eng-ron": {"extra": str(storage / "extra.tsv")}}}
    space = sized_space(storage, "smoke", tracking={"mlflow": True}, data=extra)
    assert main(["--space", str(space), "--storage", f"file://{storage}"]) == 0
    return storage / "smoke"


@pytest.fixture(scope="session")
def lm_smoke_sweep(ray_session, shared_data, tmp_path_factory) -> Path:
    """The language-model smoke sweep (``tune_spaces/lm_smoke.yaml`` at test size:
    ``sized_space``), run once per session through the real CLI entry point; returns its dir."""
    from ray_mtl.tune import main

    storage = tmp_path_factory.mktemp("lm_sweeps")
    space = str(sized_space(storage, "lm_smoke", base="lm_smoke"))
    assert main(["--space", space, "--storage", str(storage)]) == 0
    return storage / "lm_smoke"


# Real Tatoeba pairs, a SentencePiece model trained on them, and a tiny model that memorised 32 of
# them: shared by the model and evaluation tests (built once per session; helpers in test_model).


@pytest.fixture(scope="session")
def pairs(shared_data):
    from test_model import read_pairs

    return read_pairs(shared_data)


@pytest.fixture(scope="session")
def sp(pairs):
    from test_model import train_sentencepiece

    return train_sentencepiece(pairs)


@pytest.fixture(scope="session")
def table(pairs, sp):
    from test_model import make_table

    return make_table(pairs[:300], sp)


@pytest.fixture(scope="session")
def overfit(pairs, sp):
    import torch
    from test_model import memorise

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return memorise(pairs, sp)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_cfg(shared_data, tmp_path_factory):
    """Real prepared data for training tests: eng-fra + eng-ron, 3,000 lines each, vocab 500."""
    return prepared_slices(shared_data, tmp_path_factory, tasks=["eng-fra", "eng-ron"])


def prepared_slices(shared_data: Path, tmp_path_factory, **cfg):
    """A DataConfig over the first 3,000 lines of each shipped file, vocab 500, prepared here."""
    from ray_mtl.config import DataConfig
    from ray_mtl.data import prepare

    out = str(tmp_path_factory.mktemp("prepared"))
    data = DataConfig(data_dir=str(shared_data), max_pairs=3000, vocab_size=500, out_dir=out, **cfg)
    prepare(data, verbose=False)
    return data


@pytest.fixture(scope="session")
def lm_data_cfg(shared_data, tmp_path_factory):
    """Real prepared languages for LM tests: the French and Romanian sides of the first 3,000
    lines of eng-fra and eng-ron, vocab 500."""
    return prepared_slices(shared_data, tmp_path_factory, kind="lm", tasks=["fra", "ron"])
