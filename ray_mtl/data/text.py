"""Monolingual corpora for ``kind: lm``: languages, reading documents, encoding them into rows.

    langs = resolve_languages(cfg, root)            # DataConfig.tasks -> [Language]
    docs, stats = read_documents(langs[0], path, max_lines=None, strict=False)
    ids, texts, n_bytes = document_rows(sp, texts, max_len=128)  # one entry per row

A task is a language. The shipped ones (``deu``, ``fra``, ``spa``, ``ron``, ``ind``) are the target
sides of the shipped Tatoeba pairs, read and validated as pairs are (``corpus.read_pairs``). A
custom language (``custom_languages``) reads plain text (``.txt``, ``.txt.gz``: one document per
line), JSON Lines (``.jsonl``, ``.jsonl.gz``: one object per line, its text in ``text_field``, as
mC4 ships) or Parquet (the ``text_field`` column); gzip is recognised by its magic bytes.

A valid document is UTF-8 (a JSON object with a string ``text_field``) that is non-empty after
normalisation (``corpus.normalise``: NFC, whitespace runs, newlines included, collapsed to one
space). Invalid lines are skipped and counted per reason (``utf8``, ``json``, ``field``,
``empty``), or with ``strict`` raise a UserError ``file:line: reason``; a file with no valid
document at all is an error naming the file and what its lines lacked.

Rows: a document's pieces then EOS; one longer than ``max_len`` tokens is cut into rows of
``max_len`` (nothing is dropped). ``bytes`` is each row's share of the document's UTF-8 bytes
plus one for the EOS (the newline that ends a document in a text file), cut where its first
piece begins, so a document's rows add up to its bytes exactly: bits per byte compare across
tokenizers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ray_mtl.config import DataConfig
from ray_mtl.data.catalog import TATOEBA_LANGS
from ray_mtl.data.corpus import ReadStats, _parquet_rows, _tsv_rows, normalise, read_pairs
from ray_mtl.data.tokenizer import EOS
from ray_mtl.errors import UserError

FORMATS = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
_EXPLAIN = {
    "utf8": "invalid UTF-8",
    "json": "not a JSON object",
    "field": "no string field {field!r}",
    "empty": "empty document",
}


@dataclass(frozen=True)
class Language:
    """One language-model task with its files resolved to absolute paths."""

    name: str
    train: tuple[Path, ...]
    test: tuple[Path, ...]
    text_field: str = "text"
    catalogue: bool = False
    """Its files are the shipped Tatoeba pairs (their target side is read)."""


def resolve_languages(cfg: DataConfig, root: Path) -> list[Language]:
    """The configured languages, in order; a custom language of the same name overrides the
    catalogue."""
    custom = {spec.name: spec for spec in cfg.custom_languages}
    out = []
    for i, name in enumerate(cfg.tasks):
        if name in custom:
            spec = custom[name]
            files = [
                tuple(Path(f).expanduser().resolve() for f in fs) for fs in (spec.train, spec.test)
            ]
            out.append(Language(name, *files, text_field=spec.text_field))
        elif name in TATOEBA_LANGS:
            train, test = (
                root / "tatoeba" / split / f"eng-{name}.tsv.gz" for split in ("train", "test")
            )
            out.append(Language(name, (train,), (test,), catalogue=True))
        else:
            known = [*TATOEBA_LANGS, *sorted(custom)]
            raise UserError(
                f"tasks[{i}]: unknown language {name!r} for kind 'lm' (expected one of "
                f"{', '.join(known)}, or a name from custom_languages)"
            )
    return out


def read_documents(
    lang: Language, path: Path, *, max_lines: int | None = None, strict: bool = False
) -> tuple[list[tuple[str]], ReadStats]:
    """Valid, normalised documents of ``path`` (1-tuples, in file order, duplicates kept) and the
    stats."""
    if lang.catalogue:
        pairs, stats = read_pairs(path, max_lines=max_lines, strict=strict)
        return [(tgt,) for _, tgt in pairs], stats
    stats, docs = ReadStats(), []
    for lineno, (reason, doc) in enumerate(_documents(path, lang.text_field), 1):
        if max_lines is not None and lineno > max_lines:
            break
        stats.lines += 1
        if reason is None:
            docs.append((doc,))
        elif strict:
            raise UserError(f"{path}:{lineno}: {_EXPLAIN[reason].format(field=lang.text_field)}")
        else:
            stats.invalid[reason] += 1
    stats.per_file.append(stats.lines)
    if stats.lines == 0:
        raise UserError(f"{path}: empty file (expected one document per line)")
    if not docs:
        why = ", ".join(
            f"{n:,} {_EXPLAIN[r].format(field=lang.text_field)}" for r, n in stats.invalid.items()
        )
        raise UserError(
            f"{path}: no valid document in {stats.lines:,} lines ({why}); expected "
            + _expected(path, lang.text_field)
        )
    return docs, stats


def _expected(path: Path, field: str) -> str:
    if _format(path) == "jsonl":
        return f"one JSON object per line with a string field {field!r} (text_field)"
    return "UTF-8 text, one document per line"


def _format(path: Path) -> str:
    name = path.name
    if name.endswith((".txt", ".txt.gz")):
        return "txt"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise UserError(f"{path}: unknown format (expected a file ending in {', '.join(FORMATS)})")


def _documents(path: Path, field: str) -> Iterator[tuple[str | None, str]]:
    """(invalid reason or None, normalised text) for every line or row of ``path``."""
    fmt = _format(path)
    if fmt == "parquet":
        for (text,) in _parquet_rows(path, (field,)):
            yield _check(text)
        return
    for line in _tsv_rows(path):  # lines of a plain or gzip'd file, read errors named
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield "utf8", ""
            continue
        if fmt == "jsonl":
            try:
                obj = json.loads(text)
            except ValueError:
                yield "json", ""
                continue
            if not isinstance(obj, dict):
                yield "json", ""
                continue
            text = obj.get(field)
            if not isinstance(text, str):
                yield "field", ""
                continue
        yield _check(text)


def _check(text: str | None) -> tuple[str | None, str]:
    text = normalise(text) if text is not None else ""
    return (None, text) if text else ("empty", "")


def document_rows(
    sp, texts: list[str], max_len: int
) -> tuple[list[list[int]], list[str], list[int]]:
    """Rows of at most ``max_len`` tokens (pieces then EOS, cut where longer), their text and
    their bytes (each row's UTF-8 bytes, the EOS counting one)."""
    ids, row_text, row_bytes = [], [], []
    for text, pieces in zip(texts, sp.encode(texts, num_threads=2), strict=True):
        tokens = [*pieces, EOS]
        if len(tokens) <= max_len:
            ids.append(tokens)
            row_text.append(text)
            row_bytes.append(len(text.encode("utf-8")) + 1)
            continue
        raw = text.encode("utf-8")
        # Byte offsets of the pieces: a row's bytes run from its first piece to the next row's.
        starts = [p.begin for p in sp.encode(text, return_type="proto").pieces] + [len(raw)]
        cuts = list(range(0, len(tokens), max_len))
        bounds = [0 if c == 0 else starts[c] for c in cuts] + [len(raw)]
        for j, c in enumerate(cuts):
            ids.append(tokens[c : c + max_len])
            chunk = raw[bounds[j] : bounds[j + 1]]
            row_text.append(chunk.decode("utf-8"))
            row_bytes.append(len(chunk) + (j == len(cuts) - 1))
    return ids, row_text, row_bytes
