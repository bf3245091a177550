"""A sweep's wall time before it runs: the real ``Tree`` handing segments to simulated trials.

    python -m ray_mtl.simulate --space tune_spaces/paper_fr_ro.yaml --slots 8 64 --step-s 0.1
    sim = simulate(space, Tree(plan(space).segments, 8), slots=8, costs=Costs(step_s=0.1))
    sim.makespan_s, sim.lower_bound_s, sim.ratio

Trials behave as ``ray_mtl.tune`` and ``ray_mtl.ray_train`` run them: Tune starts one when a slot
is free and the tree has a ready segment; its Ray Train run starts (``train_start_s``), trains
what it is handed (each segment: ``segment_s``, then its steps, with the evaluations and
checkpoints the loop would make), asks ``more`` when done, polls while told to wait and ends
when told to (``train_end_s``). A checkpoint's report reaches the tree ``fork_s`` after it is
written, which is when its branches are ready. Pure Python: no Ray, no torch.

The lower bound (``Simulation.lower_bound_s``) is the largest of these, each a bound on every
simulated sweep because it holds for a looser model of it: the slots all free once one Ray Train
start is paid (a later trial's start and a waiting trial's poll only delay segments), a segment
holding its slot for its set-up, steps, evaluations and checkpoints, a branch starting no sooner
than its fork checkpoint's report reaches the tree, one Train end after the last segment:

- ``path``: the longest chain of segments from a trunk's start to a branch's end, through forks;
- ``work``: all segments' seconds over the slots;
- ``release``: work that cannot start before a time r, since no branch starts before its fork
  can, still to do after it, r + (that work) / slots, the largest over r;
- ``packing``: segments do not split: weighed in whole units of about a segment's length,
  some slot runs its share of them, rounded up (``_packing``);
- ``overlap``: an end T is out of reach when the segments that must run at some time (started
  no sooner than their release, no later than T less their tail) outnumber the slots then;
- ``search`` (plans of up to ``SEARCH_SEGMENTS`` segments): the model's shortest schedule,
  found by search (``_search``); a few long segments on few slots pack no better than it.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import math
import sys
from collections.abc import Callable
from typing import Any

from ray_mtl.config import SpaceConfig, check, load
from ray_mtl.errors import cli
from ray_mtl.plan import Segment, eval_and_checkpoint_steps, plan, segment_config
from ray_mtl.scheduler import POLL_S, WAIT_S, Tree

SEARCH_SEGMENTS = 16
"""Plans this small get the ``search`` bound: the smoke space (7 segments), the tests' random
trees. The shipped GPU spaces (32 and 159) are too big to search, and need not be: there
``packing`` and ``overlap`` come within 0.2% of the hand-out (``bench/schedule.py``)."""
SEARCH_NODES = 20_000
"""The search's budget of partial schedules expanded: a few seconds at most."""


@dataclasses.dataclass
class Costs:
    """Seconds each part of a sweep takes. Defaults: ``bench.tree_vs_naive`` on the 2-core
    development machine (smoke model, 2 workers of 0.45 CPU, two trials at once; see
    ``bench/results/tree_vs_naive.json``)."""

    step_s: float = 0.1
    """One optimizer step."""
    eval_s: float = 0.5
    """One evaluation (dev CE of every task, BLEU as configured)."""
    checkpoint_s: float = 0.1
    """Writing one checkpoint and handing it to Ray Train."""
    segment_s: float = 0.5
    """A segment's set-up before its first step: model, optimizer, sampler, fork checkpoint."""
    train_start_s: float = 15.0
    """A Tune trial's start to its first segment's: Ray Train's controller and worker group,
    imports, the process group, the data."""
    train_end_s: float = 3.0
    """A trial's last segment to its slot free for the next trial: Ray Train's end, Tune's."""
    fork_s: float = 1.0
    """A checkpoint written to its report reaching the tree (Train controller, Tune, searcher)."""
    sweep_s: float = 20.0
    """The sweep around its trials: validation, Ray and Tune start, results collected."""
    poll_s: float = POLL_S
    """How often a waiting trial asks again, and Tune, with a slot free, for a new trial."""
    wait_s: float = WAIT_S
    """How long a trial waits before it ends."""


@dataclasses.dataclass
class Simulation:
    """What a simulated sweep did."""

    slots: int
    makespan_s: float
    """From the first trial's start to the last one's end."""
    lower_bound_s: float
    """The largest of ``bounds``: no hand-out can end sooner (the module docstring)."""
    bounds: dict[str, float]
    """Each lower bound by name (``path``, ``work``, ``release``, ``packing``, ``overlap``,
    ``search``)."""
    wall_s: float
    """The whole sweep: ``makespan_s`` + ``Costs.sweep_s``."""
    train_runs: int
    """Tune trials started (each a Ray Train run)."""
    idle_ready_s: float
    """Slot-seconds a slot was free or its trial waiting while a segment was ready: not handed
    out, or held by a trial behind another."""
    segments: dict[str, dict[str, Any]]
    """Per segment: its trial, when it was ready, started and ended."""

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.lower_bound_s

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "segments"}
        return out | {"ratio": self.ratio}


def report_steps(space: SpaceConfig, seg: Segment) -> list[tuple[int, bool]]:
    """The steps at which ``seg`` reports (evaluates), each with whether it checkpoints there."""
    evals, ckpts = eval_and_checkpoint_steps(
        segment_config(space, seg, "sim"), seg.start_step, seg.end_step
    )
    return [(s, s in ckpts) for s in sorted(evals)]


def _elapsed(seg: Segment, reports: list[tuple[int, bool]], until: int, c: Costs) -> float:
    """Seconds from ``seg``'s start to its report at step ``until`` done."""
    done = [(s, k) for s, k in reports if s <= until]
    evals = sum(c.eval_s + k * c.checkpoint_s for _, k in done)
    return c.segment_s + (until - seg.start_step) * c.step_s + evals


def bounds(
    segments: dict[str, Segment],
    reports: dict[str, list],
    slots: int,
    c: Costs,
    nodes: int = SEARCH_NODES,
) -> dict[str, float]:
    """Lower bounds of the makespan on ``slots``, in seconds, named as in the module docstring;
    ``nodes``: the search's budget of expanded partial schedules."""
    work = {i: _elapsed(s, reports[i], s.end_step, c) for i, s in segments.items()}
    kids: dict[str, list[Segment]] = {i: [] for i in segments}
    for s in segments.values():
        if s.parent is not None:
            kids[s.parent].append(s)
    # From a parent's start to its branch's release: its fork checkpoint's report in the tree.
    delay = {
        i: _elapsed(segments[s.parent], reports[s.parent], s.start_step, c) + c.fork_s
        for i, s in segments.items()
        if s.parent is not None
    }
    release: dict[str, float] = {}  # the earliest a segment can start
    tail: dict[str, float] = {}  # from a segment's start to the end of its last descendant
    for i, s in segments.items():  # a branch comes after its parent in a plan
        release[i] = 0.0 if s.parent is None else release[s.parent] + delay[i]
    for i in reversed(segments):
        tail[i] = max([work[i], *(delay[k.id] + tail[k.id] for k in kids[i])])

    def after(r: float) -> float:
        """Work that no schedule can do before ``r``."""
        return sum(max(0.0, work[i] - max(0.0, r - release[i])) for i in segments)

    def fits(end: float) -> bool:
        """Whether the segments that must run at a time (started no earlier than their release
        and no later than ``end`` - their tail) fit the slots at every time."""
        edges = []
        for i in segments:
            latest = end - tail[i]
            if latest < release[i]:
                return False
            if latest < release[i] + work[i]:
                edges += [(latest, 1), (release[i] + work[i], -1)]
        running = 0
        for _, d in sorted(edges):  # an end before a start at the same time
            running += d
            if running > slots:
                return False
        return True

    out = {
        "path": max(release[i] + tail[i] for i in segments),
        "work": sum(work.values()) / slots,
        "release": max(r + after(r) / slots for r in set(release.values())),
    }
    units = {w / q for w in work.values() if w > 0 for q in range(1, 9)}  # about a segment's
    out["packing"] = max((_packing(work, slots, u) for u in units), default=0.0)
    lo = max(out.values())
    hi = out["path"] + max(work.values())  # nothing must run at any time: it fits
    while hi - lo > 1e-6 * lo:  # lo: no schedule ends by it (or a bound above does)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    out["overlap"] = lo
    if len(segments) <= SEARCH_SEGMENTS:
        out["search"] = _search(segments, work, delay, tail, slots, nodes)
    fixed = c.train_start_s + c.train_end_s
    return {k: fixed + v for k, v in out.items()}


def _packing(work: dict[str, float], slots: int, unit: float) -> float:
    """Counting each segment as whole units (its seconds over ``unit``, rounded), some slot
    runs at least (all units / slots, rounded up) of them, each no shorter than the shortest
    unit of any segment: that many times it."""
    units = {i: round(w / unit) for i, w in work.items()}
    shortest = min((work[i] / k for i, k in units.items() if k), default=0.0)
    return math.ceil(sum(units.values()) / slots) * shortest


def _search(
    segments: dict[str, Segment],
    work: dict[str, float],
    delay: dict[str, float],
    tail: dict[str, float],
    slots: int,
    nodes: int,
) -> float:
    """The shortest schedule of the model in the module docstring, by best-first search; cut
    short after ``nodes`` expansions, the least bound still open (a lower bound all the same).

    A partial schedule places segments in the order they start, each at its release or when
    its slot frees, whichever is later, and never before the one placed last: every schedule,
    its segments started as early as its slots' orders allow, is one such sequence, so the
    search misses no shorter one."""
    order = list(segments)
    parent = {i: segments[i].parent for i in order}
    remaining = sum(work.values())

    def bound(start: dict[str, float], free: tuple[float, ...], last: float, left: float):
        """Every completion of a partial schedule ends after this: each segment's tail from its
        start (or its earliest one), and the slots' load from when each can next start one."""
        est: dict[str, float] = {}
        b = (sum(max(f, last) for f in free) + left) / slots
        for i in order:  # parents first
            if i in start:
                b = max(b, start[i] + tail[i])
                continue
            p = parent[i]
            r = 0.0 if p is None else (start[p] if p in start else est[p]) + delay[i]
            est[i] = max(r, last, free[0])
            b = max(b, est[i] + tail[i])
        return b

    root = (0.0,) * slots
    # ties: the fuller schedule first, down to a complete one as soon as its bound holds
    heap = [(bound({}, root, 0.0, remaining), 0, 0, {}, root, 0.0, remaining)]
    seq = itertools.count(1)
    for _ in range(nodes):
        b, _, _, start, free, last, left = heapq.heappop(heap)
        if len(start) == len(order):
            return b  # complete: b is its makespan, and no open schedule can end sooner
        for i in order:
            p = parent[i]
            if i in start or (p is not None and p not in start):
                continue
            r = 0.0 if p is None else start[p] + delay[i]
            for k, f in enumerate(free):
                s = max(r, f)
                if s < last or (k and f == free[k - 1]):
                    continue  # out of start order, or the same as the slot before
                child = {**start, i: s}
                slots_after = tuple(sorted((*free[:k], s + work[i], *free[k + 1 :])))
                cb = max(b, bound(child, slots_after, s, left - work[i]))
                node = (cb, -len(child), next(seq), child, slots_after, s, left - work[i])
                heapq.heappush(heap, node)
    return heap[0][0]


class _Sweep:
    """The event loop of one simulated sweep (times in seconds from its first trial)."""

    def __init__(self, space: SpaceConfig, tree: Tree, slots: int, c: Costs) -> None:
        self.tree, self.c, self.free = tree, c, slots
        self.reports = {i: report_steps(space, s) for i, s in tree.segments.items()}
        self.events: list[tuple[float, int, Callable, tuple]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.end = 0.0  # the last trial's end (give-ups and polls of ended waits come later)
        self.trials = 0
        self.tune_waits = False  # a slot is free and Tune's last suggest got nothing
        self.tune_next = -1.0  # when Tune asks again
        self.waiting: dict[str, float] = {}  # trial told to wait -> since when
        self.polls: dict[str, float] = {}  # waiting trial -> its next poll
        self.idle_ready = 0.0
        self.record = {i: {"ready": 0.0} for i in tree.ready}
        self.behind: dict[str, int] = {}  # trial -> segments it holds behind the one it trains

    def at(self, t: float, fn: Callable, *args: Any) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn, args))

    def run(self) -> float:
        self.at(0.0, self.tune)
        while self.events:
            t, _, fn, args = heapq.heappop(self.events)
            ready = len(self.tree.ready) + sum(self.behind.values())
            idle = min(self.free * self.tune_waits + len(self.waiting), ready)
            self.idle_ready += idle * (t - self.now)
            self.now = t
            fn(*args)
        if not self.tree.finished() or any("end" not in r for r in self.record.values()):
            raise RuntimeError("the simulated sweep stalled before every segment was trained")
        return self.end

    def changed(self) -> None:
        """The tree changed: waiting trials ask at their next poll, Tune at its next."""
        for trial, since in self.waiting.items():
            ticks = math.floor((self.now - since) / self.c.poll_s) + 1
            when = since + ticks * self.c.poll_s
            if self.polls.get(trial, math.inf) > when:
                self.polls[trial] = when
                self.at(when, self.poll, trial, when)
        if self.tune_waits and self.tune_next < self.now:
            self.tune_next = self.now + self.c.poll_s
            self.at(self.tune_next, self.tune)

    def tune(self) -> None:
        self.tune_waits = False
        while self.free and not self.tree.finished():
            trial = f"t{self.trials:04d}"
            first = self.tree.suggest(trial)
            if first is None:
                self.tune_waits = True
                return
            self.trials += 1
            self.free -= 1
            self.at(self.now + self.c.train_start_s, self.train, trial, first)
            self.changed()

    def train(self, trial: str, queue: list[str]) -> None:
        if not queue:  # started ahead of a fork: it asks until one has a segment for it
            self.ask(trial)
            return
        seg, rest = queue[0], queue[1:]
        s, c = self.tree.segments[seg], self.c
        self.record[seg] |= {"trial": trial, "start": self.now}
        self.behind[trial] = len(rest)
        t, step = self.now + c.segment_s, s.start_step
        for at, ckpt in self.reports[seg]:
            t += (at - step) * c.step_s + c.eval_s + ckpt * c.checkpoint_s
            step = at
            self.at(t + c.fork_s, self.result, seg, at, ckpt)
        self.at(t, self.trained, trial, seg, rest)

    def result(self, seg: str, step: int, ckpt: bool) -> None:
        before = set(self.tree.ready)
        path = f"sim://{seg}@{step}" if ckpt else None
        forked = self.tree.on_result({"segment": seg, "step": step, "checkpoint_path": path})
        for i in set(self.tree.ready) - before:
            self.record[i] = {"ready": self.now}
        if forked or step == self.tree.segments[seg].end_step:
            self.changed()

    def trained(self, trial: str, seg: str, rest: list[str]) -> None:
        self.record[seg]["end"] = self.now
        if rest:
            self.train(trial, rest)
        else:
            self.ask(trial)

    def ask(self, trial: str) -> None:
        self.polls.pop(trial, None)
        got = self.tree.more(trial)
        if got is None:
            if trial not in self.waiting:
                self.waiting[trial] = self.now
                self.at(self.now + self.c.wait_s, self.give_up, trial, self.now)
            return
        self.waiting.pop(trial, None)
        self.changed()
        if got:
            self.train(trial, got)
        else:
            self.at(self.now + self.c.train_end_s, self.complete, trial)

    def poll(self, trial: str, when: float) -> None:
        if self.polls.get(trial) == when:
            self.ask(trial)

    def give_up(self, trial: str, since: float) -> None:
        if self.waiting.get(trial) == since:
            del self.waiting[trial]
            self.polls.pop(trial, None)
            self.at(self.now + self.c.train_end_s, self.complete, trial)

    def complete(self, trial: str) -> None:
        self.tree.on_complete(trial, error=False)
        self.free += 1
        self.end = self.now
        self.tune()
        self.changed()


def simulate(space: SpaceConfig, tree: Tree, slots: int, costs: Costs | None = None) -> Simulation:
    """Run ``tree`` (the segments of ``space``'s plan or any other) on ``slots`` simulated
    trials at once."""
    c = costs or Costs()
    sweep = _Sweep(space, tree, slots, c)
    makespan = sweep.run()
    lower = bounds(tree.segments, sweep.reports, slots, c)
    return Simulation(
        slots=slots,
        makespan_s=makespan,
        lower_bound_s=max(lower.values()),
        bounds=lower,
        wall_s=makespan + c.sweep_s,
        train_runs=sweep.trials,
        idle_ready_s=sweep.idle_ready,
        segments=sweep.record,
    )


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ray_mtl.simulate", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--space", required=True, help="a search space YAML (tune_spaces/*.yaml)")
    p.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    for f in dataclasses.fields(Costs):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=f.default)
    args = p.parse_args(argv)
    check(min(args.slots) >= 1, "--slots", "positive integers", args.slots)
    for f in dataclasses.fields(Costs):
        check(
            getattr(args, f.name) >= 0,
            f"--{f.name.replace('_', '-')}",
            ">= 0 seconds",
            getattr(args, f.name),
        )
    space = load(SpaceConfig, args.space)
    costs = Costs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Costs)})
    segments = plan(space).segments
    print(f"{'slots':>5} {'wall':>9} {'makespan':>9} {'bound':>9} {'ratio':>6} {'runs':>5}")
    for n in args.slots:
        sim = simulate(space, Tree(segments, n), n, costs)
        print(
            f"{n:>5} {sim.wall_s:>8.0f}s {sim.makespan_s:>8.0f}s {sim.lower_bound_s:>8.0f}s "
            f"{sim.ratio:>6.3f} {sim.train_runs:>5}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
