"""Rebuild the in-repo Tatoeba slices from the full shipped corpora.

    python data/make_slices.py [--source ../shared/data] [--lines 20000]

Writes ``data/tatoeba/{train,test}/eng-{fra,ron,ind}.tsv.gz``: a file of at most ``--lines`` lines
is copied as it is, a longer one cut to its first ``--lines`` lines (gzip'd again with no
timestamp, so a rebuild gives the same bytes); and
``data/tatoeba/slices.json``: each file's lines, the full file's lines and sha256, which
``ray_mtl.data.catalog`` reads to refuse a ``max_pairs`` the slices cannot serve.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ("eng-fra", "eng-ron", "eng-ind")  # what `make run` and the tests read


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, default=HERE.parent / ".." / "shared" / "data")
    p.add_argument("--lines", type=int, default=20_000, help="the largest max_pairs to serve")
    args = p.parse_args()
    files = {}
    for split, task in itertools.product(("train", "test"), TASKS):
        name = f"{split}/{task}.tsv.gz"
        source = (args.source / "tatoeba" / name).read_bytes()
        lines = gzip.decompress(source).splitlines(keepends=True)
        dest = HERE / "tatoeba" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if len(lines) > args.lines:
            source = gzip.compress(b"".join(lines[: args.lines]), compresslevel=9, mtime=0)
        dest.write_bytes(source)
        files[name] = dict(
            lines=min(len(lines), args.lines),
            total=len(lines),
            sha256=hashlib.sha256(dest.read_bytes()).hexdigest(),
        )
    manifest = dict(source="../shared/data/tatoeba (see data/README.md)", files=files)
    (HERE / "tatoeba" / "slices.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
