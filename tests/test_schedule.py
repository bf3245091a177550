"""LR schedule (warm-up, rsqrt/constant, resets) and phases on global steps.

.venv/bin/python -m pytest -q tests/test_schedule.py
"""

from __future__ import annotations

import itertools
import math

import pytest

from ray_mtl.config import OptimConfig, PhaseConfig
from ray_mtl.schedule import Schedule, lr_at

OPT = OptimConfig(lr=1e-3, warmup_steps=10, schedule="rsqrt")


def test_warmup_then_rsqrt():
    assert lr_at(0, OPT) == pytest.approx(1e-4)  # the first step already moves
    assert lr_at(4, OPT) == pytest.approx(5e-4)
    assert lr_at(9, OPT) == pytest.approx(1e-3)  # peak at the last warm-up step
    assert lr_at(39, OPT) == pytest.approx(1e-3 * math.sqrt(10 / 40))
    lrs = [lr_at(s, OPT) for s in range(200)]
    assert max(lrs) == lrs[9]
    assert all(a > b for a, b in itertools.pairwise(lrs[9:]))


def test_constant_and_no_warmup():
    const = OptimConfig(lr=2e-3, warmup_steps=4, schedule="constant")
    assert [lr_at(s, const) for s in range(6)] == pytest.approx(
        [5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3]
    )
    assert lr_at(0, OptimConfig(lr=1e-3, warmup_steps=0)) == pytest.approx(1e-3)
    assert lr_at(3, OptimConfig(lr=1e-3, warmup_steps=0)) == pytest.approx(1e-3 / 2)


def two_phase(pre=30, ft=20):
    return [PhaseConfig(steps=pre, name="pretrain"), PhaseConfig(steps=ft, reset=True, name="ft")]


def test_phase_boundaries_and_reset():
    s = Schedule(two_phase())
    assert (s.start_step, s.end_step, s.starts) == (0, 50, [0, 30])
    assert [s.phase_at(t) for t in (0, 29, 30, 49)] == [0, 0, 1, 1]
    assert [t for t in range(50) if s.resets_at(t)] == [30]
    assert s.steps_since_reset(29) == 29 and s.steps_since_reset(30) == 0
    assert s.lr(30, OPT) == lr_at(0, OPT) == pytest.approx(1e-4)  # back at warm-up start
    assert s.lr(29, OPT) == lr_at(29, OPT)
    with pytest.raises(ValueError, match="outside"):
        s.phase_at(50)
    assert s.steps_since_reset(50) == 20  # where a run continuing without reset would start


def test_reset_in_first_phase_and_no_reset_phases():
    s = Schedule([PhaseConfig(steps=5, reset=True), PhaseConfig(steps=5)])
    assert s.resets_at(0) and not s.resets_at(5)
    assert [s.steps_since_reset(t) for t in (0, 5, 9)] == [0, 5, 9]


def test_branch_from_fork():
    # The trunk pre-trains 0..L-1; a branch from its checkpoint at L resets and fine-tunes.
    L = 40
    branch = Schedule([PhaseConfig(steps=25, reset=True)], start_step=L)
    assert (branch.start_step, branch.end_step) == (L, L + 25)
    assert branch.resets_at(L) and branch.phase_at(L + 24) == 0
    with pytest.raises(ValueError):
        branch.phase_at(L - 1)
    # It runs the same LRs as the unforked two-phase run over the same steps.
    full = Schedule(two_phase(pre=L, ft=25))
    assert [branch.lr(t, OPT) for t in range(L, L + 25)] == [
        full.lr(t, OPT) for t in range(L, L + 25)
    ]
    # A branch continuing a trunk's phase without reset carries the trunk's steps since reset.
    trunk = Schedule([PhaseConfig(steps=L)])
    cont = Schedule(
        [PhaseConfig(steps=10)], start_step=L, steps_since_reset_at_start=trunk.steps_since_reset(L)
    )
    long = Schedule([PhaseConfig(steps=L + 10)])
    assert [cont.lr(t, OPT) for t in range(L, L + 10)] == [
        long.lr(t, OPT) for t in range(L, L + 10)
    ]


def test_lr_does_not_depend_on_run_length():
    short = Schedule([PhaseConfig(steps=60), PhaseConfig(steps=40, reset=True)])
    long = Schedule([PhaseConfig(steps=60), PhaseConfig(steps=240, reset=True)])
    a = [short.lr(t, OPT) for t in range(short.start_step, short.end_step)]
    b = [long.lr(t, OPT) for t in range(long.start_step, long.end_step)]
    assert len(a) == 100 and len(b) == 300
    assert a == b[:100]


def test_state_dict_round_trip():
    s = Schedule(two_phase(), start_step=12, steps_since_reset_at_start=7)
    t = Schedule(two_phase())
    t.load_state_dict(s.state_dict())
    assert all(isinstance(v, int) for v in s.state_dict().values() if not isinstance(v, list))
    assert (t.start_step, t.end_step, t.starts) == (12, 62, [12, 42])
    assert [t.lr(x, OPT) for x in range(12, 62)] == [s.lr(x, OPT) for x in range(12, 62)]
