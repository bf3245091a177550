"""A prepared data dir, read back: manifest, tokenizer, memory-mapped shards.

    data = load_prepared(root)       # or prepare(cfg), which returns the same thing
    data.shard("eng-ron", "train")   # pyarrow Table: src, tgt (list<int32>), src_text, tgt_text
    data.shard("eng-ron", "flores")  # an evaluation set of data.eval_sets, columns as test's
    data.shard("ron", "dev")         # kind lm: ids (list<int32>), text, bytes (int32) per row
    data.sequences("eng-ron")        # what the sampler draws: (src or None for lm, tgt or ids)
    data.decode(ids)                 # ids -> text, without pad/bos/eos/language tag

Layout of ``root``: ``manifest.json``, ``tokenizer.model``, ``shards/<task>/<split>.parquet``
(splits: train, dev, test and the task's evaluation sets).
Only the path is needed to rebuild a ``Prepared`` in another process.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sentencepiece as spm

from ray_mtl.data.tokenizer import BOS, EOS, PAD
from ray_mtl.errors import UserError

SPLITS = ("train", "dev", "test")
COUNT_COLUMNS = (
    "raw",
    "invalid",
    "duplicate",
    "decontaminated",
    "too_long",
    "train",
    "dev",
    "test",
)


def manifest_hash(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON, its own ``hash`` field left out."""
    body = {k: v for k, v in manifest.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Prepared:
    """Read access to one prepared data dir."""

    def __init__(self, root: Path, manifest: dict) -> None:
        self.root = root
        self.manifest = manifest
        self.manifest_hash: str = manifest["hash"]
        self.tasks: list[str] = list(manifest["task_order"])
        self.kind: str = manifest.get("kind", "translation")
        """translation (pairs) or lm (documents); manifests from before ``kind`` are pairs."""
        self.built: list[str] = []
        """Stages that ``prepare`` ran to produce this (empty: everything came from the cache)."""
        self._shards: dict[tuple[str, str], pa.Table] = {}  # evaluation asks for dev each time

    def __repr__(self) -> str:
        return f"Prepared({str(self.root)!r}, tasks={self.tasks})"

    def tokenizer(self) -> spm.SentencePieceProcessor:
        return self._sp

    @cached_property
    def _sp(self) -> spm.SentencePieceProcessor:
        return spm.SentencePieceProcessor(model_file=str(self.root / "tokenizer.model"))

    @cached_property
    def _tag_ids(self) -> frozenset[int]:
        return frozenset(self._sp.piece_to_id(t) for t in self.manifest["tokenizer"]["tags"])

    def _task(self, task: str) -> dict:
        try:
            return self.manifest["tasks"][task]
        except KeyError:
            raise UserError(f"task {task!r} is not in {self.root} (tasks: {self.tasks})") from None

    def shard(self, task: str, split: str) -> pa.Table:
        """The task's split, memory-mapped (columns src, tgt, src_text, tgt_text; lm: ids, text,
        bytes)."""
        splits = (*SPLITS, *self.eval_sets(task))
        if split not in splits:
            raise UserError(f"split: expected one of {', '.join(splits)}, got {split!r}")
        if (task, split) not in self._shards:
            path = self.root / "shards" / task / f"{split}.parquet"
            # ParquetFile rather than read_table: the same table without importing
            # pyarrow.dataset, 1-2 s of every Ray Train worker's start on 2 cores.
            self._shards[task, split] = pq.ParquetFile(path, memory_map=True).read()
        return self._shards[task, split]

    def eval_sets(self, task: str) -> list[str]:
        """The names of the task's extra evaluation sets (``data.eval_sets``), in order."""
        return list(self._task(task)["counts"].get("eval_sets", {}))

    def sequences(self, task: str, split: str = "train") -> tuple[pa.ChunkedArray | None, ...]:
        """The id lists a sampler draws: (source, target) of pairs; (None, ids) of documents."""
        shard = self.shard(task, split)
        if self.kind == "lm":
            return None, shard.column("ids")
        return shard.column("src"), shard.column("tgt")

    def size(self, task: str) -> int:
        """Training examples of ``task``: pairs, or document rows (lm, long documents cut)."""
        entry = self._task(task)
        return entry["rows"]["train"] if self.kind == "lm" else entry["counts"]["train"]

    @property
    def sizes(self) -> dict[str, int]:
        """Training examples of every task, in task order (what the rate rules take)."""
        return {t: self.size(t) for t in self.tasks}

    def lang_tag_id(self, task: str) -> int:
        """Id of the task's target-language tag (the first source token)."""
        return self._sp.piece_to_id(self._task(task)["tag"])

    @property
    def vocab_size(self) -> int:
        return self.manifest["tokenizer"]["vocab_size"]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` up to the first EOS, without pad/bos and language tags."""
        drop = self._tag_ids | {PAD, BOS}
        out = []
        for i in ids:
            if i == EOS:
                break
            if i not in drop:
                out.append(int(i))
        return self._sp.decode(out)


def load_prepared(path: str | Path) -> Prepared:
    """Open a prepared dir; a UserError says what is missing or corrupt."""
    root = Path(path).expanduser().resolve()
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root}: not a prepared data dir (manifest.json not found)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{root / 'manifest.json'}: cannot read ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("hash") != manifest_hash(manifest):
        raise UserError(f"{root / 'manifest.json'}: corrupt (hash does not match its content)")
    needed = [root / "tokenizer.model"] + [
        root / "shards" / t / f"{s}.parquet" for t in manifest["tasks"] for s in SPLITS
    ]
    for f in needed:
        if not f.is_file():
            raise UserError(f"{f}: missing from the prepared data dir {root}")
    return Prepared(root, manifest)


def table(prepared: Prepared) -> str:
    """Per-task counts as an aligned text table (raw = every other column summed; lm: counts of
    documents, then the training rows they were cut into)."""
    lm = prepared.kind == "lm"
    rows = [("task", *COUNT_COLUMNS, *(["train rows"] if lm else []))]
    for task in prepared.tasks:
        c = prepared.manifest["tasks"][task]["counts"]
        values = [c[k] if k != "invalid" else sum(c[k].values()) for k in COUNT_COLUMNS]
        values += [prepared.size(task)] if lm else []
        rows.append((task, *(f"{v:,}" for v in values)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)
