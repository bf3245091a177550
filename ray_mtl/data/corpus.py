"""Read a parallel corpus file into clean, normalised sentence pairs.

    pairs, stats = read_pairs(Path("eng-ron.tsv.gz"))          # TSV, plain or gzip'd
    pairs, stats = read_pairs(Path("my.parquet"), columns=("en", "ro"))

The reader is chosen by content: Parquet by its ``PAR1`` magic (or a ``.parquet`` name), else TSV,
plain or gzip'd. TSV is UTF-8; a UTF-8 byte-order mark is dropped, and UTF-16 or UTF-32 with a
byte-order mark (Excel's "Unicode Text") is decoded. Text with NUL bytes and no byte-order mark
(UTF-16 without one, or a binary file) and archives such as .xlsx are refused.

A valid line has exactly two columns (or more, with ``extra_columns="drop"``: the first two are
kept), both non-empty after normalisation (Unicode NFC, whitespace runs collapsed, ends stripped).
Invalid lines are skipped and counted per reason (``utf8``, ``columns``, ``empty``), or with
``strict`` raise a UserError ``file:line: reason``. A file where most lines are invalid for one
reason has the wrong format, not a few stray lines: it is refused with its first such line.
"""

from __future__ import annotations

import gzip
import io
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
    extra_columns: str = "error",
) -> tuple[list[Pair], ReadStats]:
    """Valid, normalised pairs of ``path`` in file order (duplicates kept), and the stats.

    ``extra_columns``: ``"error"`` (a TSV line of more than two columns is invalid) or ``"drop"``
    (keep the first two).
    """
    stats = ReadStats()
    pairs: list[Pair] = []
    first: dict[str, str] = {}  # reason -> "line: what" of its first line
    for lineno, row in enumerate(_rows(path, columns), 1):
        if max_lines is not None and lineno > max_lines:
            break
        stats.lines += 1
        reason, found = _check(row, extra_columns == "drop")
        if reason is None:
            pairs.append(found)
            continue
        if strict:
            raise UserError(f"{path}:{lineno}: {found}")
        stats.invalid[reason] += 1
        first.setdefault(reason, f"{lineno}: {found}")
    stats.per_file.append(stats.lines)
    if stats.lines == 0:
        raise UserError(f"{path}: empty file (expected one sentence pair per line)")
    for reason, n in stats.invalid.items():
        if 2 * n > stats.lines:
            raise UserError(f"{path}:{first[reason]}; so are {n:,} of its {stats.lines:,} lines")
    return pairs, stats


def _check(row: bytes | str | tuple, drop_extra: bool) -> tuple[str | None, Pair | str]:
    """(None, the normalised pair) or (reason, what is wrong with the line)."""
    if isinstance(row, bytes):
        try:
            row = row.decode("utf-8")
        except UnicodeDecodeError:
            return "utf8", "invalid UTF-8 (expected UTF-8, or UTF-16 with a byte-order mark)"
    if isinstance(row, str):
        cols = row.rstrip("\r\n").split("\t")
        if len(cols) != 2 and not (drop_extra and len(cols) > 2):
            hint = " (the task's extra_columns: drop keeps the first two)" if len(cols) > 2 else ""
            return "columns", f"expected 2 tab-separated columns, found {len(cols)}{hint}"
        row = cols[:2]
    src, tgt = row
    if src is None or tgt is None:
        return "empty", EMPTY
    src, tgt = normalise(src), normalise(tgt)
    if not src or not tgt:
        return "empty", EMPTY
    return None, (src, tgt)


EMPTY = "empty source or target sentence"

# Formats that are not TSV text, by their first bytes.
MAGIC = {
    b"PK\x03\x04": "a ZIP archive (an .xlsx workbook?)",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
}
# Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
BOMS = [
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
]


def _rows(path: Path, columns: tuple[str, str]) -> Iterator[bytes | str | tuple]:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if head == b"PAR1" or path.suffix == ".parquet":
        return _parquet_rows(path, columns)
    return _tsv_rows(path)


def _encoding(path: Path, head: bytes) -> str:
    """The text encoding of a TSV's first bytes: ``utf-8`` unless a byte-order mark says else."""
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return encoding
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            raise UserError(f"{path}: {what}, not text (expected TSV, plain or .gz, or Parquet)")
    if b"\x00" in head:
        raise UserError(
            f"{path}: NUL bytes in the text, as in UTF-16 without a byte-order mark or a binary "
            "file (expected UTF-8 TSV, or UTF-16 with its byte-order mark)"
        )
    return "utf-8"


def _tsv_rows(path: Path) -> Iterator[bytes | str]:
    """Lines as bytes (UTF-8, decoded per line so one bad line is one invalid line) or as str
    (UTF-16/32, decoded as a stream)."""
    try:
        with path.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else path.open("rb") as f:
            encoding = _encoding(path, f.read(1024))
            f.seek(0)
            if encoding == "utf-8":
                yield from f
            elif encoding == "utf-8-sig":
                f.read(3)
                yield from f
            else:
                yield from io.TextIOWrapper(f, encoding=encoding, newline="\n")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
        raise UserError(f"{path}: cannot read ({e})") from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: invalid {e.encoding.upper()} ({e.reason}), as its BOM says"
        ) from None


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
