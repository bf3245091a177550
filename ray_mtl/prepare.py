"""Prepare the data of a run: validate, split, decontaminate, tokenize, shard.

    python -m ray_mtl.prepare                                   # eng-fra, eng-ron (the defaults)
    python -m ray_mtl.prepare --tasks eng-fra,eng-ron,eng-ind --vocab-size 8000
    python -m ray_mtl.prepare --config data.yaml --out-dir /tmp/prep --max-pairs 5000 --strict
    python -m ray_mtl.prepare --kind lm --tasks fra,deu,spa,ron,ind         # languages, for an LM

Prints the per-task counts and the prepared dir (pass it to training, or give the same config:
a second run reuses the cache). Flags override the YAML (a DataConfig). Corpora come from
``--data-dir``, else $RAY_MTL_DATA, else ../shared/data, else the repo's ``data/`` slices when they
hold enough lines, else the cache dir (downloaded there only with pinned checksums).
"""

from __future__ import annotations

import argparse
import sys

from ray_mtl.config import KINDS, DataConfig, from_dict, load_yaml, to_dict
from ray_mtl.data import prepare, table
from ray_mtl.errors import cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ray_mtl.prepare", description=__doc__.split("\n")[0]
    )
    p.add_argument("--tasks", help="comma-separated task names, e.g. eng-fra,eng-ron (lm: fra,ron)")
    p.add_argument("--kind", choices=KINDS, help="translation (pairs, the default) or lm")
    p.add_argument("--config", help="a YAML file with DataConfig fields")
    p.add_argument("--data-dir", help="corpus root (holds tatoeba/)")
    p.add_argument("--out-dir", help="where prepared data goes (default $RAY_MTL_CACHE)")
    p.add_argument("--vocab-size", type=int, help="joint SentencePiece vocabulary size")
    p.add_argument("--max-pairs", type=int, help="read only the first N lines of each file")
    p.add_argument("--strict", action="store_true", help="fail on the first invalid line")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig of the YAML (if any) with the flags applied on top."""
    data = load_yaml(args.config) if args.config else {}
    source = args.config or "command line"
    base = to_dict(from_dict(DataConfig, data, source))
    flags = dict(
        data_dir=args.data_dir,
        out_dir=args.out_dir,
        vocab_size=args.vocab_size,
        max_pairs=args.max_pairs,
        strict=args.strict or None,
        kind=args.kind,
    )
    if args.tasks is not None:
        flags["tasks"] = [t.strip() for t in args.tasks.split(",")]
    base.update({k: v for k, v in flags.items() if v is not None})
    return from_dict(DataConfig, base, source)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepared = prepare(config(args), verbose=not args.quiet)
    print(table(prepared))
    print(f"prepared: {prepared.root}")
    print(f"manifest hash: {prepared.manifest_hash}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
