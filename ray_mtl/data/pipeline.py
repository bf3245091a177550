"""``prepare(cfg)``: corpora in, a prepared data dir out, every stage cached by its inputs.

    data = prepare(DataConfig(tasks=["eng-fra", "eng-ron"]))   # builds, or reuses the cache
    print(table(data), data.root)

Stages, each written whole (temp dir + rename) under ``<out>/stages/`` and keyed by a hash of
exactly what it depends on, so a changed input rebuilds only what it affects:

1. clean (per task): read + validate + normalise + dedupe, split, decontaminate. Key: the
   task's file contents (sha256), columns and the split settings.
2. tokenizer (all tasks): joint SentencePiece. Key: every task's cleaned train text + settings.
3. encode (per task): token ids, pairs over ``max_len`` dropped. Key: clean key + tokenizer key.

``kind: lm`` runs the same stages on languages (``ray_mtl.data.text``): documents instead of
pairs (one ``text`` column, split and decontaminated alike), the tokenizer sampled per language
with no language tags, and rows of ``ids``, ``text`` and ``bytes`` (long documents cut, not
dropped).

The result, ``<out>/prepared/<key>/`` (manifest, tokenizer, shards hard-linked from the encode
stage), is keyed by all of them; when it exists, ``prepare`` only hashes the input files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sentencepiece as spm

from ray_mtl.config import DataConfig
from ray_mtl.data import download
from ray_mtl.data.catalog import (
    DataRoot,
    Task,
    cache_root,
    data_dir,
    first_missing,
    resolve,
)
from ray_mtl.data.corpus import ReadStats, read_pairs
from ray_mtl.data.prepared import SPLITS, Prepared, load_prepared, manifest_hash
from ray_mtl.data.splits import make_splits
from ray_mtl.data.text import Language, document_rows, read_documents
from ray_mtl.data.tokenizer import EOS, SETTINGS, balanced_sample, train_tokenizer
from ray_mtl.errors import UserError
from ray_mtl.storage import atomic_dir, atomic_write_json, ensure_writable_dir

FORMAT = 2  # 2: TSV byte-order marks and UTF-16, Parquet told by content
"""Bump when any stage's output changes for the same inputs: every cache key includes it."""


def prepare(cfg: DataConfig, *, verbose: bool = True) -> Prepared:
    """Build (or reuse) the prepared data dir for ``cfg``; ``Prepared.built`` lists what ran."""
    log = _logger(verbose)
    cfg.check_kind()
    cfg.check_task_keys()
    out = ensure_writable_dir(Path(cfg.out_dir) if cfg.out_dir else cache_root(), "output dir")
    root = data_dir(cfg)
    log(f"corpora: {root.source} {root.path}")
    tasks = resolve(cfg, root.path)
    if root.is_cache:
        _download_missing(tasks, root, log)
    root.check(tasks)
    stages = out / "stages"
    built: list[str] = []

    cleaned = {t.name: _clean(t, cfg, stages, log, built) for t in tasks}
    tok_key, tok_dir = _tokenizer(tasks, cleaned, cfg, stages, log, built)
    encoded = {
        t.name: _encode(t, cleaned[t.name], tok_key, tok_dir, cfg, stages, log, built)
        for t in tasks
    }

    key = _digest([FORMAT, tok_key, [(t.name, encoded[t.name]["key"]) for t in tasks]])
    final = out / "prepared" / key[:16]
    if (final / "manifest.json").is_file() and not built:
        log(f"cached: nothing to rebuild, {final}")
    else:
        with atomic_dir(final) as tmp:
            shutil.copy2(tok_dir / "tokenizer.model", tmp / "tokenizer.model")
            for t in tasks:
                (tmp / "shards" / t.name).mkdir(parents=True)
                for split in split_names(cleaned[t.name]):
                    _link(
                        encoded[t.name]["dir"] / f"{split}.parquet",
                        tmp / "shards" / t.name / f"{split}.parquet",
                    )
            manifest = _manifest(key, cfg, tasks, cleaned, encoded, tok_key, tok_dir)
            atomic_write_json(tmp / "manifest.json", manifest)
        log(f"wrote {final}")
    prepared = load_prepared(final)
    prepared.built = built
    return prepared


# ----------------------------------------------------------------------------- stages


def _clean_settings(cfg: DataConfig) -> dict:
    """The settings a task's cleaned splits depend on."""
    return dict(
        max_pairs=cfg.max_pairs,
        dev_size=cfg.dev_size,
        dev_fraction=cfg.dev_fraction,
        seed=cfg.seed,
        strict=cfg.strict,
    )


def _columns(task: Task | Language) -> list[tuple[str, str]]:
    """(cleaned column, its language) of a task's text: what the tokenizer samples by language."""
    if isinstance(task, Language):
        return [("text", task.name)]
    return [("src", task.src_lang), ("tgt", task.tgt_lang)]


def _clean(task: Task | Language, cfg: DataConfig, stages: Path, log, built: list[str]) -> dict:
    files = {split: [_file_info(p) for p in getattr(task, split)] for split in ("train", "test")}
    eval_sets = getattr(task, "eval_sets", ())  # languages have none
    for name, path in eval_sets:  # keyed only when set: the caches of other tasks stay valid
        try:
            files[f"eval_sets.{name}"] = [_file_info(path)]
        except UserError as e:
            raise UserError(f"eval_sets.{task.name}.{name}: {e}") from None
    settings = _clean_settings(cfg)
    if task.name in cfg.train_pairs:  # only then: the caches of uncapped tasks stay valid
        settings["train_pairs"] = cfg.train_pairs[task.name]
    hashes = {s: [f["sha256"] for f in fs] for s, fs in files.items()}
    if isinstance(task, Language):
        what = ["lm", task.name, task.text_field, task.catalogue]
    else:
        what = [task.name, task.src_lang, task.tgt_lang, task.columns, task.extra_columns]
    key = _digest([FORMAT, *what, hashes, settings])
    final = stages / "clean" / f"{task.name}-{key[:16]}"
    if (final / "meta.json").is_file():
        log(f"{task.name}: cleaned splits cached")
        return _meta(final)

    train, train_stats = _read(task, "train", cfg, log)
    test, test_stats = _read(task, "test", cfg, log) if task.test else (None, ReadStats())
    held = {}
    for name, path in eval_sets:
        held[name], stats = _read(task, name, cfg, log, [path])
        files[f"eval_sets.{name}"][0]["lines"] = stats.lines
    label = None
    if isinstance(task, Language):
        label = f"language {task.name} ({', '.join(str(p) for p in task.train + task.test)})"
    splits = make_splits(
        task.name,
        train,
        test,
        dev_size=cfg.dev_size,
        dev_fraction=cfg.dev_fraction,
        seed=cfg.seed,
        label=label,
        train_cap=cfg.train_pairs.get(task.name),
        eval_sets=held,
    )
    for f, n in zip(
        files["train"] + files["test"], train_stats.per_file + test_stats.per_file, strict=True
    ):
        f["lines"] = n
    invalid = train_stats.invalid + test_stats.invalid
    meta = dict(
        key=key,
        files=files,
        counts=dict(
            raw=train_stats.lines + test_stats.lines,
            invalid=dict(sorted(invalid.items())),
            duplicate=splits.duplicate,
            decontaminated=splits.decontaminated,
            train=len(splits.train),
            dev=len(splits.dev),
            test=len(splits.test),
        ),
        train_text=_digest(splits.train),
    )
    if held:
        meta["counts"]["eval_sets"] = {k: len(v) for k, v in splits.eval_sets.items()}
    names = [column for column, _ in _columns(task)]
    with atomic_dir(final) as tmp:
        for split in split_names(meta):
            rows = splits.eval_sets[split] if split in held else getattr(splits, split)
            table = pa.table(
                {name: [r[i] for r in rows] for i, name in enumerate(names)},
                schema=pa.schema([(name, pa.string()) for name in names]),
            )
            pq.write_table(table, tmp / f"{split}.parquet")
        atomic_write_json(tmp / "meta.json", meta)
    built.append(f"clean:{task.name}")
    c = meta["counts"]
    log(
        f"{task.name}: {c['train']:,} train / {c['dev']:,} dev / {c['test']:,} test "
        f"({c['decontaminated']:,} removed by decontamination)"
    )
    return _meta(final)


def split_names(clean: dict) -> list[str]:
    """A task's splits, from its clean stage's meta: train, dev, test, its evaluation sets."""
    return [*SPLITS, *clean["counts"].get("eval_sets", {})]


def _read(
    task: Task | Language, split: str, cfg: DataConfig, log, paths: list[Path] | None = None
) -> tuple[list, ReadStats]:
    """The items of ``split``'s files (default: the task's own for that split)."""
    items: list[tuple[str, ...]] = []  # pairs, or 1-tuples of documents
    stats = ReadStats()
    for path in getattr(task, split) if paths is None else paths:
        log(f"reading {task.name} {split} ({path.name}) ...", end="")
        limits = dict(max_lines=cfg.max_pairs, strict=cfg.strict)
        if isinstance(task, Language):
            p, s = read_documents(task, path, **limits)
        else:
            extra = task.extra_columns
            p, s = read_pairs(path, columns=task.columns, extra_columns=extra, **limits)
        bad = sum(s.invalid.values())
        log(f" {s.lines:,} lines" + (f", {bad:,} invalid" if bad else ""), prefix=False)
        items += p
        stats.add(s)
    return items, stats


def _tokenizer(
    tasks: list[Task | Language],
    cleaned: dict,
    cfg: DataConfig,
    stages: Path,
    log,
    built: list[str],
) -> tuple[str, Path]:
    tags = sorted({t.tag for t in tasks if isinstance(t, Task)})
    settings = dict(
        SETTINGS,
        vocab_size=cfg.vocab_size,
        temperature=cfg.tokenizer_temperature,
        sample=cfg.tokenizer_sample,
        seed=cfg.seed,
        tags=tags,
    )
    key = _digest(
        [FORMAT, settings, sorted((t.name, cleaned[t.name]["train_text"]) for t in tasks)]
    )
    final = stages / "tokenizer" / key[:16]
    if (final / "meta.json").is_file():
        log("tokenizer cached")
        return key, final

    by_lang: dict[str, dict[str, None]] = {}
    for t in tasks:
        train = pq.read_table(cleaned[t.name]["dir"] / "train.parquet")
        # dict keys: a sentence shared by several tasks counts once for its language.
        for column, lang in _columns(t):
            by_lang.setdefault(lang, {}).update(dict.fromkeys(train.column(column).to_pylist()))
    sample, per_lang = balanced_sample(
        {k: list(v) for k, v in by_lang.items()},
        size=cfg.tokenizer_sample,
        temperature=cfg.tokenizer_temperature,
        seed=cfg.seed,
    )
    log(f"training tokenizer on {len(sample):,} sentences (vocab {cfg.vocab_size:,}) ...", end="")
    start = time.perf_counter()
    proto = train_tokenizer(sample, vocab_size=cfg.vocab_size, tags=tags)
    log(f" {time.perf_counter() - start:.1f} s", prefix=False)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    meta = dict(key=key, settings=settings, vocab_size=sp.get_piece_size(), sample_by_lang=per_lang)
    with atomic_dir(final) as tmp:
        (tmp / "tokenizer.model").write_bytes(proto)
        atomic_write_json(tmp / "meta.json", meta)
    built.append("tokenizer")
    return key, final


def _encode(
    task: Task | Language,
    clean: dict,
    tok_key: str,
    tok_dir: Path,
    cfg: DataConfig,
    stages: Path,
    log,
    built: list[str],
) -> dict:
    key = _digest([FORMAT, clean["key"], tok_key, cfg.max_len])
    final = stages / "encoded" / f"{task.name}-{key[:16]}"
    if (final / "meta.json").is_file():
        log(f"{task.name}: encoded shards cached")
        return _meta(final)

    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    too_long, rows = {}, {}
    log(f"encoding {task.name} ...", end="")
    with atomic_dir(final) as tmp:
        for split in split_names(clean):
            text = pq.read_table(clean["dir"] / f"{split}.parquet")
            if isinstance(task, Language):
                table, too_long[split] = _encode_documents(sp, text, cfg.max_len), 0
            else:
                table, too_long[split] = encode_pairs(
                    sp, text, sp.piece_to_id(task.tag), cfg.max_len
                )
            rows[split] = table.num_rows
            pq.write_table(table, tmp / f"{split}.parquet")
        atomic_write_json(tmp / "meta.json", dict(key=key, too_long=too_long, rows=rows))
    n = sum(clean["counts"][s] for s in SPLITS)
    if isinstance(task, Language):
        log(f" {n:,} documents in {sum(rows.values()):,} rows of <= {cfg.max_len}", prefix=False)
    else:
        log(f" {n:,} pairs, {sum(too_long.values()):,} too long", prefix=False)
    built.append(f"encode:{task.name}")
    return _meta(final)


def encode_pairs(sp, text: pa.Table, tag: int, max_len: int) -> tuple[pa.Table, int]:
    """src = [tag] + pieces + [EOS], tgt = pieces + [EOS]; pairs with a side over max_len go."""
    src_text, tgt_text = text.column("src").to_pylist(), text.column("tgt").to_pylist()
    src_ids = sp.encode(src_text, num_threads=2)
    tgt_ids = sp.encode(tgt_text, num_threads=2)
    keep = [
        i
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True))
        if len(s) + 2 <= max_len and len(t) + 1 <= max_len
    ]
    src = _list_array([[tag, *src_ids[i], EOS] for i in keep])
    tgt = _list_array([[*tgt_ids[i], EOS] for i in keep])
    table = pa.table(
        {
            "src": src,
            "tgt": tgt,
            "src_text": pa.array([src_text[i] for i in keep], pa.string()),
            "tgt_text": pa.array([tgt_text[i] for i in keep], pa.string()),
        }
    )
    return table, len(src_ids) - len(keep)


def _encode_documents(sp, text: pa.Table, max_len: int) -> pa.Table:
    """ids = pieces + [EOS] per row (long documents cut), the row's text and its bytes."""
    ids, texts, n_bytes = document_rows(sp, text.column("text").to_pylist(), max_len)
    return pa.table(
        {
            "ids": _list_array(ids),
            "text": pa.array(texts, pa.string()),
            "bytes": pa.array(n_bytes, pa.int32()),
        }
    )


def _list_array(rows: list[list[int]]) -> pa.ListArray:
    # Flat values + offsets: far faster than pa.array on nested Python lists.
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


# ----------------------------------------------------------------------------- manifest


def _manifest(key, cfg, tasks, cleaned, encoded, tok_key, tok_dir) -> dict:
    tok = _meta(tok_dir)
    out = {}
    for t in tasks:
        c = dict(cleaned[t.name]["counts"])
        too_long = encoded[t.name]["too_long"]
        c["too_long"] = sum(too_long.values())
        for split in SPLITS:
            c[split] -= too_long[split]
        if "eval_sets" in c:
            c["eval_sets"] = {k: n - too_long[k] for k, n in c["eval_sets"].items()}
        if isinstance(t, Language):
            # counts are documents; rows (what the sampler draws) may be more: long ones are cut
            what = dict(lang=t.name, rows=encoded[t.name]["rows"])
        else:
            what = dict(src_lang=t.src_lang, tgt_lang=t.tgt_lang, tag=t.tag)
        out[t.name] = dict(
            **what,
            files=cleaned[t.name]["files"],
            counts=c,
            clean_key=cleaned[t.name]["key"],
            encode_key=encoded[t.name]["key"],
        )
    manifest = dict(
        format=FORMAT,
        kind=cfg.kind,
        key=key,
        settings=_clean_settings(cfg) | {"max_len": cfg.max_len},
        tokenizer=dict(
            tok["settings"],
            hash=tok_key,
            vocab_size=tok["vocab_size"],
            requested_vocab_size=cfg.vocab_size,
            sample_by_lang=tok["sample_by_lang"],
            special=dict(pad=0, unk=1, bos=2, eos=EOS),
        ),
        tasks=out,
        task_order=[t.name for t in tasks],
    )
    manifest["hash"] = manifest_hash(manifest)
    return manifest


# ----------------------------------------------------------------------------- helpers


def _download_missing(tasks: list[Task | Language], root: DataRoot, log) -> None:
    for t in tasks:
        if missing := first_missing([t]):
            lang = t.name if isinstance(t, Language) else t.tgt_lang
            try:
                download.fetch_tatoeba(lang, root.path)
            except download.Unpinned as e:
                raise root.not_found(missing, f"not there, and {e}") from None
            log(f"downloaded {t.name} into {root.path}")


def _file_info(path: Path) -> dict:
    try:
        return dict(path=str(path), sha256=download.sha256_file(path))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _meta(stage: Path) -> dict:
    meta = json.loads((stage / "meta.json").read_text())
    meta["dir"] = stage
    return meta


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links there
        shutil.copy2(src, dst)


def _logger(verbose: bool):
    def log(msg: str, end: str = "\n", prefix: bool = True) -> None:
        if verbose:
            print(("prepare: " if prefix else "") + msg, end=end, file=sys.stderr, flush=True)

    return log
