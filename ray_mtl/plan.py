"""The planner: a search space becomes a tree of training segments that share work.

    python -m ray_mtl.tune --space tune_spaces/paper_fr_ro.yaml --dry-run   # prints the tree

A *trial* is what the user compares (method, L, w or T, seed); a *segment* is a stretch of
training that actually runs. Because the LR schedule depends only on steps since the last reset
(method.md, "Why one pre-training run can serve many trials"), one segment serves many trials:

- two_phase: one high-resource trunk per seed, run to max(L) with a checkpoint at every L;
  each (L, w) is a branch from it at L that resets optimizer and LR and fine-tunes F steps.
- scalarization: one static trunk per (w, seed), run to max(L) + F and evaluated at every L + F.
- restart (L, w): a branch from the static trunk of w at L, with a reset, for F steps.
- temperature, unimax: one static trunk per (T or epoch cap, seed), evaluated at every L + F.

``segment_config`` composes a segment's ``TrainConfig`` from the space's shared settings
(``RunSettings``) and the segment's own phases, seed and steps. Pure logic (no Ray, no torch):
``scheduler.py`` decides who trains what; ``tune.py`` runs it on Ray Tune.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from typing import Any

from ray_mtl.config import (
    MixtureConfig,
    PhaseConfig,
    SpaceConfig,
    TrainConfig,
    from_dict,
    id_number,
)
from ray_mtl.storage import join


@dataclasses.dataclass
class Segment:
    """One training run of the tree."""

    id: str
    """Unique, path-safe id (``pt-s0``, ``tp-L200-w0.3-s0``, ...)."""
    phases: list[PhaseConfig]
    """Phases from ``start_step`` on."""
    seed: int
    """Seed of the run (a branch continues its parent's weights under the same seed)."""
    parent: str | None = None
    """The segment whose checkpoint at ``start_step`` this one starts from (None: a trunk)."""
    start_step: int = 0
    """Global step at which this segment starts (its fork step in the parent)."""
    fork_steps: list[int] = dataclasses.field(default_factory=list)
    """Global steps at which this segment keeps a checkpoint for its branches."""
    eval_steps: list[int] = dataclasses.field(default_factory=list)
    """Global steps at which a trial's final point must be evaluated."""
    rungs: list[int] = dataclasses.field(default_factory=list)
    """Global steps at which it asks the tree whether to go on (a space with ``prune``): a
    branch at its rungs, a trunk at its fork steps (past the last one it may serve nothing)."""
    method: str = ""
    """A branch's method: its rungs compare it with the other branches of that method."""

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps


@dataclasses.dataclass
class Piece:
    """A stretch of one segment's curve: steps ``from_step..to_step`` (inclusive)."""

    segment: str
    from_step: int
    to_step: int


@dataclasses.dataclass
class Trial:
    """One grid point the user compares, and the segment pieces its curve is made of."""

    id: str
    method: str
    L: int
    F: int
    seed: int
    lineage: list[Piece]
    w: float | None = None
    temperature: float | None = None
    max_epochs: float | None = None

    @property
    def final_step(self) -> int:
        return self.lineage[-1].to_step

    @property
    def steps(self) -> int:
        """Optimizer steps this trial would take if run from scratch."""
        return self.L + self.F


@dataclasses.dataclass
class Plan:
    """The segment tree of a space and the trials it serves."""

    segments: dict[str, Segment]
    trials: list[Trial]

    @property
    def tree_steps(self) -> int:
        return sum(s.steps for s in self.segments.values())

    @property
    def naive_steps(self) -> int:
        return sum(t.steps for t in self.trials)

    def children(self, segment_id: str) -> list[Segment]:
        return [s for s in self.segments.values() if s.parent == segment_id]

    def to_dict(self) -> dict[str, Any]:
        return {
            "segments": [dataclasses.asdict(s) for s in self.segments.values()],
            "trials": [dataclasses.asdict(t) for t in self.trials],
            "tree_steps": self.tree_steps,
            "naive_steps": self.naive_steps,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Plan:
        """The plan ``to_dict`` wrote (``plan.json``)."""
        segments = [from_dict(Segment, s) for s in doc["segments"]]
        return cls({s.id: s for s in segments}, [from_dict(Trial, t) for t in doc["trials"]])

    def add_branches(self, added: list[Segment], low: list[str]) -> None:
        """Take up the segments refinement added (``scheduler.Tree.refined``, in order): each
        branch with its trial (``low``: the space's low-resource tasks, whose total rate is the
        trial's w), each continuation of a trunk (``continuation``) as the way to its fork."""
        for s in added:
            if s.id not in self.segments:
                self.segments[s.id] = s
                if s.method:
                    self.trials.append(branch_trial(s, branch_rate(s, low), self.segments))


def segment_config(
    space: SpaceConfig, seg: Segment, sweep: str, init_from: str | None = None
) -> TrainConfig:
    """The TrainConfig of one segment of ``space``'s sweep at ``sweep`` (``init_from``: its fork
    checkpoint, once that exists)."""
    return TrainConfig(
        **space.settings(),
        phases=seg.phases,
        seed=seg.seed,
        eval_steps=seg.eval_steps,
        fork_steps=seg.fork_steps,
        rungs=seg.rungs,
        init_from=init_from,
        run_dir=join(sweep, "segments", seg.id),
    )


def eval_and_checkpoint_steps(
    cfg: TrainConfig, start_step: int, end_step: int
) -> tuple[set[int], set[int]]:
    """The steps (after ``start_step``) at which to evaluate, and at which to checkpoint."""
    ahead = range(start_step + 1, end_step + 1)
    eval_at = {s for s in ahead if s % cfg.eval.every == 0}
    eval_at |= {
        s for s in [*cfg.eval_steps, *cfg.fork_steps, *cfg.rungs] if start_step < s <= end_step
    }
    eval_at.add(end_step)
    ckpt_at = {s for s in cfg.fork_steps if start_step < s <= end_step}
    if cfg.checkpoint_every:
        ckpt_at |= {s for s in eval_at if s % cfg.checkpoint_every == 0}
    ckpt_at.add(end_step)
    return eval_at, ckpt_at


def group_rates(high: list[str], low: list[str], w: float) -> dict[str, float]:
    """Low-resource tasks share ``w`` equally, high-resource tasks share ``1 - w`` equally."""
    rates = {t: (1 - w) / len(high) for t in high}
    rates.update({t: w / len(low) for t in low})
    return rates


def new_branch(
    method: str, prefix: str, trunk: str, L: int, F: int, w: float, seed: int, tasks, rungs=()
) -> Segment:
    """The branch of ``method`` from ``trunk`` at L: a reset, then F steps at rate w (``tasks``:
    the space's task groups; ``rungs``: steps since the fork at which it asks the tree)."""
    mix = MixtureConfig(rule="explicit", rates=group_rates(tasks.high, tasks.low, w))
    return Segment(
        id=f"{prefix}-L{L}-w{id_number(w)}-s{seed}",
        phases=[PhaseConfig(steps=F, mixture=mix, reset=True, name="finetune")],
        seed=seed,
        parent=trunk,
        start_step=L,
        rungs=[L + r for r in rungs],
        method=method,
    )


def continuation(trunk: Segment, source: str, start: int, L: int) -> Segment:
    """``trunk``'s own training continued from the checkpoint at ``start`` of ``source`` (the
    trunk, or a continuation of it) up to L, where it keeps a checkpoint: a fork step the grid
    did not have, for the price of L - start steps. No reset: its LR schedule, sampler and RNG
    go on from the checkpoint, so it is the run the trunk would have been from there."""
    return Segment(
        id=f"{trunk.id}-to{L}",
        phases=_phases_between(trunk, start, L),
        seed=trunk.seed,
        parent=source,
        start_step=start,
        fork_steps=[L],
    )


def branch_trial(b: Segment, w: float, segments: dict[str, Segment]) -> Trial:
    """The one trial a branch serves: its ancestors (``segments``) up to its fork (its trunk,
    and a continuation of it if it forks from one), then the branch."""
    chain = [b]
    while chain[0].parent is not None:
        chain.insert(0, segments[chain[0].parent])
    lineage = [Piece(s.id, s.start_step, later.start_step) for s, later in pairwise(chain)]
    lineage.append(Piece(b.id, b.start_step, b.end_step))
    return Trial(b.id, b.method, b.start_step, b.steps, b.seed, lineage, w=w)


def branch_rate(b: Segment, low: list[str]) -> float:
    """The w of a branch: its low-resource tasks' total rate (as its id spells it)."""
    return float(id_number(sum(b.phases[0].mixture.rates[t] for t in low)))


def plan(space: SpaceConfig) -> Plan:
    """Build the segment tree of ``space``."""
    g, tasks = space.grid, space.tasks
    Ls, F, top = g.pretrain_steps, g.finetune_steps, g.pretrain_steps[-1]
    # A branch asks the tree at its rungs (pruning) and, to be refined from, at its end.
    rungs = space.prune.rungs(F) if space.prune else []
    rungs += [F] if space.refine else []
    budgets = [L + F for L in Ls]  # the matched compute of every trial at each L
    segments: dict[str, Segment] = {}
    trials: list[Trial] = []

    def static(rule: dict[str, Any]) -> list[PhaseConfig]:
        return [PhaseConfig(steps=top + F, mixture=MixtureConfig(**rule), name="static")]

    def branch(method: str, prefix: str, trunk: Segment, L: int, w: float, seed: int) -> None:
        b = new_branch(method, prefix, trunk.id, L, F, w, seed, tasks, rungs)
        segments[b.id] = b
        trials.append(branch_trial(b, w, segments))

    for seed in g.seeds:
        if "two_phase" in space.methods:
            hr = {t: 1 / len(tasks.high) for t in tasks.high}
            pretrain = PhaseConfig(
                steps=top, mixture=MixtureConfig(rule="explicit", rates=hr), name="pretrain"
            )
            trunk = Segment(
                id=f"pt-s{seed}",
                phases=[pretrain],
                seed=seed,
                fork_steps=list(Ls),
                rungs=list(Ls) if space.prune else [],
            )
            segments[trunk.id] = trunk
            for L in Ls:
                for w in g.low_rates:
                    branch("two_phase", "tp", trunk, L, w, seed)

        if {"scalarization", "restart"} & set(space.methods):
            for w in g.low_rates:
                rule = dict(rule="explicit", rates=group_rates(tasks.high, tasks.low, w))
                trunk = Segment(
                    id=f"st-w{id_number(w)}-s{seed}",
                    phases=static(rule),
                    seed=seed,
                    fork_steps=list(Ls) if "restart" in space.methods else [],
                    eval_steps=budgets if "scalarization" in space.methods else [],
                    rungs=list(Ls) if space.prune and "restart" in space.methods else [],
                )
                segments[trunk.id] = trunk
                for L in Ls:
                    if "scalarization" in space.methods:
                        lineage = [Piece(trunk.id, 0, L + F)]
                        tid = f"sc-L{L}-w{id_number(w)}-s{seed}"
                        trials.append(Trial(tid, "scalarization", L, F, seed, lineage, w=w))
                    if "restart" in space.methods:
                        branch("restart", "rs", trunk, L, w, seed)

        derived = []
        if "temperature" in space.methods:
            derived += [
                ("temperature", f"tt-T{id_number(T)}", dict(rule="temperature", temperature=T), T)
                for T in g.temperatures
            ]
        if "unimax" in space.methods:
            budget = (top + F) * space.batch_tokens // space.tokens_per_example
            derived += [
                (
                    "unimax",
                    f"um-e{id_number(e)}",
                    dict(rule="unimax", budget=budget, max_epochs=e),
                    e,
                )
                for e in g.unimax_epochs
            ]
        for method, prefix, rule, value in derived:
            trunk = Segment(
                id=f"{prefix}-s{seed}", phases=static(rule), seed=seed, eval_steps=budgets
            )
            segments[trunk.id] = trunk
            for L in Ls:
                knob = {"temperature": value} if method == "temperature" else {"max_epochs": value}
                lineage = [Piece(trunk.id, 0, L + F)]
                tid = f"{prefix}-L{L}-s{seed}"
                trials.append(Trial(tid, method, L, F, seed, lineage, **knob))
    return Plan(segments, trials)


def describe(p: Plan) -> str:
    """The tree as text, with step accounting against the naive grid."""
    lines = []

    def walk(seg: Segment, depth: int) -> None:
        pad = "  " * depth
        src = f" from {seg.parent}@{seg.start_step}" if seg.parent else ""
        forks = f", forks at {seg.fork_steps}" if seg.fork_steps else ""
        phases = " → ".join(
            f"{ph.name or 'phase'} {ph.steps}{' (reset)' if ph.reset else ''}" for ph in seg.phases
        )
        lines.append(f"{pad}{seg.id}: steps {seg.start_step}..{seg.end_step}{src}{forks}: {phases}")
        for child in p.children(seg.id):
            walk(child, depth + 1)

    for seg in p.segments.values():
        if seg.parent is None:
            walk(seg, 0)
    ratio = p.naive_steps / max(p.tree_steps, 1)
    lines.append(
        f"{len(p.segments)} segments serve {len(p.trials)} trials: {p.tree_steps:,} optimizer "
        f"steps vs {p.naive_steps:,} for the naive grid ({ratio:.2f}x fewer)"
    )
    return "\n".join(lines)


def naive(space: SpaceConfig) -> Plan:
    """The same trials with no sharing: every trial is its own trunk, run from scratch.

    The baseline that ``bench/tree_vs_naive.py`` measures the tree against; the trials (ids,
    methods, steps) are the tree's, so the two frontiers can be compared point by point.
    """
    tree = plan(space)
    segments: dict[str, Segment] = {}
    trials = []
    for t in tree.trials:
        phases = []
        for piece in t.lineage:
            seg = tree.segments[piece.segment]
            phases += _phases_between(seg, piece.from_step, piece.to_step)
        seg = Segment(id=f"naive-{t.id}", phases=phases, seed=t.seed)
        segments[seg.id] = seg
        lineage = [Piece(seg.id, 0, t.final_step)]
        trials.append(dataclasses.replace(t, lineage=lineage))
    return Plan(segments, trials)


def _phases_between(seg: Segment, start: int, stop: int) -> list[PhaseConfig]:
    """The phases ``seg`` runs over global steps ``start..stop``, cut to that range."""
    out, at = [], seg.start_step
    for ph in seg.phases:
        lo, hi = max(at, start), min(at + ph.steps, stop)
        if lo < hi:
            out.append(dataclasses.replace(ph, steps=hi - lo, reset=ph.reset and lo == at))
        at += ph.steps
    return out
