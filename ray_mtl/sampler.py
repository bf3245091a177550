"""The task sampler: token-budgeted batches drawn from a mixture of tasks at given rates.

    w = rates(sizes, mixture)                # ray_mtl.rates
    sampler = MixtureSampler({"eng-fra": (table["src"], table["tgt"]), ...}, w,
                             batch_tokens=4096, seed=0, rank=rank, world_size=world_size)
    batch = sampler.next_batch()             # Batch(src, tgt_in, tgt_out, task_ids, n_tokens)
    sampler.set_rates(new_w)                 # at a phase boundary
    ckpt["sampler"] = sampler.state_dict()   # plain ints/floats/lists: fine for weights_only

Sampling is proportional sampling of examples (each example's task is drawn i.i.d. with
probability ``w_i``), never loss weighting. Each task is a stream over its examples, reshuffled
every epoch with a permutation seeded by (seed, task, epoch).

Batches: a pool of about ``pool_batches`` batches' worth of examples is drawn, sorted by length
and cut into batches whose padded size ``n * (max_src + max_tgt)`` stays within ``batch_tokens``,
and the batches are served in a shuffled order. Sorting keeps padding low; the task draw stays
i.i.d., so realized rates match the targets (a single batch is not a sample of the mixture).

Packed batches (``pack_length=N``): pairs are packed in draw order into rows of N source and N
target tokens (first fit among the 8 newest rows), ``batch_tokens // (2 N)`` rows
per batch. Every batch has the same shape, which is what ``torch.compile`` and a GPU want; the
``src_seg``/``tgt_seg`` ids say which pair each position belongs to.

Language modelling: a task's sources are None, its examples are documents (rows of ids ending
with EOS) and they go where targets go: ``tgt_in`` is BOS then the document shifted, ``tgt_out``
the document, ``src`` is None; packed rows hold N document tokens, ``batch_tokens // N`` per
batch, documents separated by their EOS and told apart by ``tgt_seg``.

DDP: ``batch_tokens`` is the global budget. Every rank simulates the same global stream and
takes rows ``[rank::world_size]`` of each global batch, so 2 ranks see exactly the examples of
1 rank with the same budget (a global batch always has at least ``world_size`` examples).

Numpy until a batch is built; torch is imported only then.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_mtl.config import check_rates
from ray_mtl.data.tokenizer import BOS, PAD
from ray_mtl.errors import UserError

if TYPE_CHECKING:
    import torch


def length_batches(
    src_len: np.ndarray, tgt_len: np.ndarray, batch_tokens: int, min_rows: int = 1
) -> list[list[int]]:
    """Row indices sorted by length and cut so that each batch's padded size
    ``rows * (max source + max target)`` stays within ``batch_tokens``.

    Sorting keeps padding small. A batch holds at least ``min_rows`` rows (one per DDP rank),
    even past the budget; a short last batch joins the one before it.
    """
    src_len, tgt_len = np.asarray(src_len), np.asarray(tgt_len)
    order = np.lexsort((src_len + tgt_len, np.maximum(src_len, tgt_len)))
    batches, cur, ms, mt = [], [], 0, 0
    for j in order.tolist():
        s, t = max(ms, src_len[j]), max(mt, tgt_len[j])
        if len(cur) >= min_rows and (len(cur) + 1) * (s + t) > batch_tokens:
            batches.append(cur)
            cur, s, t = [], src_len[j], tgt_len[j]
        cur.append(j)
        ms, mt = s, t
    if batches and len(cur) < min_rows:
        batches[-1].extend(cur)
    elif cur:
        batches.append(cur)
    return batches


@dataclasses.dataclass
class Batch:
    """One rank's share of a global batch; PAD=0 pads every row."""

    src: torch.Tensor | None
    """[B, S] source ids; None for documents (language modelling)."""
    tgt_in: torch.Tensor
    """[B, T] decoder input: BOS then the target without its last token."""
    tgt_out: torch.Tensor
    """[B, T] decoder labels: the target (ending with EOS)."""
    task_ids: torch.Tensor
    """[B, T] index in ``MixtureSampler.tasks`` of the task of each target position."""
    n_tokens: int
    """Non-pad target tokens in this batch."""
    src_seg: torch.Tensor | None = None
    """Packed rows only, [B, S]: 1, 2, ... for the row's first, second, ... pair; 0 at PAD."""
    tgt_seg: torch.Tensor | None = None
    """Packed rows only, [B, T]: as ``src_seg``, for the targets."""

    def model_inputs(self) -> tuple[torch.Tensor | None, ...]:
        """The model's arguments: (src, tgt_in, src_seg, tgt_seg) for pairs (the encoder-decoder),
        (tgt_in, tgt_seg) for documents (the decoder-only LM)."""
        if self.src is None:
            return self.tgt_in, self.tgt_seg
        return self.src, self.tgt_in, self.src_seg, self.tgt_seg

    @property
    def real_tokens(self) -> int:
        """Non-pad tokens, source and target: what tokens/s counts."""
        return self.n_tokens + (0 if self.src is None else int((self.src != PAD).sum()))

    def to(self, device: torch.device) -> Batch:
        """The tensors on ``device``; from pinned memory and without waiting on a GPU."""
        import torch

        on_gpu = device.type == "cuda"

        def move(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            return (x.pin_memory() if on_gpu else x).to(device, non_blocking=True)

        return Batch(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


def _flat(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column: row i is ``values[offsets[i]:offsets[i + 1]]``."""
    if hasattr(col, "num_chunks"):  # a pyarrow Table column (ChunkedArray)
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if hasattr(col, "offsets"):
        # Zero-copy views of the (memory-mapped) Arrow buffers; offsets index the unsliced values.
        return col.values.to_numpy(), col.offsets.to_numpy()
    offsets = np.zeros(len(col) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in col], out=offsets[1:])
    values = np.fromiter((v for x in col for v in x), dtype=np.int64, count=int(offsets[-1]))
    return values, offsets


def _gather(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
    """Rows ``idx`` of a (values, offsets) list column, PAD-padded to ``width``."""
    start, length = offsets[idx], offsets[idx + 1] - offsets[idx]
    cols = np.arange(width)
    pos = np.minimum(start[:, None] + cols[None, :], len(values) - 1)
    return np.where(cols[None, :] < length[:, None], values[pos], PAD)


class _Task:
    """One task's examples, and its stream: a fresh seeded permutation every epoch."""

    def __init__(self, name: str, src: Any, tgt: Any, seed: int) -> None:
        self.tgt, self.tgt_off = _flat(tgt)
        # Documents have no source: every source is empty.
        empty = (np.zeros(0, np.int64), np.zeros(len(self.tgt_off), np.int64))
        self.src, self.src_off = empty if src is None else _flat(src)
        self.n = len(self.src_off) - 1
        if self.n != len(self.tgt_off) - 1:
            raise UserError(f"task {name}: {self.n} source rows but {len(self.tgt_off) - 1} target")
        self.src_len = np.diff(self.src_off)
        self.tgt_len = np.diff(self.tgt_off)
        self._key = [seed, 1, zlib.crc32(name.encode())]
        self.seek(0, 0)

    def seek(self, epoch: int, pos: int) -> None:
        self.epoch, self.pos = epoch, pos
        self._perm = np.random.default_rng([*self._key, epoch]).permutation(self.n)

    def peek(self) -> int:
        """The next example, without taking it."""
        if self.pos == self.n:
            self.seek(self.epoch + 1, 0)
        return int(self._perm[self.pos])

    def next(self) -> int:
        i = self.peek()
        self.pos += 1
        return i


class MixtureSampler:
    """Token-budgeted batches from a mixture of tasks; deterministic given seed, rank, world_size.

    ``tasks`` maps a task to its (source id lists, target id lists): pyarrow list columns
    (read zero-copy) or Python lists; sources None for documents (every task alike). Targets end
    with EOS. ``task_ids`` in a Batch index ``self.tasks`` (the order of ``tasks``).
    """

    OPEN_ROWS = 8
    """Packing: rows still open for a pair that fits (the rest are closed)."""

    def __init__(
        self,
        tasks: dict[str, tuple[Any, Any]],
        rates: dict[str, float],
        batch_tokens: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pool_batches: int = 16,
        pack_length: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.tasks = list(tasks)
        self.documents = all(src is None for src, _ in tasks.values())
        if not self.documents and any(src is None for src, _ in tasks.values()):
            raise ValueError("sources: expected id lists for every task, or None for every task")
        self._data = [_Task(name, src, tgt, seed) for name, (src, tgt) in tasks.items()]
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pool_batches = pool_batches
        self.pack_length = pack_length
        # Packed: rows per global batch, a multiple of world_size so every rank has the same shape.
        sides = 1 if self.documents else 2
        rows = max(1, batch_tokens // (sides * pack_length)) if pack_length else 0
        self._rows = -(-rows // world_size) * world_size
        self._examples = [0] * len(self.tasks)  # delivered (whole global batch), for accounting
        self._tokens = [0] * len(self.tasks)
        self._pool_index = 0  # pool p draws from rng (seed, 0, p): a resume needs only p
        self._pool: list[np.ndarray] | None = None  # global batches of (task, example) rows
        self._consumed = 0
        self._snapshot: list[tuple[int, int]] = []  # stream (epoch, pos) when the pool was drawn
        self._set(rates)

    def _set(self, w: dict[str, float]) -> None:
        self._rates = check_rates(w, self.tasks)
        for t, name in zip(self._data, self.tasks, strict=True):
            if self._rates[name] > 0 and t.n == 0:
                raise UserError(f"rates.{name}: rate {self._rates[name]} for a task with no data")
        self._p = np.array([self._rates[name] for name in self.tasks])
        self._p /= self._p.sum()
        self._phase_examples = [0] * len(self.tasks)

    def set_rates(self, rates: dict[str, float]) -> None:
        """New rates from the next batch on; the rest of the current pool is dropped.

        The same rates again is a no-op, so a resumed run may call it without changing the stream.
        """
        if check_rates(rates, self.tasks) == self._rates:
            return
        if self._pool is not None:
            self._pool, self._consumed = None, 0
            self._pool_index += 1
        self._set(rates)

    # -- drawing ------------------------------------------------------------------------------

    def _draw_pool(self) -> None:
        rng = np.random.default_rng([self.seed, 0, self._pool_index])
        self._snapshot = [(t.epoch, t.pos) for t in self._data]
        self._pool = self._draw_packed(rng) if self.pack_length else self._draw_bucketed(rng)
        self._consumed = 0

    def _draw_packed(self, rng: np.random.Generator) -> list[np.ndarray]:
        """``pool_batches`` batches of (task, example, row in batch), filled in draw order."""
        n, limit = self.pack_length, self.pool_batches * self._rows
        out, rows = [], 0
        open_rows: list[list[int]] = []  # [row, source tokens, target tokens], newest last
        while True:
            for k in rng.choice(len(self.tasks), size=1024, p=self._p).tolist():
                task = self._data[k]
                i = task.peek()
                s, t = int(task.src_len[i]), int(task.tgt_len[i])
                if s > n or t > n:
                    longest = (
                        f"document row ({t}" if self.documents else f"pair ({s} source, {t} target"
                    )
                    raise UserError(
                        f"pack_length: expected at least the longest {longest} tokens in task "
                        f"{self.tasks[k]}), got {n}"
                    )
                # First fit among the last few rows: 0.9+ of a row is tokens, at ~1 us a pair.
                place = next((r for r in open_rows if r[1] + s <= n and r[2] + t <= n), None)
                if place is None:
                    if rows == limit:  # the pair stays first in its task's stream
                        entries = np.array(out, dtype=np.int64)
                        entries = entries[np.argsort(entries[:, 2], kind="stable")]
                        batch, entries[:, 2] = np.divmod(entries[:, 2], self._rows)
                        return [entries[batch == b] for b in range(self.pool_batches)]
                    place, rows = [rows, 0, 0], rows + 1
                    open_rows = [*open_rows[-(self.OPEN_ROWS - 1) :], place]
                out.append((k, task.next(), place[0]))
                place[1], place[2] = place[1] + s, place[2] + t

    def _draw_bucketed(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Batches of (task, example) drawn to a token budget, sorted by length and cut."""
        rows, src_len, tgt_len = [], [], []
        cost, budget = 0, self.pool_batches * self.batch_tokens
        while cost < budget or len(rows) < self.world_size:
            for k in rng.choice(len(self.tasks), size=1024, p=self._p).tolist():
                task = self._data[k]
                i = task.next()
                rows.append((k, i))
                src_len.append(int(task.src_len[i]))
                tgt_len.append(int(task.tgt_len[i]))
                cost += src_len[-1] + tgt_len[-1]
                if cost >= budget and len(rows) >= self.world_size:
                    break
        rows = np.array(rows, dtype=np.int64)
        batches = length_batches(src_len, tgt_len, self.batch_tokens, min_rows=self.world_size)
        return [rows[batches[b]] for b in rng.permutation(len(batches)).tolist()]

    def next_batch(self) -> Batch:
        """This rank's share of the next global batch."""
        if self._pool is None:
            self._draw_pool()
        rows = self._pool[self._consumed]
        self._consumed += 1
        if self._consumed == len(self._pool):
            self._pool, self._consumed = None, 0
            self._pool_index += 1
        for k, t in enumerate(self._data):
            idx = rows[rows[:, 0] == k, 1]
            self._examples[k] += len(idx)
            self._phase_examples[k] += len(idx)
            self._tokens[k] += int(t.src_len[idx].sum() + t.tgt_len[idx].sum())
        if self.pack_length:
            mine = rows[rows[:, 2] % self.world_size == self.rank]
            return self._packed(mine[:, :2], mine[:, 2] // self.world_size)
        return self._tensors(rows[self.rank :: self.world_size])

    def _tensors(self, rows: np.ndarray) -> Batch:
        import torch  # here only: the rate rules stay importable without torch

        # Vectorised per task: a Python loop over rows costs more than a GPU step at 64k tokens.
        src_len = np.empty(len(rows), dtype=np.int64)
        tgt_len = np.empty(len(rows), dtype=np.int64)
        for k, t in enumerate(self._data):
            sel = rows[:, 0] == k
            src_len[sel], tgt_len[sel] = t.src_len[rows[sel, 1]], t.tgt_len[rows[sel, 1]]
        src = np.full((len(rows), src_len.max()), PAD, dtype=np.int64)  # [B, 0] for documents
        tgt_out = np.full((len(rows), tgt_len.max()), PAD, dtype=np.int64)
        for k, t in enumerate(self._data):
            sel = np.flatnonzero(rows[:, 0] == k)
            if len(sel):
                idx = rows[sel, 1]
                src[sel] = _gather(t.src, t.src_off, idx, src.shape[1])
                tgt_out[sel] = _gather(t.tgt, t.tgt_off, idx, tgt_out.shape[1])
        # decoder input: BOS + target without its EOS (the EOS shifts past the row's length)
        tgt_in = np.full_like(tgt_out, PAD)
        tgt_in[:, 0] = BOS
        tgt_in[:, 1:] = tgt_out[:, :-1]
        tgt_in[np.arange(tgt_out.shape[1])[None, :] >= tgt_len[:, None]] = PAD
        return Batch(
            src=None if self.documents else torch.from_numpy(src),
            tgt_in=torch.from_numpy(tgt_in),
            tgt_out=torch.from_numpy(tgt_out),
            task_ids=torch.from_numpy(np.repeat(rows[:, :1], tgt_out.shape[1], axis=1)),
            n_tokens=int(tgt_len.sum()),
        )

    def _packed(self, pairs: np.ndarray, row: np.ndarray) -> Batch:
        """(task, example) pairs placed in ``row`` (in order within a row) -> a packed Batch."""
        import torch

        shape = (self._rows // self.world_size, self.pack_length)
        first = np.r_[True, row[1:] != row[:-1]]  # a row's pairs are consecutive
        index = np.arange(len(row))
        nth = index - np.maximum.accumulate(
            np.where(first, index, 0)
        )  # the pair's place in its row

        def tokens(side: str) -> tuple[np.ndarray, ...]:
            """Per token of ``side``: (its pair, its column, its place in the pair, its id)."""
            length = np.empty(len(pairs), dtype=np.int64)
            for k, t in enumerate(self._data):
                sel = pairs[:, 0] == k
                length[sel] = getattr(t, f"{side}_len")[pairs[sel, 1]]
            start = np.cumsum(length) - length
            pair = np.repeat(index, length)
            within = np.arange(length.sum()) - start[pair]
            start -= start[np.flatnonzero(first)][np.cumsum(first) - 1]  # from its row's start
            values = np.empty(len(pair), dtype=np.int64)
            for k, t in enumerate(self._data):
                sel = pairs[pair, 0] == k
                offsets = getattr(t, f"{side}_off")[pairs[pair[sel], 1]]
                values[sel] = getattr(t, side)[offsets + within[sel]]
            return pair, start[pair] + within, within, values

        def grid(pair: np.ndarray, col: np.ndarray, values: np.ndarray, fill: int = PAD):
            out = np.full(shape, fill, dtype=np.int64)
            out[row[pair], col] = values
            return torch.from_numpy(out)

        pair, col, within, ids = tokens("tgt")
        batch = Batch(
            src=None,
            # Decoder input per pair: BOS, then the pair's target shifted right by one.
            tgt_in=grid(pair, col, np.where(within == 0, BOS, np.roll(ids, 1))),
            tgt_out=grid(pair, col, ids),
            task_ids=grid(pair, col, pairs[pair, 0], fill=0),
            n_tokens=len(ids),
            tgt_seg=grid(pair, col, nth[pair] + 1, fill=0),
        )
        if not self.documents:
            s_pair, s_col, _, s_ids = tokens("src")
            batch.src = grid(s_pair, s_col, s_ids)
            batch.src_seg = grid(s_pair, s_col, nth[s_pair] + 1, fill=0)
        return batch

    # -- state and accounting -----------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain ints, floats, lists and strings: the pool is redrawn from its index on load."""
        active = self._pool is not None
        streams = self._snapshot if active else [(t.epoch, t.pos) for t in self._data]
        return {
            "tasks": list(self.tasks),
            "seed": self.seed,
            "batch_tokens": self.batch_tokens,
            "world_size": self.world_size,
            "pool_batches": self.pool_batches,
            "pack_length": self.pack_length,
            "rates": dict(self._rates),
            "pool_index": self._pool_index,
            "pool_active": active,
            "consumed": self._consumed,
            "streams": [[int(e), int(p)] for e, p in streams],
            "examples": list(self._examples),
            "tokens": list(self._tokens),
            "phase_examples": list(self._phase_examples),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("tasks", "seed", "batch_tokens", "world_size", "pool_batches", "pack_length"):
            if state[key] != getattr(self, key):
                raise UserError(
                    f"sampler state: saved with {key}={state[key]!r}, "
                    f"this run has {getattr(self, key)!r}"
                )
        self._set(state["rates"])
        for t, (epoch, pos) in zip(self._data, state["streams"], strict=True):
            t.seek(epoch, pos)
        self._pool_index = state["pool_index"]
        self._pool = None
        if state["pool_active"]:
            self._draw_pool()
            self._consumed = state["consumed"]
        self._examples = list(state["examples"])
        self._tokens = list(state["tokens"])
        self._phase_examples = list(state["phase_examples"])

    def accounting(self) -> dict[str, dict]:
        """Per task, over the global stream (identical on every rank).

        target_rate: the current rate; realized_rate: share of examples since the rates were
        last set; examples/tokens (source + target, unpadded): delivered so far; epochs:
        delivered examples / task size.
        """
        phase_total = sum(self._phase_examples) or 1
        return {
            name: {
                "target_rate": self._rates[name],
                "realized_rate": self._phase_examples[k] / phase_total,
                "examples": self._examples[k],
                "tokens": self._tokens[k],
                "epochs": self._examples[k] / max(self._data[k].n, 1),
            }
            for k, name in enumerate(self.tasks)
        }
