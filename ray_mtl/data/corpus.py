"""Read a parallel corpus file into clean, normalised sentence pairs.

    pairs, stats = read_pairs(Path("eng-ron.tsv.gz"))          # TSV, plain or gzip'd
    pairs, stats = read_pairs(Path("my.parquet"), columns=("en", "ro"))

A valid line is UTF-8 with exactly two columns, both non-empty after normalisation (Unicode NFC,
whitespace runs collapsed, ends stripped). Invalid lines are skipped and counted per reason
(``utf8``, ``columns``, ``empty``), or with ``strict`` raise a UserError ``file:line: reason``.
"""

from __future__ import annotations

import gzip
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ray_mtl.errors import UserError

Pair = tuple[str, str]


def normalise(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped: the form every split compares."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass
class ReadStats:
    """What reading one or more files found: lines read and invalid lines by reason."""

    lines: int = 0
    invalid: Counter = field(default_factory=Counter)
    per_file: list[int] = field(default_factory=list)
    """Lines read from each file, in order."""

    def add(self, other: ReadStats) -> None:
        self.lines += other.lines
        self.invalid.update(other.invalid)
        self.per_file += other.per_file


def read_pairs(
    path: Path,
    *,
    columns: tuple[str, str] = ("src", "tgt"),
    max_lines: int | None = None,
    strict: bool = False,
) -> tuple[list[Pair], ReadStats]:
    """Valid, normalised pairs of ``path`` in file order (duplicates kept), and the stats."""
    stats = ReadStats()
    pairs: list[Pair] = []
    rows = _parquet_rows(path, columns) if path.suffix == ".parquet" else _tsv_rows(path)
    for lineno, row in enumerate(rows, 1):
        if max_lines is not None and lineno > max_lines:
            break
        stats.lines += 1
        reason, pair = _check(row)
        if reason is None:
            pairs.append(pair)
            continue
        if strict:
            raise UserError(f"{path}:{lineno}: {_EXPLAIN[reason]}")
        stats.invalid[reason] += 1
    stats.per_file.append(stats.lines)
    if stats.lines == 0:
        raise UserError(f"{path}: empty file (expected one sentence pair per line)")
    return pairs, stats


_EXPLAIN = {
    "utf8": "invalid UTF-8",
    "columns": "expected 2 tab-separated columns (source, target)",
    "empty": "empty source or target sentence",
}


def _check(row: bytes | tuple) -> tuple[str | None, Pair]:
    if isinstance(row, bytes):
        try:
            line = row.decode("utf-8")
        except UnicodeDecodeError:
            return "utf8", ("", "")
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) != 2:
            return "columns", ("", "")
        row = cols
    src, tgt = row
    if src is None or tgt is None:
        return "empty", ("", "")
    src, tgt = normalise(src), normalise(tgt)
    if not src or not tgt:
        return "empty", ("", "")
    return None, (src, tgt)


def _tsv_rows(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else path.open("rb") as f:
            yield from f
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
        raise UserError(f"{path}: cannot read ({e})") from None


def _parquet_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple]:
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: cannot read Parquet ({e})") from None
    for name in columns:
        if name not in schema.names:
            raise UserError(f"{path}: column {name!r} not found (columns: {schema.names})")
        if not (
            pa.types.is_string(schema.field(name).type)
            or pa.types.is_large_string(schema.field(name).type)
        ):
            raise UserError(
                f"{path}: column {name!r}: expected strings, got {schema.field(name).type}"
            )
    table = pq.read_table(path, columns=list(columns))
    yield from zip(*(table.column(i).to_pylist() for i in range(len(columns))), strict=True)
