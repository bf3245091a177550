"""Phases and the learning-rate schedule, whose value depends only on steps since the last reset.

    sched = Schedule(cfg.phases, start_step=0)
    for step in range(sched.start_step, sched.end_step):
        if sched.resets_at(step): ...            # fresh optimizer state (the LR resets by itself)
        lr = sched.lr(step, cfg.optim)           # the LR of optimizer step number `step`
        mixture = cfg.phases[sched.phase_at(step)].mixture

Step convention: steps are global and 0-based. Step ``s`` is the (s+1)-th optimizer step of the
whole lineage; a run that has finished steps ``0 .. L-1`` has a checkpoint "at step L". Global
numbering continues across a fork: a branch started from the trunk's checkpoint at step ``L`` is
``Schedule(branch_phases, start_step=L)`` and its phases cover ``[L, L + sum(steps))``.

Because the LR at a step is a function of the steps since the last reset alone (warm-up, then
inverse square root or constant), the checkpoint at step ``L1`` of a long run is the model that a
run of length ``L1`` would give: one trunk serves every branch forked from it.
"""

from __future__ import annotations

import bisect
import math

from ray_mtl.config import OptimConfig, PhaseConfig
from ray_mtl.errors import UserError


def lr_at(steps_since_reset: int, optim: OptimConfig) -> float:
    """The LR of the optimizer step taken ``steps_since_reset`` steps after the last reset.

    Linear warm-up ``lr * n / warmup`` for the n-th step (n = steps_since_reset + 1, so the first
    step already moves and step n = warmup is at the peak), then ``lr * sqrt(warmup / n)`` (rsqrt,
    continuous at the peak) or ``lr`` (constant). With no warm-up, rsqrt decays as ``lr / sqrt(n)``.
    """
    if steps_since_reset < 0:
        raise ValueError(f"steps_since_reset must be >= 0, got {steps_since_reset}")
    n = steps_since_reset + 1
    if n <= optim.warmup_steps:
        return optim.lr * n / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    return optim.lr * math.sqrt(max(optim.warmup_steps, 1) / n)


class Schedule:
    """The phases of one run (trunk or branch) laid out on global steps.

    ``start_step`` is the global step the run starts at (0 for a trunk, the fork step for a
    branch); ``steps_since_reset_at_start`` is how far the LR schedule had already run at that
    point, for a branch whose first phase continues without a reset.
    """

    def __init__(
        self,
        phases: list[PhaseConfig],
        start_step: int = 0,
        steps_since_reset_at_start: int = 0,
    ) -> None:
        if not phases:
            raise ValueError("a schedule needs at least one phase")
        if start_step < 0 or steps_since_reset_at_start < 0:
            raise ValueError("start_step and steps_since_reset_at_start must be >= 0")
        self.phases = list(phases)
        self._place(start_step, steps_since_reset_at_start)

    def _place(self, start_step: int, steps_since_reset_at_start: int) -> None:
        self.start_step = start_step
        self.steps_since_reset_at_start = steps_since_reset_at_start
        self.starts = [start_step]
        """Global step at which each phase starts."""
        for p in self.phases[:-1]:
            self.starts.append(self.starts[-1] + p.steps)

    @property
    def end_step(self) -> int:
        """One past the last step of the run: the step of its final checkpoint."""
        return self.starts[-1] + self.phases[-1].steps

    def _check(self, step: int, end_ok: bool = False) -> None:
        hi = self.end_step + 1 if end_ok else self.end_step
        if not self.start_step <= step < hi:
            raise ValueError(f"step {step} outside this run's steps [{self.start_step}, {hi})")

    def phase_at(self, step: int) -> int:
        """Index of the phase that runs global step ``step``."""
        self._check(step)
        return bisect.bisect_right(self.starts, step) - 1

    def resets_at(self, step: int) -> bool:
        """Whether a phase with ``reset=True`` starts exactly at ``step``."""
        i = self.phase_at(step)
        return self.phases[i].reset and self.starts[i] == step

    def steps_since_reset(self, step: int) -> int:
        """Steps taken since the last reset before ``step`` (0 at a reset step).

        Also defined at ``end_step``: the value a run continuing without a reset starts from.
        """
        self._check(step, end_ok=True)
        for i in range(len(self.phases) - 1, -1, -1):
            if self.phases[i].reset and self.starts[i] <= step:
                return step - self.starts[i]
        return self.steps_since_reset_at_start + step - self.start_step

    def lr(self, step: int, optim: OptimConfig) -> float:
        """The LR of optimizer step ``step``."""
        return lr_at(self.steps_since_reset(step), optim)

    def state_dict(self) -> dict:
        return {
            "start_step": self.start_step,
            "steps_since_reset_at_start": self.steps_since_reset_at_start,
            "phase_steps": [p.steps for p in self.phases],
        }

    def load_state_dict(self, state: dict) -> None:
        steps = [p.steps for p in self.phases]
        if state["phase_steps"] != steps:
            raise UserError(
                f"schedule state: saved for phase steps {state['phase_steps']}, "
                f"this run has {steps}"
            )
        self._place(state["start_step"], state["steps_since_reset_at_start"])
