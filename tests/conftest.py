"""Shared fixtures: one real local Ray for the whole session, and the shipped corpora.

Ray starts only when a test asks for ``ray_session``; pure tests (rates, planner, frontier) run
in milliseconds without it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

# Settings for a small, fast, quiet local Ray (see DEVELOPERS.md): short AF_UNIX paths, no usage
# stats, worker groups that fail fast instead of retrying for minutes.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def pytest_collection_modifyitems(items):
    """Tests marked `cluster` start a Ray cluster of their own (`ray up`): they run last, and shut
    the session's Ray down first, since two Ray clusters on 2 cores starve each other."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "tatoeba").is_dir():
        pytest.skip(f"shipped corpora not found at {SHARED_DATA}")
    return SHARED_DATA


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


@pytest.fixture(scope="session")
def smoke_sweep(ray_session, shared_data, tmp_path_factory) -> Path:
    """The shipped smoke sweep, run once per session through the real CLI entry point.

    Returns the sweep dir (``<storage>/smoke``) with results, frontier and report.
    """
    from ray_mtl.tune import main

    storage = tmp_path_factory.mktemp("sweeps")
    assert (
        main(["--space", str(ROOT / "tune_spaces" / "smoke.yaml"), "--storage", str(storage)]) == 0
    )
    return storage / "smoke"


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
    from ray_mtl.config import DataConfig
    from ray_mtl.data import prepare

    cfg = DataConfig(
        tasks=["eng-fra", "eng-ron"],
        data_dir=str(shared_data),
        max_pairs=3000,
        vocab_size=500,
        out_dir=str(tmp_path_factory.mktemp("prepared")),
    )
    prepare(cfg, verbose=False)
    return cfg
