"""The hand-out against the lower bound of a sweep's wall time, from 1 to 64 slots (simulated).

    .venv/bin/python -m bench.schedule          # seconds, pure Python; bench/results/schedule.json

Simulates (``ray_mtl.simulate``, the real ``Tree`` driven by simulated trials, default costs)
the shipped spaces and the two-trunk space of issue 20 at 1, 2, 4, 8, 16 and 64 slots, under
today's hand-out (critical path first, one segment at a time, waiting for forks to come) and
the one before it (``ShareTree``: a trial takes ready segments until it holds its share of the
known work over the slots). For each: makespan / lower bound, goal: at most 1.05, where the lower
bound is the largest of ``ray_mtl.simulate.bounds`` (critical path, work / slots, release times,
packing, overlap, search: no hand-out can beat any of them), named in the table where it binds;
and, beside it, the ratio to max(critical path, work / slots) alone, the bound before.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from bench.record import write_result
from ray_mtl.config import SpaceConfig, from_dict, load
from ray_mtl.plan import plan
from ray_mtl.scheduler import Tree
from ray_mtl.simulate import Costs, simulate

ROOT = Path(__file__).resolve().parents[1]
SLOTS = [1, 2, 4, 8, 16, 64]
GOAL = 1.05


class ShareTree(Tree):
    """The hand-out before issue 20 (the baseline): a trial takes ready segments, those others
    fork from first, until it holds its share of the work known now (the ready segments' steps
    plus what running trials have left, over ``slots``); it waits only for forks of its own and
    ends when nothing is ready. The Ray side gave up waiting after 30 s."""

    WAIT_S = 30.0

    def suggest(self, trial_id: str) -> list[str] | None:
        if not self.ready:
            return None
        self.running.append(trial_id)
        return self.more(trial_id)

    def more(self, trial_id: str) -> list[str] | None:
        mine = self.issued.get(trial_id, [])
        for i in mine:
            self.progress[i] = self.segments[i].steps
        if any(
            s.parent in mine and s.parent not in self.diverged and self._fork(i) not in self.forks
            for i, s in self.segments.items()
        ):
            return None
        if not self.ready:
            return []
        parents = {s.parent for s in self.segments.values()}
        order = sorted(self.ready, key=lambda i: i not in parents)
        running = sum(self._left(i) for t in self.running for i in self.issued.get(t, []))
        share = (sum(self._left(i) for i in order) + running) / self.slots
        take = order[:1]
        while len(take) < len(order) and sum(self._left(i) for i in take) < share:
            take.append(order[len(take)])
        for i in take:
            self.ready.remove(i)
        self.issued.setdefault(trial_id, []).extend(take)
        return take


def two_trunks() -> SpaceConfig:
    """Issue 20's space: two_phase + scalarization, one L of 1,000, F 1,000, one w, two trials
    at once on 2 cores: a 1,000-step trunk with one branch, and a 2,000-step static trunk."""
    d = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    d.update(name="two_trunks", methods=["two_phase", "scalarization"])
    d["grid"].update(pretrain_steps=[1000], finetune_steps=1000, low_rates=[0.7])
    d["resources"].update(num_workers=1, cpus_per_worker=0.9)
    return from_dict(SpaceConfig, d)


def spaces() -> dict[str, SpaceConfig]:
    names = ("paper_fr_ro", "five_way", "smoke")
    shipped = {n: load(SpaceConfig, ROOT / "tune_spaces" / f"{n}.yaml") for n in names}
    return shipped | {"two_trunks": two_trunks()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.parse_args()
    costs = Costs()
    figures: dict = {"costs": costs.__dict__, "goal": GOAL, "spaces": {}}
    head = ("space", "slots", "today", "before", "bound", "simple", "runs")
    print("{:<12} {:>5} {:>7} {:>7} {:>8} {:>7} {:>9}".format(*head))
    for name, space in spaces().items():
        segments = plan(space).segments
        rows = {}
        for n in SLOTS:
            new = simulate(space, Tree(segments, n), n, costs)
            old_costs = Costs(**costs.__dict__ | {"wait_s": ShareTree.WAIT_S})
            old = simulate(space, ShareTree(segments, n), n, old_costs)
            rows[n] = {"today": new.summary(), "before": old.summary()}
            binds = max(new.bounds, key=new.bounds.get)
            simple = max(new.bounds["path"], new.bounds["work"])
            print(
                f"{name:<12} {n:>5} {new.ratio:>7.3f} {old.ratio:>7.3f} {binds:>8} "
                f"{new.makespan_s / simple:>7.3f} {new.train_runs:>4}/{old.train_runs:<4}"
            )
        worst = max(r["today"]["ratio"] for r in rows.values())
        figures["spaces"][name] = {"segments": len(segments), "worst_ratio": worst, "slots": rows}
    worst = max(s["worst_ratio"] for s in figures["spaces"].values())
    figures["worst_ratio"], figures["goal_met"] = worst, worst <= GOAL
    path = write_result("schedule", figures)
    print(f"worst makespan / lower bound: {worst:.3f} (goal <= {GOAL}); {path}")


if __name__ == "__main__":
    main()
