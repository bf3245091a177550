"""The scheduler of a sweep: which segment each trial trains next, and when a branch is ready.

    tree = Tree(plan.segments, slots=2, storage=sweep_uri)
    tree.suggest("t1")              # ["pt-s0"]: the longest chain of work first
    tree.on_result({"segment": "pt-s0", "step": 100, "checkpoint_path": ".../checkpoint_0"})
    tree.more("t1")                 # ["tp-L100-w0.3-s0"]: a branch once its fork exists
    tree.init_from("tp-L100-w0.3-s0")   # the fork checkpoint's URI
    tree.judge("tp-L100-w0.3-s0", 125, {"eng-fra": 4.1, "eng-ron": 5.0})  # stop at this rung?

Plain data over ``plan.Segment`` (no Ray): ``ray_mtl.tune`` holds a ``Tree`` in a named actor
that Tune's searcher and each trial's rank-0 worker ask. ``to_json``/``from_json`` write and read
its whole state, which is how a sweep resumed after a crash knows what it had handed out and
decided. With a space's ``prune`` and ``refine``, ``judge`` stops branches at rungs
(``ray_mtl.prune``) and adds branches where the front has gaps (``ray_mtl.refine``).
``ray_mtl.simulate`` drives the same ``Tree`` with simulated trials (wall time, no Ray).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

from ray_mtl.config import TaskGroups, from_dict, id_number
from ray_mtl.plan import Segment, branch_rate, continuation, new_branch
from ray_mtl.prune import should_stop
from ray_mtl.refine import Point, propose
from ray_mtl.storage import filesystem, join, with_path

# A trial told to wait (``Tree.more`` answered None) asks again every POLL_S seconds, and ends
# after WAIT_S of waiting (a later fork then gets a new trial): ``ray_mtl.ray_train`` does so,
# ``ray_mtl.simulate`` models it. The tree lets wait only as many trials as forks to come have
# segments, and ends the rest, so WAIT_S only bounds a wait it would have ended itself: 600 s
# ended 8 of five_way's 40 trials at 64 slots before their forks came (simulated), each a
# Ray Train start more; none ends at 4 h.
POLL_S = 0.2
WAIT_S = 4 * 3600.0


def priorities(segments: dict[str, Segment]) -> dict[str, tuple[int, int]]:
    """Per segment: (its critical path, its subtree's steps). The critical path is the steps of
    its longest chain of descendants, from its start to the end of the last segment that forks
    (directly or not) from it: a trunk whose branches fork late can outrank a longer trunk with
    none. The subtree's steps (its own and all its descendants') break ties."""
    children: dict[str, list[Segment]] = {i: [] for i in segments}
    for s in segments.values():
        if s.parent is not None:
            children[s.parent].append(s)
    out: dict[str, tuple[int, int]] = {}

    def walk(i: str) -> tuple[int, int]:
        if i not in out:
            s, kids = segments[i], [(c, walk(c.id)) for c in children[i]]
            path = max([s.steps, *(c.start_step - s.start_step + p for c, (p, _) in kids)])
            out[i] = (path, s.steps + sum(w for _, (_, w) in kids))
        return out[i]

    for i in segments:
        walk(i)
    return out


class Tree:
    """Which segment each Tune trial trains next: the ready one the most work depends on.

    A trial is handed one ready segment at a time, the one with the longest chain of
    descendants (``priorities``; among equals, the latest fork's), and asks for ``more`` when
    it has trained it. So no trial holds a segment back that a free slot could start, and a
    branch whose fork just arrived is weighed against what was ready before. A trial with
    nothing ready waits (``more`` answers None) while forks still to come in running trials
    have a segment for it, and with ``slots`` known, Tune starts such waiting trials ahead of
    the forks: Ray Train starts about once per slot, and off the critical path, rather than
    once per segment when its fork arrives.
    """

    def __init__(
        self,
        segments: dict[str, Segment],
        slots: int | None = None,
        storage: str = "",
        collect: bool = True,
        prune: dict | None = None,
        refine: dict | None = None,
    ):
        self.segments = segments
        self.slots = slots
        """Tune trials at once (None: no cap, e.g. GPUs with an autoscaler: then no trial starts
        before a segment is ready for it, lest the cluster grow for work to come)."""
        self.storage = storage
        """The sweep's URI. Fork checkpoints under it are kept relative to it, so a sweep moved
        to another dir resumes from its own files; Ray's ``Checkpoint.path`` drops the scheme
        and the URI's options, which ``init_from`` puts back."""
        self.ready = [i for i, s in segments.items() if s.parent is None]
        self.issued: dict[str, list[str]] = {}  # Tune trial id -> its segments, in order
        self.running: list[str] = []  # Tune trial ids, in the order they started
        self.progress: dict[str, int] = {}  # segment -> steps done
        self.failed: list[str] = []  # segments of trials that errored (a rerun may clear them)
        self.diverged: list[str] = []  # segments whose loss went non-finite (final)
        self.forks: dict[str, str] = {}  # "<segment>@<step>" -> checkpoint (every one reported)
        self.collect = collect
        """Delete checkpoints the tree no longer needs (``collectable``); False keeps all."""
        self.deleted: list[str] = []  # keys of ``forks`` whose checkpoint was deleted
        self.prune = prune
        """The rule of ``judge`` (``PruneConfig``'s rule, shrink and eta; None: no pruning)."""
        self.rung_points: dict[str, list] = {}  # "<method>@<steps since fork>" -> [[seg, point]]
        self.decisions: dict[str, bool] = {}  # "<segment>@<step>" -> stopped there (final)
        self.pruned: dict[str, int] = {}  # segment -> the step it was stopped at
        self.refine = refine
        """New branches (``ray_mtl.refine``): ``budget`` (steps), ``methods``, and the task
        groups ``high`` and ``low``; None: the plan's segments only."""
        self.finals: dict[str, dict[str, float]] = {}  # branch -> its best dev CE per task
        self.refined: list[str] = []  # the branches refinement added, in order

    def to_json(self) -> str:
        state = self.__dict__ | {
            "segments": [dataclasses.asdict(s) for s in self.segments.values()]
        }
        return json.dumps(state)

    @classmethod
    def from_json(cls, text: str) -> Tree:
        state = json.loads(text)
        segments = [from_dict(Segment, s) for s in state.pop("segments")]
        tree = cls({s.id: s for s in segments})
        tree.__dict__.update(state)
        return tree

    def suggest(self, trial_id: str) -> list[str] | None:
        """A new trial's first segment; empty: none yet, it starts and waits for a fork to come
        (``more``); None: no trial is needed now (what is ready, trials that are free take)."""
        if self.slots is not None and len(self.running) >= self.slots:
            return None  # a trial beyond the slots would wait for workers, and time out
        free = sum(not self._busy(t) for t in self.running)
        if len(self.ready) <= free and (self.ready or self.slots is None):
            return None
        self.running.append(trial_id)
        first = self.more(trial_id)
        return None if first == [] else first or []

    def more(self, trial_id: str) -> list[str] | None:
        """The next segment for a trial that has trained those it was given (empty: it may end;
        None: a fork still to come has a segment for it, ask again).

        It waits for a fork of its own when a branch from it would outrank every ready segment
        (its last results may not have arrived yet), and, with nothing ready, while forks to
        come in running trials have more segments than the trials that started before it and
        wait too: the others end (a later fork gets a new trial)."""
        mine = self.issued.get(trial_id, [])
        for i in mine:  # trained, though their last results may not have arrived yet
            self.progress[i] = self.segments[i].steps
        rank = priorities(self.segments)
        coming = self._coming()
        own = [rank[i][0] for i in coming if self.segments[i].parent in mine]
        if own and max(own) > max((rank[i][0] for i in self.ready), default=-1):
            return None
        if self.ready:
            # ties: the bigger subtree, then the one forking latest (its pre-training is the
            # longest, so with pruning the early forks' branches meet the strongest rivals at
            # their rungs), then the one ready first
            take = min(
                self.ready,
                key=lambda i: (-rank[i][0], -rank[i][1], -self.segments[i].start_step),
            )
            self.ready.remove(take)
            self.issued.setdefault(trial_id, []).append(take)
            return [take]
        idle = [t for t in self.running if t == trial_id or not self._busy(t)]
        if trial_id in idle[: len(coming)]:
            return None
        if trial_id in self.running:  # it ends
            self.running.remove(trial_id)
        return []

    def chain(self, trial_id: str) -> list[str]:
        """All segments issued to a trial so far, in order (a restarted trial goes on in them)."""
        return list(self.issued.get(trial_id, []))

    def init_from(self, seg: str) -> str | None:
        """The checkpoint URI a segment starts from (None: a trunk)."""
        if self.segments[seg].parent is None:
            return None
        fork = self.forks[self._fork(seg)]
        return fork if "://" in fork or fork.startswith("/") else join(self.storage, fork)

    def _fork(self, seg: str) -> str:
        """The key in ``forks`` of the checkpoint ``seg`` starts from."""
        s = self.segments[seg]
        return f"{s.parent}@{s.start_step}"

    def finished(self) -> bool:
        """Every segment issued or pruned, or unreachable behind a failure, a divergence or a
        pruned trunk."""
        done = {i for c in self.issued.values() for i in c} | set(self.pruned)
        return len(done | self.unreachable()) >= len(self.segments)

    def judge(self, seg: str, step: int, ce: dict[str, float]) -> bool:
        """Whether ``seg`` stops at ``step``, one of its rungs (``ce``: its best dev CE per task
        since its fork). A branch is compared with its method's branches at the same steps
        since their fork (``prune.should_stop``); a trunk stops when no fork step or trial end
        still ahead of it serves a branch that is not pruned. Decisions are final: asked again
        (a restart), it answers as before."""
        key = f"{seg}@{step}"
        if key not in self.decisions:
            s, stop = self.segments[seg], False
            if step >= s.end_step:  # its result: what refinement proposes from
                self.finals[seg] = ce
                self._refine(s)
            elif self.prune is not None and s.parent is None:
                stop = not self._serves_ahead(s, step)
            elif self.prune is not None:
                points = self.rung_points.setdefault(f"{s.method}@{step - s.start_step}", [])
                points.append([seg, [ce[t] for t in sorted(ce)]])
                stop = should_stop(np.array([p for _, p in points]), **self.prune)
            self.decisions[key] = stop
            if stop:
                self.pruned[seg] = step
                self._refine(s)
        return self.decisions[key]

    def _refined_steps(self) -> int:
        """Steps the new branches take: F each, but up to its stop for one that was pruned."""
        seg = self.segments
        return sum(self.pruned.get(i, seg[i].end_step) - seg[i].start_step for i in self.refined)

    def _root(self, seg: Segment) -> Segment:
        """The trunk a segment descends from (itself for a trunk)."""
        while seg.parent is not None:
            seg = self.segments[seg.parent]
        return seg

    def _refine(self, ended: Segment) -> None:
        """Once every branch of ``ended``'s method at its fork point has ended, a new branch of
        that seed's trunk where the front of its branches has its largest gap, within the
        budget (``refine.propose``): from a kept fork checkpoint of the trunk or, for an L
        between them, from a continuation of it (``plan.continuation``)."""
        r = self.refine
        if not r or ended.method not in r["methods"] or ended.parent is None:
            return
        left = r["budget"] - self._refined_steps()
        trunk = self._root(ended)
        kin = [
            b
            for b in self.segments.values()
            if b.method == ended.method and b.parent is not None and self._root(b) is trunk
        ]
        gone = set(self.finals) | set(self.pruned) | set(self.diverged)
        if left < ended.steps or any(
            b.id not in gone for b in kin if b.start_step == ended.start_step
        ):
            return

        def mean(ce: dict[str, float], group: str) -> float:
            return float(np.mean([ce[t] for t in r[group]]))

        points = [
            Point(
                b.start_step,
                branch_rate(b, r["low"]),
                mean(self.finals[b.id], "high"),
                mean(self.finals[b.id], "low"),
            )
            for b in kin
            if b.id in self.finals and b.id not in self.pruned
        ]
        # kept checkpoints of the trunk's run, its continuations' included: step -> segment
        sources: dict[int, str] = {}
        for key in self.forks:
            seg, step = key.rsplit("@", 1)
            s = self.segments.get(seg)
            if key not in self.deleted and s and not s.method and self._root(s) is trunk:
                sources.setdefault(int(step), seg)
        taken = {(b.start_step, id_number(branch_rate(b, r["low"]))) for b in kin}

        def way_to(L: int) -> Segment:  # from the kept checkpoint before L
            start = max(f for f in sources if f <= L)
            return continuation(trunk, sources[start], start, L)

        new = propose(points, list(sources), taken, between=r.get("between", False))
        if new and new[0] not in sources and way_to(new[0]).steps + ended.steps > left:
            new = propose(points, list(sources), taken)  # no room to continue: a kept fork
        if new is None:
            return
        L, rate = new
        added, source = [], sources.get(L)
        if source is None:  # a continuation to L, unless one is on its way there already
            way = way_to(L)
            added += [] if way.id in self.segments else [way]
            source = way.id
        b = new_branch(
            ended.method,
            ended.id.split("-")[0],
            source,
            L,
            ended.steps,
            rate,
            ended.seed,
            TaskGroups(r["high"], r["low"]),
            [x - ended.start_step for x in ended.rungs],
        )
        for s in [*added, b]:
            self.segments[s.id] = s
            self.refined.append(s.id)
        if self._fork(b.id) in self.forks:
            self.ready.append(b.id)
        self.ready += [s.id for s in added]

    def _serves_ahead(self, trunk: Segment, step: int) -> bool:
        """Whether a trial end or a fork with a branch not pruned lies past ``step``."""
        if any(e > step for e in trunk.eval_steps):
            return True
        ahead = [f"{trunk.id}@{f}" for f in trunk.fork_steps if f > step]
        return any(self._fork(b) in ahead and b not in self.pruned for b in self.segments)

    def _left(self, seg: str) -> int:
        return self.segments[seg].steps - self.progress.get(seg, 0)

    def _busy(self, trial_id: str) -> bool:
        """Whether a trial still trains a segment it was given."""
        return any(self._left(i) > 0 for i in self.issued.get(trial_id, []))

    def _closure(self, root: Callable[[Segment], bool], skip: set[str]) -> set[str]:
        """The segments outside ``skip`` that ``root`` holds for, and their descendants."""
        out: set[str] = set()
        changed = True
        while changed:
            changed = False
            for i, s in self.segments.items():
                if i not in out and i not in skip and (s.parent in out or root(s)):
                    out.add(i)
                    changed = True
        return out

    def _coming(self) -> list[str]:
        """Segments not issued nor ready that forks in running trials will still release."""
        owned = {i for t, c in self.issued.items() if t in self.running for i in c}
        dead = set(self.failed) | set(self.diverged) | set(self.pruned)

        def live(s: Segment) -> bool:
            return s.parent in owned and s.parent not in dead and self._fork(s.id) not in self.forks

        out = self._closure(live, owned | set(self.ready))
        return [i for i in self.segments if i in out]

    def unreachable(self) -> set[str]:
        """Segments that can never start because an ancestor failed, diverged or was pruned
        before their fork step."""
        issued = {i for c in self.issued.values() for i in c}
        dead = set(self.failed) | set(self.diverged) | set(self.pruned)
        return self._closure(
            lambda s: s.parent in dead and self._fork(s.id) not in self.forks, issued
        )

    def on_result(self, result: dict) -> bool:
        """Records progress; True when the result is a new fork (its branches are ready), a
        divergence (its unforked branches never will be) or the stop of a pruned segment."""
        seg, step = result["segment"], int(result["step"])
        self.progress[seg] = step - self.segments[seg].start_step
        if result.get("diverged"):
            if seg not in self.diverged:
                self.diverged.append(seg)
            return True
        if result.get("pruned"):
            self.progress[seg] = self.segments[seg].steps  # it trains no further
        path = result.get("checkpoint_path")
        key = f"{seg}@{step}"
        if not path or key in self.forks:
            return bool(result.get("pruned"))
        self.forks[key] = self._relative(path)
        self.ready += [i for i in self.segments if self._fork(i) == key]
        return True

    def adopt(self, found: dict[str, str]) -> None:
        """Take up checkpoints found on storage (``"<segment>@<step>"`` -> path) that never
        reached the tree: a driver that stopped between a worker's report and Tune's delivery
        of it would otherwise leave their branches waiting forever, since the resumed run goes
        on after them."""
        for key, path in sorted(found.items()):
            seg, step = key.rsplit("@", 1)
            if key not in self.forks and seg in self.segments:
                self.on_result({"segment": seg, "step": int(step), "checkpoint_path": path})

    def _relative(self, path: str) -> str:
        """A checkpoint path as Ray reports it, relative to the sweep when it lies under it."""
        if "://" in path:
            return path
        root = filesystem(self.storage)[1].rstrip("/") + "/" if self.storage else ""
        if root and path.startswith(root):
            return path[len(root) :]
        return with_path(self.storage, path) if self.storage else path

    def collectable(self) -> list[str]:
        """Checkpoints no longer needed, as URIs, now marked deleted: what is kept is each
        segment's last checkpoint (its best-per-task weights; its branches at its end step),
        its latest (fault recovery), and a fork until every branch from it has a checkpoint of
        its own or diverged."""
        if not self.collect:
            return []
        if self.refine and self._refined_steps() < self.refine["budget"]:
            return []  # refinement may still branch from any fork
        steps: dict[str, list[int]] = {}
        for key in self.forks:
            seg, step = key.rsplit("@", 1)
            steps.setdefault(seg, []).append(int(step))
        own = {key.rsplit("@", 1)[0] for key in self.forks}
        out = []
        for key in self.forks:
            seg, step = key.rsplit("@", 1)
            if key in self.deleted or seg not in self.segments:
                continue
            if int(step) in (self.segments[seg].end_step, max(steps[seg])):
                continue
            branches = [i for i in self.segments if self._fork(i) == key]
            if all(b in own or b in self.diverged or b in self.pruned for b in branches):
                self.deleted.append(key)
                fork = self.forks[key]
                out.append(
                    fork if "://" in fork or fork.startswith("/") else join(self.storage, fork)
                )
        return out

    def resumed(self, live: Tree) -> Tree:
        """The tree to resume with, from this one (saved by Tune with its trials) and ``live``
        (written at every change, so possibly newer): each trial Tune saved keeps every segment
        ``live`` had handed it; those handed to trials Tune never saved are ready again."""
        tree = Tree.from_json(live.to_json())
        lost = [i for t, c in live.issued.items() if t not in self.issued for i in c]
        lost = [i for i in lost if i not in live.pruned]  # a decision stands
        tree.issued = {t: c for t, c in live.issued.items() if t in self.issued}
        tree.running = [t for t in live.running if t in self.issued]
        tree.ready = lost + [i for i in live.ready if i not in lost]
        tree.failed = [i for i in live.failed if i not in lost]
        tree.diverged = [i for i in live.diverged if i not in lost]
        for i in lost:
            tree.progress.pop(i, None)
        return tree

    def on_complete(self, trial_id: str, error: bool) -> None:
        if trial_id in self.running:
            self.running.remove(trial_id)
        chain = self.issued.get(trial_id, [])
        if error:  # the segment that failed and those after it in the trial
            self.failed += [i for i in chain if self._left(i) > 0 and i not in self.failed]
        else:  # a rerun (Tuner.restore with resume_errored) that got through
            self.failed = [i for i in self.failed if i not in chain]
