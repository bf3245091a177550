"""Download public corpora into the corpus root, every file checked against a sha256.

    fetch(url, dest)              # stream, verify, rename into place
    fetch_tatoeba("ron", root)    # -> root/tatoeba/{train,test}/eng-ron.tsv.gz
    fetch_opus100("ron", root)    # -> root/opus100/{train,test}/eng-ron.parquet

Sources: the manythings.org/anki Tatoeba exports (a zip holding ``ron.txt``:
``english<TAB>target<TAB>attribution``; the first two columns are kept), the Tatoeba-Challenge
test sets, and OPUS-100 from its Hugging Face mirror (Parquet with a ``translation`` struct).
URLs work with ``file://`` too, which is how the tests exercise this module without a network.

Checksums: ``CHECKSUMS`` pins known files. A URL not in it is trusted on first use and its hash
recorded in ``<root>/checksums.json`` (printed, to be copied into ``CHECKSUMS``); every
later download of that URL must match.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ray_mtl.errors import UserError
from ray_mtl.storage import atomic_write_bytes, atomic_write_json, atomic_write_parquet

MANYTHINGS = "https://www.manythings.org/anki"
TATOEBA_TEST = "https://raw.githubusercontent.com/Helsinki-NLP/Tatoeba-Challenge/master/data/test"
OPUS100 = "https://huggingface.co/datasets/Helsinki-NLP/opus-100/resolve/main"
ISO639_1 = {"deu": "de", "fra": "fr", "spa": "es", "ron": "ro", "ind": "id", "eng": "en"}

# url -> sha256 of the downloaded bytes; add entries from checksums.json once checked by hand.
CHECKSUMS: dict[str, str] = {}

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(
    url: str, dest: str | Path, sha256: str | None = None, record: str | Path | None = None
) -> Path:
    """Download ``url`` to ``dest`` (temp file + rename), verified against ``sha256``.

    ``sha256`` None: ``CHECKSUMS``, then ``record`` (a JSON file, default ``checksums.json``
    beside ``dest``), where an unknown URL's hash is recorded. A mismatch raises a UserError and
    leaves nothing at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    record = Path(record) if record else dest.parent / "checksums.json"
    known = _load_record(record)
    expected = sha256 or CHECKSUMS.get(url) or known.get(url)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        h = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "ray_mtl (research)"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as resp:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        got = h.hexdigest()
        if expected and got != expected:
            raise UserError(f"{url}: checksum mismatch (expected sha256 {expected}, got {got})")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: download failed ({e})") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    if not expected:
        known[url] = got
        atomic_write_json(record, known)
        print(f"download: recorded sha256 {got} for {url} in {record}", file=sys.stderr)
    return dest


def _load_record(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the checksum record ({e})") from None


def fetch_tatoeba(
    lang: str, root: str | Path, base: str = MANYTHINGS, test_base: str = TATOEBA_TEST
) -> None:
    """Write ``root/tatoeba/{train,test}/eng-{lang}.tsv.gz`` from the public sources."""
    tatoeba = Path(root) / "tatoeba"
    with tempfile.TemporaryDirectory(dir=_mkdir(tatoeba)) as tmp:
        record = Path(root) / "checksums.json"
        archive = fetch(f"{base}/{lang}-eng.zip", Path(tmp) / f"{lang}-eng.zip", record=record)
        with zipfile.ZipFile(archive) as z, z.open(f"{lang}.txt") as f:
            rows = [line.split(b"\t")[:2] for line in f]
        _write_tsv_gz(tatoeba / "train" / f"eng-{lang}.tsv.gz", rows)

        pair = "-".join(sorted(["eng", lang]))
        test = fetch(f"{test_base}/{pair}/test.txt", Path(tmp) / f"{pair}.txt", record=record)
        rows = []
        for line in test.read_bytes().splitlines():
            # Tatoeba-Challenge lines: lang1, lang2, sentence1, sentence2 (pair sorted by code).
            cols = line.split(b"\t")
            src, tgt = (cols[2], cols[3]) if cols[0].startswith(b"eng") else (cols[3], cols[2])
            rows.append([src, tgt])
        _write_tsv_gz(tatoeba / "test" / f"eng-{lang}.tsv.gz", rows)


def fetch_opus100(lang: str, root: str | Path, base: str = OPUS100) -> None:
    """Write ``root/opus100/{train,test}/eng-{lang}.parquet`` (columns ``src``, ``tgt``)."""
    xx = ISO639_1.get(lang, lang)
    pair = "-".join(sorted(["en", xx]))
    opus = Path(root) / "opus100"
    with tempfile.TemporaryDirectory(dir=_mkdir(opus)) as tmp:
        for split in ("train", "test"):
            name = f"{split}-00000-of-00001.parquet"
            url = f"{base}/{pair}/{name}"
            local = fetch(url, Path(tmp) / name, record=Path(root) / "checksums.json")
            rows = pq.read_table(local, columns=["translation"]).column(0).combine_chunks()
            out = pa.table({"src": rows.field("en"), "tgt": rows.field(xx)})
            atomic_write_parquet(opus / split / f"eng-{lang}.parquet", out)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_tsv_gz(path: Path, rows: list[list[bytes]]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for row in rows:
            gz.write(b"\t".join(c.rstrip(b"\r\n") for c in row) + b"\n")
    atomic_write_bytes(path, buf.getvalue())
