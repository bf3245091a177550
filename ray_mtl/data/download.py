"""Download the Tatoeba corpora into the corpus root, every file checked against a pinned sha256.

    fetch(url, dest, sha256)      # stream, verify, rename into place
    fetch_tatoeba("ron", root)    # -> root/tatoeba/{train,test}/eng-ron.tsv.gz

Sources: the manythings.org/anki Tatoeba exports (a zip holding ``ron.txt``:
``english<TAB>target<TAB>attribution``; the first two columns are kept) and the
Tatoeba-Challenge test sets. URLs work with ``file://`` too, which is how the tests exercise this
module without a network.

Checksums: a URL is downloaded only when its sha256 is pinned, in ``CHECKSUMS`` or by hand in
``<root>/checksums.json`` (``{"url": "sha256"}``, after checking the file yourself); an unpinned
URL is refused before anything is fetched. ``CHECKSUMS`` is empty: the corpora the project ships
(``../shared/data``, ``data/``) are converted files from other snapshots, not these downloads, so
no upstream hash could be checked; add one only after checking the file it names.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ray_mtl.errors import UserError
from ray_mtl.storage import atomic_write_bytes

MANYTHINGS = "https://www.manythings.org/anki"
TATOEBA_TEST = "https://raw.githubusercontent.com/Helsinki-NLP/Tatoeba-Challenge/master/data/test"
PINS = "checksums.json"
"""The root's hand-pinned hashes, ``{"url": "sha256"}``; the program only reads it."""

CHECKSUMS: dict[str, str] = {}
"""url -> sha256 of the downloaded bytes, for files checked by hand."""

_CHUNK = 1 << 20


class Unpinned(UserError):
    """A download refused because no sha256 is pinned for its URL."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: str | Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` (temp file + rename), verified against ``sha256``.

    A mismatch raises a UserError and leaves nothing at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        h = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "ray_mtl (research)"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as resp:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        got = h.hexdigest()
        if got != sha256:
            raise UserError(f"{url}: checksum mismatch (expected sha256 {sha256}, got {got})")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: download failed ({e})") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return dest


def pinned(root: str | Path) -> dict[str, str]:
    """``CHECKSUMS`` and the hashes pinned by hand in ``<root>/checksums.json``."""
    path = Path(root) / PINS
    try:
        pins = json.loads(path.read_text())
    except FileNotFoundError:
        return dict(CHECKSUMS)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the pinned checksums ({e})") from None
    if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
        raise UserError(f'{path}: expected a JSON object {{"url": "sha256", ...}}')
    return CHECKSUMS | pins


def fetch_tatoeba(
    lang: str, root: str | Path, base: str = MANYTHINGS, test_base: str = TATOEBA_TEST
) -> None:
    """Write ``root/tatoeba/{train,test}/eng-{lang}.tsv.gz`` from the public sources.

    Raises ``Unpinned`` (nothing fetched) when either URL has no pinned sha256.
    """
    pair = "-".join(sorted(["eng", lang]))
    train_url, test_url = f"{base}/{lang}-eng.zip", f"{test_base}/{pair}/test.txt"
    pins = pinned(root)
    unpinned = [u for u in (train_url, test_url) if u not in pins]
    if unpinned:
        raise Unpinned(
            f"no sha256 pinned for {' and '.join(unpinned)}, so nothing was downloaded: check "
            f'the file by hand and add "<url>": "<sha256>" to {Path(root) / PINS}'
        )
    tatoeba = Path(root) / "tatoeba"
    with tempfile.TemporaryDirectory(dir=_mkdir(tatoeba)) as tmp:
        archive = fetch(train_url, Path(tmp) / f"{lang}-eng.zip", pins[train_url])
        with zipfile.ZipFile(archive) as z, z.open(f"{lang}.txt") as f:
            rows = [line.split(b"\t")[:2] for line in f]
        _write_tsv_gz(tatoeba / "train" / f"eng-{lang}.tsv.gz", rows)

        test = fetch(test_url, Path(tmp) / f"{pair}.txt", pins[test_url])
        rows = []
        for line in test.read_bytes().splitlines():
            # Tatoeba-Challenge lines: lang1, lang2, sentence1, sentence2 (pair sorted by code).
            cols = line.split(b"\t")
            src, tgt = (cols[2], cols[3]) if cols[0].startswith(b"eng") else (cols[3], cols[2])
            rows.append([src, tgt])
        _write_tsv_gz(tatoeba / "test" / f"eng-{lang}.tsv.gz", rows)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_tsv_gz(path: Path, rows: list[list[bytes]]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for row in rows:
            gz.write(b"\t".join(c.rstrip(b"\r\n") for c in row) + b"\n")
    atomic_write_bytes(path, buf.getvalue())
